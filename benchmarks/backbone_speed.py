"""Backbone speed on this machine: forward and forward+backward of the trunk and of the head.

Run: ``.venv/bin/python benchmarks/backbone_speed.py [NAME ...]`` (default: small). Prints one
row per (input size, batch): the median and the fastest of ten runs, in milliseconds (on a
shared machine the fastest is the one to compare), and the multiply-accumulates per image
counted from the layers' output shapes. The head is
timed on 128 RoIs per image (training) and 300 (testing), as RoI pooling hands them over.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from rcnn.backbones import build_backbone

SIZES = ((320, 320), (600, 1000))
BATCHES = (1, 4)


def count_macs(module: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulates of the conv and fc layers for ``inputs``, counted with hooks."""
    total = 0

    def hook(layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_output = (
                layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            )
            total += output.numel() * per_output
        elif isinstance(layer, nn.Linear):
            total += output.numel() * layer.in_features

    handles = [layer.register_forward_hook(hook) for layer in module.modules()]
    with torch.no_grad():
        module(inputs)
    for handle in handles:
        handle.remove()
    return total


def time_ms(step: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, fastest) milliseconds of ``step`` over ``repeats`` runs after two warm-up runs."""
    step()
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def forward_backward(module: nn.Module, inputs: torch.Tensor) -> Callable[[], object]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(inputs).sum().backward()

    return step


def forward(module: nn.Module, inputs: torch.Tensor) -> Callable[[], object]:
    def step() -> torch.Tensor:
        with torch.no_grad():
            return module(inputs)

    return step


def report(name: str, repeats: int = 10) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name).train()
    print(f"{name}: torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'part':<6}{'input':>22}{'GMAC/img':>10}{'fwd ms (med/min)':>20}{'fwd+bwd ms':>18}")
    for height, width in SIZES:
        for batch in BATCHES:
            images = torch.randn(batch, 3, height, width)
            gmac = count_macs(backbone.trunk, images[:1]) / 1e9
            fwd = time_ms(forward(backbone.trunk, images), repeats)
            both = time_ms(forward_backward(backbone.trunk, images), repeats)
            row = f"{batch}x3x{height}x{width}"
            print(
                f"{'trunk':<6}{row:>22}{gmac:>10.3f}{fwd[0]:>12.1f}/{fwd[1]:<7.1f}{both[0]:>10.1f}/{both[1]:<7.1f}"
            )
    p = backbone.pool_size
    for rois in (128, 300):
        pooled = torch.randn(rois, backbone.out_channels, p, p)
        gmac = count_macs(backbone.head, pooled) / 1e9
        fwd = time_ms(forward(backbone.head, pooled), repeats)
        both = time_ms(forward_backward(backbone.head, pooled), repeats)
        row = f"{rois} RoIs x{backbone.out_channels}x{p}x{p}"
        print(
            f"{'head':<6}{row:>22}{gmac:>10.3f}{fwd[0]:>12.1f}/{fwd[1]:<7.1f}{both[0]:>10.1f}/{both[1]:<7.1f}"
        )


if __name__ == "__main__":
    for backbone_name in sys.argv[1:] or ["small"]:
        report(backbone_name)
