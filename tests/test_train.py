import dataclasses
import functools
import itertools
import time

import pytest
import torch

from rcnn import checkpoint
from rcnn.cli import build_parser
from rcnn.data.shapes import ShapesDataset
from rcnn.errors import RcnnError
from rcnn.models.build import InputConfig, RunConfig
from rcnn.models.faster_rcnn import FasterRCNN
from rcnn.optim import TrainConfig
from rcnn.runs import resolve_config
from rcnn.train import CHECKPOINT, Trainer, training_mode
from tests.test_faster_rcnn import CONFIG
from tests.tiny import tiny_backbone

RUN = RunConfig(
    backbone="tiny",
    input=InputConfig(min_sizes=(96, 128), max_size=160, test_size=128),
    train=TrainConfig(
        epochs=2,
        images_per_batch=2,
        learning_rate=0.01,
        warmup_iterations=2,
        workers=0,
        checkpoint_every=3,
    ),
    faster_rcnn=CONFIG,
)


class Crash(Exception):
    pass


def make_trainer(run_dir, config=RUN, **options):
    torch.manual_seed(0)
    model = FasterRCNN(tiny_backbone(), 8, config.faster_rcnn)
    dataset = ShapesDataset("train", size=8)
    return Trainer(model, dataset, config, run_dir, model.pixel_stats, **options)


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


# FreezeOut from step 4 of 8: the tiny trunk's first two convolutions (children 0-3) stop
FREEZING = dataclasses.replace(
    RUN, train=dataclasses.replace(RUN.train, freeze_through="3", freeze_at=0.5)
)


@pytest.mark.parametrize("config", [RUN, FREEZING], ids=["plain", "freezeout"])
def test_a_resumed_run_ends_with_the_same_weights(tmp_path, monkeypatch, config):
    straight = make_trainer(tmp_path / "straight", config)
    assert straight.run()
    expected = weights(straight)

    crashing = make_trainer(tmp_path / "resumed", config)
    original_step = Trainer.step
    calls = {"n": 0}

    def step_then_crash(self, samples):
        calls["n"] += 1
        if calls["n"] == 7:  # in epoch 2, after the mid-epoch checkpoint of step 6
            raise Crash
        return original_step(self, samples)

    monkeypatch.setattr(Trainer, "step", step_then_crash)
    with pytest.raises(Crash):
        crashing.run()
    monkeypatch.setattr(Trainer, "step", original_step)
    _, state = checkpoint.load(tmp_path / "resumed" / CHECKPOINT)
    assert (state["position"]["epoch"], state["position"]["batch"], state["position"]["step"]) == (
        1,
        2,
        6,
    )
    resumed = make_trainer(tmp_path / "resumed", config)
    assert resumed.run(resume=True)
    for name, value in weights(resumed).items():
        assert torch.equal(value, expected[name]), name


def test_freezeout_stops_the_early_layers_from_its_point_on(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, FREEZING)
    trunk = trainer.model.trunk
    seen = []  # (first conv, second conv, last conv) weights before each step
    original_step = Trainer.step

    def recorded(self, samples):
        seen.append([trunk[i].weight.detach().clone() for i in (0, 3, 9)])
        return original_step(self, samples)

    monkeypatch.setattr(Trainer, "step", recorded)
    assert trainer.run()
    seen.append([trunk[i].weight.detach().clone() for i in (0, 3, 9)])
    changed = [
        [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
        for before, after in itertools.pairwise(seen)
    ]
    # steps 1-4 train every layer; from step 5 (progress 4/8) the early ones stay put
    assert changed == [[True, True, True]] * 4 + [[False, False, True]] * 4
    assert [p.requires_grad for p in trunk[3].parameters()] == [False, False]
    assert all(p.requires_grad for p in trunk[4:].parameters())


def test_freezeout_names_the_trunk_layers_when_one_is_missing(tmp_path):
    config = dataclasses.replace(RUN, train=dataclasses.replace(RUN.train, freeze_through="conv9"))
    with pytest.raises(RcnnError, match=r"freeze_through: the trunk has no layer 'conv9'.*0, 1, 2"):
        make_trainer(tmp_path, config)


def test_images_held_in_memory_train_exactly_as_streamed_and_are_drawn_once(tmp_path, monkeypatch):
    streamed = make_trainer(tmp_path / "streamed")
    assert streamed.run()
    draws = {"n": 0}
    original = ShapesDataset._generate

    def counted(self, i):
        draws["n"] += 1
        return original(self, i)

    monkeypatch.setattr(ShapesDataset, "_generate", counted)
    train = dataclasses.replace(RUN.train, cache_images=True)
    cached = make_trainer(tmp_path / "cached", dataclasses.replace(RUN, train=train))
    assert cached.run()
    assert draws["n"] == 8  # 8 images, 2 epochs
    expected = weights(streamed)
    for name, value in weights(cached).items():
        assert torch.equal(value, expected[name]), name


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, time_budget=1e-6)
    assert trainer.run() is False
    _, state = checkpoint.load(tmp_path / CHECKPOINT)
    assert state["position"]["step"] == 1


