"""Faster R-CNN's anchor target layer (section 3.1.2): which anchors teach the RPN what.

For each image:
1. anchors that cross the image border are ignored in training (they would add large,
   hard-to-correct error terms, section 3.3);
2. an anchor is positive if its IoU with some ground-truth box is >= 0.7, or if it is the
   anchor (ties included) with the highest IoU for some ground-truth box;
3. it is negative if its highest IoU is <= 0.3; the rest are ignored;
4. 256 anchors are sampled, at most half positive, negatives filling the rest;
5. positives regress to their best ground-truth box (R-CNN's parameterisation, unnormalised).
Labels: 1 positive, 0 negative, -1 ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.box_coder import BoxCoder
from rcnn.boxes import box_iou
from rcnn.matching import match_boxes, matched_labels, sample_balanced


@dataclass(frozen=True)
class AnchorTargetConfig:
    positive_iou: float = 0.7
    negative_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    allowed_border: float = 0.0  # pixels an anchor may cross the border and still be used


@torch.no_grad()
def anchor_targets(
    anchors: Tensor,
    gt_boxes: Tensor,
    image_size: tuple[int, int],
    config: AnchorTargetConfig = AnchorTargetConfig(),
    coder: BoxCoder = BoxCoder(),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Labels (B,) int64 in {1, 0, -1} and regression targets (B, 4) for ``anchors (B, 4)``.

    ``gt_boxes (G, 4)`` are the image's non-difficult ground-truth boxes, in the same pixels as
    the anchors; ``image_size = (H, W)`` is the image's own size (not the padded batch's).
    """
    labels = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    targets = torch.zeros_like(anchors)
    # 1. only anchors inside the image take part
    inside = torch.nonzero(_inside(anchors, image_size, config.allowed_border)).flatten()
    # 2-3. positives and negatives by IoU
    iou = box_iou(gt_boxes, anchors[inside])
    matches = match_boxes(
        iou, config.positive_iou, (0.0, config.negative_iou), allow_low_quality=True
    )
    inside_labels = matched_labels(matches, torch.ones_like(matches[: gt_boxes.shape[0]]))
    # 4. a balanced sample of 256
    positive, negative = sample_balanced(
        inside_labels, config.batch_size_per_image, config.positive_fraction, generator
    )
    labels[inside[positive]] = 1
    labels[inside[negative]] = 0
    # 5. regression targets of the sampled positives
    targets[inside[positive]] = coder.encode(anchors[inside[positive]], gt_boxes[matches[positive]])
    return labels, targets


def _inside(anchors: Tensor, image_size: tuple[int, int], border: float) -> Tensor:
    height, width = image_size
    return (
        (anchors[:, 0] >= -border)
        & (anchors[:, 1] >= -border)
        & (anchors[:, 2] <= width + border)
        & (anchors[:, 3] <= height + border)
    )
