"""Truncated SVD of the fully connected layers (Fast R-CNN section 3.1), for faster detection.

At test time a detector runs fc6 and fc7 once per RoI (2,000 per image), so these two layers
take a large share of the time. A layer with the u x v weight matrix W is factorised as

    W  ~=  U_t Sigma_t V_t^T

(U_t: the first t left-singular vectors, u x t; Sigma_t: the top t singular values; V_t:
the first t right-singular vectors, v x t). The one layer becomes two, without a
non-linearity between them: the first has the weight Sigma_t V_t^T (t x v) and no bias, the
second U_t (u x t) and W's bias. Parameters and multiplications drop from uv to t(u + v);
the paper keeps 1024 of fc6's (25088 x 4096) and 256 of fc7's (4096 x 4096) singular values:
about 30% faster detection for 0.3 mAP less with VGG16. The approximation's error is what
the discarded singular values say: ||W - W_t||_F = sqrt(sum_{i > t} sigma_i^2), and at most
sigma_{t+1} ||x|| on any input x.
"""

from __future__ import annotations

import torch
from torch import nn

from rcnn.errors import RcnnError

LAYERS = ("fc6", "fc7")  # the per-region fully connected layers, as the backbones name them


def truncated_svd(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``layer`` (W: u x v, bias b) -> Sequential(Linear(v, t, no bias), Linear(t, u, bias b))
    with weights Sigma_t V_t^T and U_t, t = ``rank`` in [1, min(u, v)]; same dtype and device.

    The factorisation runs in float64, so full rank reproduces ``layer`` to its own precision.
    """
    u, v = layer.weight.shape  # nn.Linear keeps W as (out_features, in_features) = (u, v)
    if not 1 <= rank <= min(u, v):
        raise RcnnError(
            f"truncated SVD: rank {rank} is out of range for a {u} x {v} layer "
            f"(it has {min(u, v)} singular values; choose 1 to {min(u, v)})"
        )
    weight = layer.weight.detach()
    left, sigma, right_t = torch.linalg.svd(weight.double(), full_matrices=False)
    first = nn.Linear(v, rank, bias=False, device=weight.device, dtype=weight.dtype)
    second = nn.Linear(
        rank, u, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        first.weight.copy_(sigma[:rank, None] * right_t[:rank])  # Sigma_t V_t^T: (t, v)
        second.weight.copy_(left[:, :rank])  # U_t: (u, t)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def compress_fc_layers(model: nn.Module, ranks: tuple[int, int]) -> list[str]:
    """Replace ``model``'s fc6 and fc7 (the modules of those names, one each, anywhere in it)
    by their truncated SVDs of ``ranks = (t6, t7)``, in place; one line per layer saying
    what changed (shape, rank, parameters before and after)."""
    found: dict[str, list[str]] = {layer: [] for layer in LAYERS}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LAYERS and isinstance(module, nn.Linear):
            found[name.rsplit(".", 1)[-1]].append(name)
    wrong = [layer for layer, names in found.items() if len(names) != 1]
    if wrong:
        raise RcnnError(
            f"--svd-rank: this model has no single fully connected {' and '.join(wrong)} to "
            "compress (truncated SVD applies to the fc6/fc7 heads of small, zf and vgg16, "
            "not to ResNets' layer4)"
        )
    layers = [model.get_submodule(found[layer][0]) for layer in LAYERS]
    for layer, module, rank in zip(LAYERS, layers, ranks, strict=True):
        if not 1 <= rank <= min(module.weight.shape):  # checked for both before changing any
            raise RcnnError(
                f"--svd-rank: rank {rank} for {layer} ({module.out_features} x "
                f"{module.in_features}) must lie in 1 to {min(module.weight.shape)}"
            )
    lines = []
    for layer, original, rank in zip(LAYERS, layers, ranks, strict=True):
        parent_name, _, child = found[layer][0].rpartition(".")
        compressed = truncated_svd(original, rank)
        setattr(model.get_submodule(parent_name), child, compressed)
        before, after = (sum(p.numel() for p in m.parameters()) for m in (original, compressed))
        u, v = original.weight.shape
        lines.append(f"{layer} {u}x{v}: rank {rank}, {before:,} -> {after:,} parameters")
    return lines


def parse_ranks(text: str) -> tuple[int, int]:
    """``"R6,R7"`` (e.g. ``"1024,256"``) -> (R6, R7), two positive integers, else RcnnError."""
    try:
        ranks = tuple(int(part) for part in text.split(","))
    except ValueError:
        ranks = ()
    if len(ranks) != 2 or min(ranks) < 1:
        raise RcnnError(
            f"--svd-rank {text!r}: expected two positive integers R6,R7, the singular values "
            "kept in fc6 and fc7 (e.g. 1024,256 for vgg16, 64,32 for small)"
        )
    return ranks
