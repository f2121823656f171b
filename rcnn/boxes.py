"""Boxes: the one set of conventions the whole package follows.

Conventions
-----------
* A box is float ``xyxy`` in pixels: ``(x1, y1, x2, y2)`` with ``x2 >= x1`` and ``y2 >= y1``.
  Width is ``x2 - x1`` and height ``y2 - y1`` (no "+1": the continuous convention of
  torchvision and Detectron, not the 1-based integer convention of the VOC devkit, which
  the VOC reader converts once, on load).
* ``image_size`` is ``(H, W)``: height first, as tensors are laid out.
* Labels are int64 in ``[0, K]``; 0 is background, ``k >= 1`` is ``class_names[k - 1]``.
* RoIs handed to the pooling ops are ``(R, 5)``: ``[batch_index, x1, y1, x2, y2]``.

Shape shorthand, used in every module's docstrings and reshape comments:
``N`` images, ``A`` anchors per feature-map cell, ``H x W`` feature map, ``R`` RoIs,
``G`` ground-truth boxes, ``D`` detections, ``K`` object classes (``K + 1`` with background),
``C`` channels.

Every function here accepts empty inputs (0 boxes) and preserves dtype and device.
"""

from __future__ import annotations

import torch
from torch import Tensor

# box_iou works through the rows of ``a`` in chunks of about this many pairs, so that its
# temporaries stay a small multiple of the (N, M) result instead of four (N, M, 2) tensors.
_IOU_CHUNK_PAIRS = 1 << 20


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``(..., 4)`` xyxy boxes -> ``(...)``. Degenerate boxes have area 0."""
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    heights = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return widths * heights


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union of ``a (N, 4)`` and ``b (M, 4)`` -> ``(N, M)``.

    Two boxes of zero area (or any pair with an empty union) have IoU 0.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    out = a.new_empty((a.shape[0], b.shape[0]))
    if out.numel() == 0:
        return out
    area_b = box_area(b)
    rows = max(1, _IOU_CHUNK_PAIRS // max(1, b.shape[0]))
    for start in range(0, a.shape[0], rows):
        chunk = a[start : start + rows]
        _iou_into(chunk, b, box_area(chunk), area_b, out[start : start + rows])
    return out


def _iou_into(a: Tensor, b: Tensor, area_a: Tensor, area_b: Tensor, out: Tensor) -> None:
    """Write IoU(a (n, 4), b (M, 4)) into ``out (n, M)`` with two (n, M) temporaries."""
    # intersection width: min(x2) - max(x1), clamped at 0; likewise the height
    inter = torch.minimum(a[:, None, 2], b[None, :, 2])
    inter -= torch.maximum(a[:, None, 0], b[None, :, 0])
    inter.clamp_(min=0)
    height = torch.minimum(a[:, None, 3], b[None, :, 3])
    height -= torch.maximum(a[:, None, 1], b[None, :, 1])
    height.clamp_(min=0)
    inter *= height
    # union = area_a + area_b - inter, reusing ``height`` as its storage
    torch.add(area_a[:, None], area_b[None, :], out=height)
    height -= inter
    torch.div(inter, height, out=out)
    out.nan_to_num_(nan=0.0)


def box_iou_reference(a: Tensor, b: Tensor) -> Tensor:
    """The textbook definition, one pair at a time. Slow; the tests hold box_iou to it."""
    out = a.new_zeros((a.shape[0], b.shape[0]))
    for i, (ax1, ay1, ax2, ay2) in enumerate(a.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b.tolist()):
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = iw * ih
            union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
            union += max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip ``(..., 4)`` boxes to an image of ``image_size = (H, W)``; returns a new tensor."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (int64) of the ``(B, 4)`` boxes whose width and height are both >= min_size."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((widths >= min_size) & (heights >= min_size)).flatten()


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` corners -> ``(..., 4)`` centre x, centre y, width, height."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre x, centre y, width, height -> ``(..., 4)`` corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def hflip_boxes(boxes: Tensor, width: float | Tensor) -> Tensor:
    """``(..., 4)`` xyxy boxes mirrored left-right in images ``width`` wide (a number, or a
    tensor broadcasting against ``boxes[..., 0]``): x -> width - x, the two x corners swapped."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def _check_boxes(boxes: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be (B, 4) xyxy boxes, got shape {tuple(boxes.shape)}")


def to_rois(boxes_per_image: list[Tensor]) -> Tensor:
    """Per-image boxes [(B_i, 4), ...] -> RoIs (sum B_i, 5): [batch_index, x1, y1, x2, y2]."""
    if not boxes_per_image:
        return torch.zeros(0, 5)
    indices = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes_per_image)]
    return torch.cat(
        [torch.cat(pair, dim=1) for pair in zip(indices, boxes_per_image, strict=True)]
    )
