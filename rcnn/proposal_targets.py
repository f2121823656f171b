"""Fast R-CNN's proposal target layer (section 2.3, "mini-batch sampling").

For each image:
1. the ground-truth boxes are added to the proposals (so early in training, when the RPN
   proposes little of use, the head still sees foreground);
2. a RoI is foreground if its IoU with a ground-truth box is >= 0.5 and takes that box's
   class; background if its highest IoU lies in [0.1, 0.5) (the low bound works as a hard
   example heuristic); below 0.1 it is not used;
3. 128 RoIs are sampled per image (2 images x 64 in the paper's hierarchical sampling,
   which is this with batch_size_per_image = 64), at most 25% foreground;
4. foreground RoIs regress to their ground-truth box, targets normalised by the head's coder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.box_coder import BoxCoder
from rcnn.boxes import box_iou
from rcnn.matching import match_boxes, matched_labels, sample_balanced


@dataclass(frozen=True)
class ProposalTargetConfig:
    batch_size_per_image: int = 128
    foreground_fraction: float = 0.25
    foreground_iou: float = 0.5
    background_iou: tuple[float, float] = (0.1, 0.5)


@dataclass(frozen=True)
class RoITargets:
    """One image's sampled RoIs: ``indices (S,)`` into cat(proposals, gt_boxes), so that a caller
    that wants gradients through the proposals can gather them itself; ``rois (S, 4)``;
    ``labels (S,)`` in [0, K]; ``targets (S, 4)`` normalised regression targets (0 for background).
    """

    indices: Tensor
    rois: Tensor
    labels: Tensor
    targets: Tensor


@torch.no_grad()
def proposal_targets(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    config: ProposalTargetConfig = ProposalTargetConfig(),
    coder: BoxCoder = BoxCoder.fast_rcnn(),
    generator: torch.Generator | None = None,
) -> RoITargets:
    """Sample RoIs from ``proposals (P, 4)`` against ``gt_boxes (G, 4)`` / ``gt_labels (G,)``."""
    # 1. the ground truth joins the proposals
    candidates = torch.cat((proposals.detach(), gt_boxes.to(proposals.dtype)))
    # 2. foreground, background, unused
    iou = box_iou(gt_boxes.to(candidates.dtype), candidates)
    matches = match_boxes(iou, config.foreground_iou, config.background_iou)
    labels = matched_labels(matches, gt_labels)
    # 3. a sample of at most 25% foreground
    foreground, background = sample_balanced(
        labels, config.batch_size_per_image, config.foreground_fraction, generator
    )
    indices = torch.cat((foreground, background))
    rois = candidates[indices]
    sampled_labels = labels[indices]  # foreground first, then background (0)
    # 4. regression targets of the foreground
    targets = torch.zeros_like(rois)
    matched = gt_boxes[matches[foreground]].to(rois.dtype)
    targets[: foreground.numel()] = coder.encode(rois[: foreground.numel()], matched)
    return RoITargets(indices, rois, sampled_labels, targets)
