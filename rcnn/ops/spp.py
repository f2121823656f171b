"""SPPNet's spatial pyramid pooling layer (SPPNet §2.3, §4 and its appendix).

A window of ``a x a`` cells is max-pooled at each pyramid level ``n`` into ``n x n`` bins
with window ``ceil(a / n)`` and stride ``floor(a / n)`` (the paper's definition, per axis for
a rectangle), and the levels are concatenated into one fixed-length vector: levels (4, 2, 1)
give 16 + 4 + 1 = 21 bins per channel, (6, 3, 2, 1) give 50.

Two cases the paper's rule leaves open, settled here:

* Known caveat: when ``n`` does not divide ``a`` the bins do not cover the window. With
  ``a = q n + r`` the last bin ends at ``n q + (r > 0)``, so ``r - 1`` cells at the far edge
  are never pooled (``a = 7, n = 4``: window 2, stride 1, cells 5 and 6 unused). Kept as the
  paper defines it.
* ``a < n`` (a small RoI at a fine level) makes the stride 0. Then bin ``i`` is the single
  cell ``floor(i * a / n)``: the window's cells, each repeated, spread over the ``n`` bins.

Over RoIs, each window is found as SPPNet's appendix maps one onto the map (``sppnet_window``).

Shapes: features ``(N, C, H, W)``, rois ``(R, 5)`` ``[batch_index, x1, y1, x2, y2]`` in image
pixels or None (the whole map of each image); output ``(R or N, C * sum(n * n))``, level by
level, each level flattened as ``(C, n, n)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rcnn.ops._pooling import check_rois, max_over_bins, round_half_away


def sppnet_window(boxes: Tensor, spatial_scale: float, map_size: tuple[int, int]) -> Tensor:
    """SPPNet's projection of ``boxes (..., 4)`` onto the map -> ``(..., 4)`` int64 cells.

    The appendix: "we project the left (top) boundary by x' = floor(x / S) + 1 and the
    right (bottom) boundary x' = ceil(x / S) - 1", with ``S = 1 / spatial_scale``, so that
    each corner lands on the cell whose receptive-field centre is nearest it. The result
    ``[x1, y1, x2, y2]`` names the window's first and last cells (both included), clipped to
    the ``map_size = (H, W)`` map. A box narrower than about two cells comes out inside-out
    (``x2 < x1``); its window is then the one cell nearest the box's centre, ``round(c / S)``.
    """
    height, width = map_size
    scaled = boxes.detach() * spatial_scale
    first = torch.floor(scaled[..., :2]).long() + 1
    last = torch.ceil(scaled[..., 2:]).long() - 1
    centre = round_half_away((scaled[..., :2] + scaled[..., 2:]) / 2).long()
    limit = torch.tensor([width - 1, height - 1], device=boxes.device)
    first, last = first.clamp(min=0).minimum(limit), last.clamp(min=0).minimum(limit)
    inside_out = last < first
    first = torch.where(inside_out, centre.clamp(min=0).minimum(limit), first)
    last = torch.where(inside_out, first, last)
    return torch.cat([first, last], dim=-1)


def spp(
    features: Tensor,
    rois: Tensor | None,
    levels: tuple[int, ...] = (4, 2, 1),
    spatial_scale: float = 1 / 16,
) -> Tensor:
    """Spatial pyramid pooling of whole maps (``rois=None``) or of RoI windows.

    ``features (N, C, H, W)``, ``rois (R, 5)`` -> ``(R or N, C * sum(n * n for n in levels))``.
    """
    image_index, windows = _windows(features, rois, spatial_scale)
    pooled = []
    for n in levels:
        if n < 1:
            raise ValueError(f"pyramid levels must be positive, got {levels}")
        rows = _pyramid_bins(windows[:, 1], windows[:, 3], n)
        cols = _pyramid_bins(windows[:, 0], windows[:, 2], n)
        # (U, C, n, n) -> (U, C*n*n)
        pooled.append(max_over_bins(features, image_index, rows, cols).flatten(1))
    return torch.cat(pooled, dim=1)


def _windows(features: Tensor, rois: Tensor | None, spatial_scale: float):
    """Image index ``(U,)`` and inclusive window ``(U, 4)`` [x1, y1, x2, y2] of each unit."""
    if rois is not None:
        image_index = check_rois(features, rois)
        return image_index, sppnet_window(rois[:, 1:], spatial_scale, features.shape[-2:])
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    n, _, height, width = features.shape
    image_index = torch.arange(n, device=features.device)
    whole = torch.tensor([0, 0, width - 1, height - 1], device=features.device)
    return image_index, whole.expand(n, 4)


def _pyramid_bins(first: Tensor, last: Tensor, n: int) -> Tensor:
    """Level-``n`` bins of the windows ``first..last (U,)`` along one axis -> ``(U, n, 2)``."""
    size = (last - first + 1)[:, None]  # (U, 1): a
    i = torch.arange(n, device=first.device)
    stride = torch.div(size, n, rounding_mode="floor")
    window = torch.div(size + n - 1, n, rounding_mode="floor")
    start = torch.where(stride > 0, i * stride, torch.div(i * size, n, rounding_mode="floor"))
    length = torch.where(stride > 0, window, 1)
    return torch.stack([first[:, None] + start, first[:, None] + start + length], dim=-1)


def spp_reference(
    features: Tensor,
    rois: Tensor | None,
    levels: tuple[int, ...] = (4, 2, 1),
    spatial_scale: float = 1 / 16,
) -> Tensor:
    """The paper's pooling written out: window, stride and a max per bin, in loops. Slow."""
    image_index, windows = _windows(features, rois, spatial_scale)
    rows = []
    for b, (x1, y1, x2, y2) in zip(image_index.tolist(), windows.tolist(), strict=True):
        parts = []
        for n in levels:
            level = features.new_empty((features.shape[1], n, n))
            for i, (top, bottom) in enumerate(_paper_bins(y1, y2 - y1 + 1, n)):
                for j, (left, right) in enumerate(_paper_bins(x1, x2 - x1 + 1, n)):
                    level[:, i, j] = features[b, :, top:bottom, left:right].amax(dim=(1, 2))
            parts.append(level.flatten())
        rows.append(torch.cat(parts))
    if not rows:
        return features.new_empty((0, features.shape[1] * sum(n * n for n in levels)))
    return torch.stack(rows)


def _paper_bins(first: int, a: int, n: int) -> list[tuple[int, int]]:
    """Bins of a window of ``a`` cells from cell ``first``: window ceil(a/n), stride floor(a/n)."""
    if a >= n:
        window, stride = -(-a // n), a // n
        return [(first + i * stride, first + i * stride + window) for i in range(n)]
    return [(first + i * a // n, first + i * a // n + 1) for i in range(n)]
