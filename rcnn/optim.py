"""Optimisation as the papers set it: SGD with momentum 0.9 and weight decay 5e-4, biases at
twice the learning rate without decay (Caffe's lr_mult 2 / decay_mult 0 in py-faster-rcnn),
a linear warm-up, and steps of x0.1 (or, with ``lr_schedule="cosine"``, a half cosine from the
base rate to 0, the usual choice for short runs from scratch).

The schedule is a function of progress through a training stage (0 -> 1), so the same
settings serve a fixed number of epochs and a time budget (where progress is the larger of the
epochs' and the clock's fraction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["sgd", "adamw"] = "sgd"  # the papers' SGD; AdamW for from-scratch nets
    epochs: int = 12
    images_per_batch: int = 2
    learning_rate: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_factor: float = 2.0
    warmup_iterations: int = 100
    warmup_factor: float = 0.1
    lr_schedule: Literal["step", "cosine"] = "step"
    lr_steps: tuple[float, ...] = (0.75,)  # fractions of a stage at which the rate drops
    lr_gamma: float = 0.1
    stage_shares: tuple[float, ...] = ()  # share of the epochs per stage; () = equal shares
    workers: int = 2
    cache_images: bool = False  # load every training image once, keep it in memory (RAM)
    seed: int = 0
    eval_every: int = 0  # epochs between evaluations on the test split; 0 = only at the end
    checkpoint_every: int = 200  # iterations between checkpoints, besides each epoch's end
    amp: bool = False  # mixed precision: float16 + GradScaler on CUDA, bfloat16 on the CPU
    channels_last: bool = False  # NHWC images and weights for the convolutions
    compile: bool = False  # torch.compile the trunk (the first steps take longer)
    # FreezeOut (Brock et al., 2017): once a stage is ``freeze_at`` through, the trunk's layers
    # up to and including ``freeze_through`` (a layer's name, e.g. "conv2_2") stop training,
    # and each step's backward pass stops before them; "" freezes nothing
    freeze_through: str = ""
    freeze_at: float = 0.5


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD over the trainable parameters in three groups: weights (decayed), biases (x2 rate,
    no decay), normalisation scales (no decay). Each group keeps its ``base_lr`` for the
    schedule."""
    groups: dict[str, list[nn.Parameter]] = {"weights": [], "biases": [], "norms": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        kind = "biases" if name.endswith("bias") else "norms" if parameter.ndim == 1 else "weights"
        groups[kind].append(parameter)
    settings = {
        "weights": (config.learning_rate, config.weight_decay),
        "biases": (config.learning_rate * config.bias_lr_factor, 0.0),
        "norms": (config.learning_rate, 0.0),
    }
    param_groups = [
        {
            "params": params,
            "lr": settings[kind][0],
            "base_lr": settings[kind][0],
            "weight_decay": settings[kind][1],
        }
        for kind, params in groups.items()
        if params
    ]
    # one fused kernel for all parameters where PyTorch has it (CPU, CUDA): AdamW's step on the
    # small Faster R-CNN 3.7 -> 0.7 ms on this CPU, against a Python loop over 44 tensors
    devices = {p.device.type for group in param_groups for p in group["params"]}
    fused = devices <= {"cpu", "cuda"} or None
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.learning_rate, fused=fused)
    return torch.optim.SGD(
        param_groups, lr=config.learning_rate, momentum=config.momentum, fused=fused
    )


def learning_rate_factor(config: TrainConfig, iteration: int, progress: float) -> float:
    """The multiplier of the base rate at ``iteration`` of a stage that is ``progress`` done."""
    if config.lr_schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    else:
        factor = config.lr_gamma ** sum(progress >= step for step in config.lr_steps)
    if iteration < config.warmup_iterations:
        alpha = iteration / config.warmup_iterations
        factor *= config.warmup_factor * (1 - alpha) + alpha
    return factor


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
