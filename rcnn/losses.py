"""The losses of the lineage: smooth L1 and the two multi-task losses.

Fast R-CNN (eq. 1):  L(p, u, t^u, v) = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v), lambda = 1,
with L_cls the log loss of the true class u and L_loc a smooth L1 over the 4 box targets.
Faster R-CNN's RPN (eq. 1):
    L({p_i}, {t_i}) = 1/N_cls sum_i L_cls(p_i, p*_i) + lambda 1/N_reg sum_i p*_i L_reg(t_i, t*_i)
with N_cls = the sampled anchors (256 per image), N_reg = the anchor locations (~2,400 for a
1000x600 image) and lambda = 10, so that both terms weigh about the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_l1(input: Tensor, target: Tensor, sigma: float = 1.0) -> Tensor:
    """Sum over all elements of smooth L1 with py-faster-rcnn's sigma.

    0.5 (sigma x)^2 where |x| < 1 / sigma^2, |x| - 0.5 / sigma^2 elsewhere. sigma = 1 is Fast
    R-CNN's loss; the RPN uses sigma = 3, which makes it closer to L1 near zero.
    """
    diff = (input - target).abs()
    beta = 1.0 / (sigma * sigma)
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta).sum()


@dataclass(frozen=True)
class RPNLossConfig:
    """lambda weighs the box term; sigma shapes its smooth L1 (py-faster-rcnn: 3)."""

    box_weight: float = 10.0
    sigma: float = 3.0


def rpn_loss(
    objectness: Tensor,
    deltas: Tensor,
    labels: Tensor,
    targets: Tensor,
    num_locations: int,
    config: RPNLossConfig = RPNLossConfig(),
) -> dict[str, Tensor]:
    """RPN multi-task loss over the anchors of a batch.

    objectness (B,) logits; deltas (B, 4); labels (B,) in {1 object, 0 background, -1 ignored};
    targets (B, 4) encoded boxes (used where labels == 1); num_locations = N_reg, the anchor
    locations (H * W summed over the batch's images). N_cls = the anchors with labels >= 0.
    """
    sampled = labels >= 0
    positive = labels == 1
    num_sampled = max(int(sampled.sum()), 1)
    cls = F.binary_cross_entropy_with_logits(
        objectness[sampled], labels[sampled].to(objectness.dtype), reduction="sum"
    )
    box = smooth_l1(deltas[positive], targets[positive], config.sigma)
    return {
        "rpn_cls": cls / num_sampled,
        "rpn_box": config.box_weight * box / max(num_locations, 1),
    }


def fast_rcnn_loss(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    targets: Tensor,
    box_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Fast R-CNN multi-task loss (eq. 1), averaged over the R RoIs.

    class_logits (R, K+1); box_deltas (R, (K+1)*4) class-specific; labels (R,) in [0, K];
    targets (R, 4) encoded, normalised boxes. Only the deltas of the true class u of
    foreground RoIs (u >= 1) enter L_loc: [u >= 1] L_loc(t^u, v).
    """
    num_rois = max(labels.shape[0], 1)
    cls = F.cross_entropy(class_logits, labels, reduction="sum")
    foreground = torch.nonzero(labels > 0).flatten()
    per_class = box_deltas.reshape(
        box_deltas.shape[0], box_deltas.shape[1] // 4, 4
    )  # (R, (K+1)*4) -> (R, K+1, 4)
    predicted = per_class[foreground, labels[foreground]]  # t^u: (F, 4)
    box = smooth_l1(predicted, targets[foreground], sigma=1.0)
    return {"fast_rcnn_cls": cls / num_rois, "fast_rcnn_box": box_weight * box / num_rois}
