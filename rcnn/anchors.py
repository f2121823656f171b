"""Anchors: reference boxes of several scales and aspect ratios at every feature-map cell.

Faster R-CNN (section 3.1.1) uses 3 scales (box areas 128^2, 256^2, 512^2) x 3 aspect ratios
(1:2, 1:1, 2:1) = 9 anchors per cell of the stride-16 map. On an 800x600 image the map is
50 x 38 cells, so there are 50 * 38 * 9 = 17,100 anchors (22,500 for 800x800).

``generate_anchors`` reproduces py-faster-rcnn's table exactly, its rounding included: the
base box is the 16x16 cell, each ratio keeps the cell's area with rounded sides, then each
scale multiplies the sides. That code used inclusive pixel coordinates (width = x2 - x1 + 1);
we return the same boxes in this package's convention (``rcnn.boxes``), i.e. with x2 + 1 and
y2 + 1, so the first anchor (-84, -40, 99, 55) of the original table is (-84, -40, 100, 56).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AnchorConfig:
    """Anchors per cell = len(ratios) * len(scales); sides = base_size * scale (ratio 1)."""

    base_size: int = 16
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    stride: int = 16

    @property
    def num_anchors(self) -> int:
        return len(self.ratios) * len(self.scales)


def generate_anchors(
    base_size: int = 16,
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    scales: tuple[float, ...] = (8.0, 16.0, 32.0),
) -> Tensor:
    """The (A, 4) anchors of one cell at the origin, ratio-major (A = len(ratios) * len(scales))."""
    centre = (base_size - 1) / 2.0  # centre of the cell in inclusive pixel coordinates
    area = float(base_size * base_size)
    rows = []
    for ratio in ratios:
        # 1. a box of the cell's area with aspect ratio h / w = ratio, sides rounded
        w = round((area / ratio) ** 0.5)
        h = round(w * ratio)
        for scale in scales:
            # 2. the same box scaled, centred on the cell
            ws, hs = w * scale, h * scale
            rows.append(
                [
                    centre - (ws - 1) / 2,
                    centre - (hs - 1) / 2,
                    centre + (ws - 1) / 2,
                    centre + (hs - 1) / 2,
                ]
            )
    anchors = torch.tensor(rows, dtype=torch.float32)
    anchors[:, 2:] += 1  # inclusive -> this package's convention (width = x2 - x1)
    return anchors


def shift_anchors(cell_anchors: Tensor, grid_size: tuple[int, int], stride: int) -> Tensor:
    """Place ``cell_anchors (A, 4)`` at every cell of an ``(H, W)`` grid -> ``(H*W*A, 4)``.

    The order is (H, W, A), the order of the RPN's outputs after
    ``(N, A*4, H, W) -> (N, H, W, A, 4)``.
    """
    height, width = grid_size
    device = cell_anchors.device
    shift_y, shift_x = torch.meshgrid(
        torch.arange(height, device=device, dtype=cell_anchors.dtype) * stride,
        torch.arange(width, device=device, dtype=cell_anchors.dtype) * stride,
        indexing="ij",
    )
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
    return (shifts + cell_anchors[None]).reshape(-1, 4)  # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4)


class AnchorGenerator:
    """Anchors for a feature map, cached per grid size and device."""

    def __init__(self, config: AnchorConfig = AnchorConfig()):
        self.config = config
        self.cell_anchors = generate_anchors(config.base_size, config.ratios, config.scales)
        self._cache: dict[tuple, Tensor] = {}

    def __call__(self, grid_size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
        """(H*W*A, 4) anchors in input-image pixels for a feature map of ``grid_size = (H, W)``."""
        if torch.compiler.is_exporting():  # the grid size is symbolic: nothing to cache
            return shift_anchors(self.cell_anchors.to(device), grid_size, self.config.stride)
        key = (tuple(grid_size), str(device))
        if key not in self._cache:
            cell = self.cell_anchors.to(device)
            self._cache[key] = shift_anchors(cell, grid_size, self.config.stride)
        return self._cache[key]
