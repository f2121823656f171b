"""Assigning boxes (anchors, proposals) to ground truth, and balanced sampling of them.

Both target layers are built from these two steps:

* Faster R-CNN's anchor target layer: IoU >= 0.7 positive, plus the best anchor of each
  ground-truth box; max IoU <= 0.3 negative; the rest ignored; sample 256, at most half positive.
* Fast R-CNN's proposal target layer: IoU >= 0.5 foreground; max IoU in [0.1, 0.5)
  background; below 0.1 ignored; sample 128, at most 25% foreground.
"""

from __future__ import annotations

import torch
from torch import Tensor

# What match_boxes writes for a box that matched no ground truth.
NEGATIVE = -1  # background: its best IoU lies in the negative range
IGNORE = -2  # neither positive nor negative: left out of the loss


def match_boxes(
    iou: Tensor,
    positive_threshold: float,
    negative_range: tuple[float, float],
    allow_low_quality: bool = False,
) -> Tensor:
    """Match each of B boxes to one of G ground-truth boxes, given ``iou (G, B)``.

    Returns ``(B,)`` int64: the index of the matched ground-truth box when the box's best IoU is
    >= positive_threshold; NEGATIVE when it lies in ``negative_range = (low, high)``
    (inclusive; positives take precedence at ``high``); IGNORE otherwise.
    ``allow_low_quality`` also makes positive, for each ground-truth box, the boxes that overlap
    it most (ties included, as py-faster-rcnn does), so that every ground-truth box with any
    overlap gets at least one positive (Faster R-CNN section 3.1.2, condition (i)).
    With no ground truth (G = 0) every box is NEGATIVE: an image without objects still shows
    the classifier what background looks like, whatever the lower bound of the range.
    """
    if iou.shape[0] == 0:  # no objects: every box is background, whatever the range says
        return torch.full((iou.shape[1],), NEGATIVE, dtype=torch.int64, device=iou.device)
    best_iou, best_gt = iou.max(dim=0)
    matches = best_gt.clone()
    low, high = negative_range
    matches[(best_iou < positive_threshold) & (best_iou >= low) & (best_iou <= high)] = NEGATIVE
    matches[(best_iou < positive_threshold) & ((best_iou < low) | (best_iou > high))] = IGNORE
    if allow_low_quality:
        best_for_gt = iou.max(dim=1, keepdim=True).values  # (G, 1)
        is_best = (iou == best_for_gt) & (best_for_gt > 0)  # (G, B); no overlap: no match
        boxes = is_best.any(dim=0)
        matches[boxes] = best_gt[boxes]  # each keeps its own best ground truth
    return matches


def matched_labels(matches: Tensor, gt_labels: Tensor) -> Tensor:
    """Training labels from ``matches (B,)``: the matched box's label from ``gt_labels (G,)``,
    0 for NEGATIVE, -1 for IGNORE."""
    padded = torch.cat(
        (gt_labels.new_tensor([-1, 0]), gt_labels)
    )  # index m + 2: IGNORE, NEGATIVE, gt
    return padded[matches + 2]


def sample_balanced(
    labels: Tensor,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample at most ``num_samples`` of ``labels (B,)`` (>= 1 positive, 0 negative, < 0 ignored).

    Positives fill up to ``positive_fraction`` of the sample; negatives fill the rest.
    Returns int64 indices ``(positive, negative)``, each in random order.
    """
    positive = torch.nonzero(labels >= 1).flatten()
    negative = torch.nonzero(labels == 0).flatten()
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    return _random_subset(positive, num_pos, generator), _random_subset(
        negative, num_neg, generator
    )


def _random_subset(indices: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    order = torch.randperm(indices.numel(), generator=generator, device="cpu")[:count]
    return indices[order.to(indices.device)]
