"""How good are region proposals? Recall, average recall and MABO over a data set.

R-CNN starts from about 2,000 selective-search proposals per image and Faster R-CNN replaces
them with about 300 RPN proposals; these numbers say what a detector can find at all, before
it classifies anything. Proposals carry no class, so a ground-truth box counts as found
when any proposal covers it.

Definitions (difficult ground truth left out throughout; every box of the data set counts
once, so images with many objects weigh more):

* best overlap of a ground-truth box: its highest IoU with any proposal of its image
  (with the top n of them, for "recall at n proposals"; 0 when there is none);
* recall at IoU t: the fraction of ground-truth boxes whose best overlap is >= t;
* average recall, AR (Hosang et al., "What makes for effective detection proposals?"):
  recall averaged over t in 0.50, 0.55, ..., 0.95, as COCO computes it (Hosang's integral
  over [0.5, 1] doubled, sampled at those ten points);
* ABO of a class (Uijlings et al., selective search): the mean best overlap of its boxes;
  MABO: the mean of the ABOs of the classes that have boxes.

Shapes: N images, P_i proposals of image i (ranked, best first), G ground-truth boxes,
K object classes, T IoU thresholds, C proposal counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.boxes import box_iou
from rcnn.errors import RcnnError
from rcnn.evaluation.voc_ap import check_labels, on_cpu
from rcnn.structures import Annotation

# IoU thresholds of AR: 0.50, 0.55, ..., 0.95 (the nearest doubles to those decimals)
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
# proposal counts of the recall-vs-proposals curve; "all" is appended
PROPOSAL_COUNTS = (10, 50, 100, 300, 500, 1000, 2000)


@dataclass(frozen=True)
class ProposalRecall:
    """Recall of a proposal method over a data set.

    counts (C,): numbers of top-ranked proposals per image; the last is the largest P_i, so
    the last row uses all of them. recall (C, T) float64: recall at ``counts[c]`` proposals
    and IoU ``IOU_THRESHOLDS[t]``. abo (K,) float64: average best overlap per class with
    all proposals, NaN for a class without boxes. num_gt: boxes counted; boxes_per_image:
    mean P_i. Every recall is NaN when there is no ground truth at all.
    """

    counts: tuple[int, ...]
    recall: Tensor
    abo: Tensor
    num_gt: int
    boxes_per_image: float

    @property
    def recall50(self) -> float:
        """Recall at IoU 0.5 with all proposals."""
        return self.recall[-1, IOU_THRESHOLDS.index(0.5)].item()

    @property
    def recall70(self) -> float:
        """Recall at IoU 0.7 with all proposals."""
        return self.recall[-1, IOU_THRESHOLDS.index(0.7)].item()

    @property
    def average_recall(self) -> float:
        """AR with all proposals: recall averaged over ``IOU_THRESHOLDS``."""
        return self.recall[-1].mean().item()

    @property
    def mabo(self) -> float:
        """Mean over the classes with boxes of their ABO; NaN if no class has any."""
        defined = self.abo[~self.abo.isnan()]
        return defined.mean().item() if defined.numel() else math.nan


def evaluate_proposals(
    proposals: Sequence[Tensor],
    annotations: Sequence[Annotation],
    num_classes: int,
    counts: Sequence[int] = PROPOSAL_COUNTS,
) -> ProposalRecall:
    """Recall, AR and MABO of ranked ``proposals[i]`` (P_i, 4) against ``annotations[i]``."""
    _check_inputs(proposals, annotations, num_classes, counts)
    proposals, annotations = [p.cpu() for p in proposals], on_cpu(annotations)
    most = max((len(p) for p in proposals), default=0)
    counts = (*sorted(c for c in set(counts) if c < most), most)
    # (G, C) per image -> (G_total, C): best overlap of every box with the top-n proposals
    best, labels = [], []
    for boxes, ann in zip(proposals, annotations, strict=True):
        keep = ~ann.difficult.bool()
        best.append(_best_overlaps(ann.boxes[keep], boxes, counts))
        labels.append(ann.labels[keep])
    best, labels = torch.cat(best), torch.cat(labels)
    thresholds = torch.tensor(IOU_THRESHOLDS, dtype=torch.float64)
    # (G, C, 1) >= (T,) -> (G, C, T); the mean over boxes -> (C, T)
    recall = (best[:, :, None] >= thresholds).double().mean(dim=0)
    abo = _average_best_overlap(best[:, -1], labels, num_classes)
    boxes_per_image = sum(len(p) for p in proposals) / max(1, len(proposals))
    return ProposalRecall(counts, recall, abo, len(labels), boxes_per_image)


def _best_overlaps(gt: Tensor, proposals: Tensor, counts: Sequence[int]) -> Tensor:
    """gt (G, 4), ranked proposals (P, 4) -> (G, C) float64: each box's best IoU with the
    top ``counts[c]`` proposals (all P when P is smaller; 0 when P is 0)."""
    if len(proposals) == 0:
        return torch.zeros(len(gt), len(counts), dtype=torch.float64)
    iou = box_iou(gt.double(), proposals.double())  # (G, P)
    # best overlap so far along the ranking: column n - 1 holds the best of the top n
    running = iou.cummax(dim=1).values
    columns = torch.tensor(counts).clamp(max=len(proposals)) - 1
    return running[:, columns]


def _average_best_overlap(best: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """best (G,) overlaps, labels (G,) in [1, K] -> (K,) mean per class, NaN without boxes."""
    total = torch.zeros(num_classes + 1, dtype=torch.float64).index_add_(0, labels, best)
    boxes = torch.bincount(labels, minlength=num_classes + 1).double()
    return (total / boxes)[1:]  # 0 / 0 = NaN for a class without boxes


def _check_inputs(
    proposals: Sequence[Tensor],
    annotations: Sequence[Annotation],
    num_classes: int,
    counts: Sequence[int],
) -> None:
    if len(proposals) != len(annotations):
        raise RcnnError(
            f"got proposals for {len(proposals)} images and annotations for {len(annotations)}"
        )
    if any(c < 1 for c in counts):
        raise RcnnError(f"proposal counts must be >= 1, got {list(counts)}")
    check_labels([a.labels for a in annotations], num_classes, "ground-truth")