def test_a_deadline_bounds_the_budget_and_stops_on_the_wall_clock(tmp_path, monkeypatch):
    soon, later = time.time() + 600, time.time() + 3600
    assert make_trainer(tmp_path / "a", time_budget=30, deadline=later).plan.budgets[0] == 1800
    bounded = make_trainer(tmp_path / "b", time_budget=30, deadline=soon).plan.budgets[0]
    assert bounded == pytest.approx(600, abs=5)  # the schedule ends by the deadline
    # an hour's budget is far off: only the wall clock, moved past the deadline after the
    # third step, can stop these steps
    trainer = make_trainer(tmp_path / "c", deadline=later)
    original_step, calls, clock = Trainer.step, {"n": 0}, time.time

    def step(self, samples):
        calls["n"] += 1
        return original_step(self, samples)

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(time, "time", lambda: clock() + (7200 if calls["n"] >= 3 else 0))
    assert trainer.run() is False
    _, state = checkpoint.load(tmp_path / "c" / CHECKPOINT)
    assert state["position"]["step"] == 3


def test_divergence_names_the_step_and_the_last_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path)
    forward = trainer.model.forward
    calls = {"n": 0}

    def poisoned(batch):
        calls["n"] += 1
        losses = forward(batch)
        if calls["n"] == 5:
            losses["rpn_box"] = losses["rpn_box"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.model, "forward", poisoned)
    with pytest.raises(
        RcnnError, match=r"joint, epoch 2, step 5: the loss is no longer finite \(.*rpn_box=nan"
    ):
        trainer.run()
    _, state = checkpoint.load(tmp_path / CHECKPOINT)
    assert state["position"]["step"] == 4  # the last good state is kept


def test_stage_shares_must_match_the_stages(tmp_path):
    config = dataclasses.replace(RUN, train=dataclasses.replace(RUN.train, stage_shares=(1.0, 2.0)))
    with pytest.raises(RcnnError, match="stage_shares needs 1 values"):
        make_trainer(tmp_path, config)


@pytest.mark.parametrize("flag", ["amp", "channels_last", "compile"])
def test_a_cpu_run_with_a_speed_flag_on_still_trains(tmp_path, flag, monkeypatch):
    """--amp is bfloat16 autocast on the CPU, --channels-last NHWC, --compile torch.compile of
    the trunk: each still takes finite steps that change the weights. Compiling here uses
    the aot_eager backend: Dynamo's capture and AOTAutograd's forward and backward graphs as
    the default does, without Inductor's C++ code generation (minutes on a cold cache)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    config = dataclasses.replace(
        RUN, train=dataclasses.replace(RUN.train, epochs=1, images_per_batch=4, **{flag: True})
    )
    trainer = make_trainer(tmp_path, config)
    before = weights(trainer)
    assert trainer.run()
    for name, value in weights(trainer).items():
        assert torch.isfinite(value).all(), name
        if name.startswith("rpn.conv"):
            assert not torch.equal(value, before[name]), name
    conv = trainer.model.trunk[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == (flag == "channels_last")
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert (compiled > 0) == (flag == "compile")


def test_speed_flags_reach_the_train_config_from_the_command_line_and_set():
    args = build_parser().parse_args(
        ["train", "--model", "faster-rcnn", "--data", "shapes", "--out", "r", "--amp", "--compile"]
    )
    flags = {"amp": args.amp, "channels_last": args.channels_last, "compile": args.compile}
    config = resolve_config("faster-rcnn", "small", None, ["train.channels_last=true"], **flags)
    assert (config.train.amp, config.train.channels_last, config.train.compile) == (True,) * 3
    default = resolve_config("faster-rcnn", "small").train
    assert (default.amp, default.channels_last, default.compile) == (False,) * 3


def test_training_mode_keeps_the_statistics_of_frozen_batch_norm():
    frozen, trained = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    frozen.requires_grad_(False)
    model = torch.nn.Sequential(frozen, trained)
    training_mode(model)
    model(torch.randn(2, 4, 5, 5) * 3 + 1)
    assert not frozen.training and trained.training
    assert torch.equal(frozen.running_mean, torch.zeros(4))  # unchanged
    assert not torch.equal(trained.running_mean, torch.zeros(4))
