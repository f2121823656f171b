import math

import pytest
import torch

from rcnn.optim import TrainConfig, learning_rate_factor, make_optimizer, set_learning_rate


def test_step_schedule_warms_up_then_drops_tenfold_at_each_step():
    config = TrainConfig(warmup_iterations=100, warmup_factor=0.1, lr_steps=(0.5, 0.8))
    assert learning_rate_factor(config, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate_factor(config, 50, 0.01) == pytest.approx(0.55)
    assert learning_rate_factor(config, 100, 0.2) == 1.0
    assert learning_rate_factor(config, 900, 0.5) == pytest.approx(0.1)
    assert learning_rate_factor(config, 900, 0.85) == pytest.approx(0.01)


def test_cosine_schedule_falls_from_the_base_rate_to_zero():
    config = TrainConfig(lr_schedule="cosine", warmup_iterations=10, warmup_factor=0.1)
    assert learning_rate_factor(config, 0, 0.0) == pytest.approx(0.1)  # warm-up applies too
    assert learning_rate_factor(config, 10, 0.0) == 1.0
    assert learning_rate_factor(config, 500, 0.5) == pytest.approx(0.5)
    assert learning_rate_factor(config, 500, 0.25) == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert learning_rate_factor(config, 999, 1.0) == pytest.approx(0.0)
    assert learning_rate_factor(config, 999, 1.7) == pytest.approx(0.0)  # a budget overrun


def test_optimizer_groups_biases_and_norms_apart():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    config = TrainConfig(learning_rate=0.01, weight_decay=5e-4, bias_lr_factor=2.0)
    optimizer = make_optimizer(model, config)
    by_rate = sorted((g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups)
    # weights (decayed); biases at twice the rate, undecayed; LayerNorm's scale undecayed
    assert by_rate == [(0.01, 0.0, 1), (0.01, 5e-4, 1), (0.02, 0.0, 2)]
    set_learning_rate(optimizer, 0.5)
    assert sorted(g["lr"] for g in optimizer.param_groups) == [0.005, 0.005, 0.01]
