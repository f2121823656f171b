"""PASCAL VOC average precision: the devkit's ``VOCevaldet.m`` and ``VOCap.m``, vectorised.

The detector papers of this lineage (R-CNN Table 1, SPPNet, Fast R-CNN Table 1, Faster R-CNN
Table 3) report mAP on VOC: the mean over the K classes of each class's average precision.

Matching, per class, exactly as the devkit does it:

1. Take every detection of the class over all images, sorted by score, highest first.
   The sort is stable: equal scores keep their input order (image order, then the order
   within an image), as MATLAB's ``sort`` does.
2. A detection overlaps the ground-truth box of its class, in its own image, of highest IoU
   (``ovmax``, ``jmax``; the first such box on ties), whether that box is already taken,
   difficult or neither. The devkit does not fall back to the next-best free box.
3. ``ovmax >= iou_threshold`` (the devkit's ``ovmax>=VOCopts.minoverlap``; py-faster-rcnn's
   port writes ``>``, which differs only at IoU exactly 0.5):
   * a difficult box: the detection is ignored, neither a true nor a false positive;
   * a box not yet taken: true positive, and the box is taken;
   * a box already taken by a higher-scoring detection: false positive (a duplicate).
   Otherwise the detection is a false positive.
4. recall = TP / (number of non-difficult boxes of the class); precision = TP / (TP + FP).

IoU is plain :func:`rcnn.boxes.box_iou`: our boxes are continuous pixel coordinates (the
VOC reader converted the devkit's 1-based inclusive corners once), so the devkit's ``+ 1`` in
widths and heights does not appear here.

A class without non-difficult ground truth has no recall (0 / 0): its AP is undefined, NaN
here, and the mean AP leaves it out. The devkit divides by zero for such a class (it never
happens on the VOC test sets); we keep the mean over the classes that can be measured.

Shapes: N images, G ground-truth boxes, D detections, K object classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

import torch
from torch import Tensor

from rcnn.boxes import box_iou, box_iou_reference
from rcnn.errors import RcnnError
from rcnn.structures import Annotation, Detections

Record = TypeVar("Record", Annotation, Detections)
# steps 1-3: (detections, annotations, iou_threshold) -> labels, is_tp, counted in score order
Matcher = Callable[
    [Sequence[Detections], Sequence[Annotation], float], tuple[Tensor, Tensor, Tensor]
]


@dataclass(frozen=True)
class VocResult:
    """Per-class AP and the precision/recall curves it was computed from.

    ap (K,) float64, NaN for a class without non-difficult ground truth; num_gt (K,) int64,
    the non-difficult boxes per class (the recall denominators); precision[k - 1] and
    recall[k - 1] (D_k,) float64: one point per counted detection of class k (ignored
    detections left out), in score order, highest first.
    """

    ap: Tensor
    num_gt: Tensor
    precision: tuple[Tensor, ...]
    recall: tuple[Tensor, ...]
    iou_threshold: float
    use_07_metric: bool

    @property
    def map(self) -> float:
        """Mean AP over the classes whose AP is defined; NaN if there is none."""
        defined = self.ap[~self.ap.isnan()]
        return defined.mean().item() if defined.numel() else math.nan

    def with_metric(self, use_07_metric: bool) -> VocResult:
        """The same curves scored with the other AP variant, without matching again."""
        ap = _class_aps(self.precision, self.recall, self.num_gt, use_07_metric)
        return VocResult(
            ap, self.num_gt, self.precision, self.recall, self.iou_threshold, use_07_metric
        )


def evaluate_voc(
    detections: Sequence[Detections],
    annotations: Sequence[Annotation],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> VocResult:
    """VOC AP of each of ``num_classes`` classes, one Detections per Annotation (same order).

    ``use_07_metric`` chooses the VOC2007 11-point AP instead of the all-point AP of
    VOC2010 and later (see :func:`average_precision`). Matching is vectorised per image.
    """
    return _evaluate(_match, detections, annotations, num_classes, iou_threshold, use_07_metric)


def evaluate_voc_reference(
    detections: Sequence[Detections],
    annotations: Sequence[Annotation],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> VocResult:
    """:func:`evaluate_voc` with the devkit's loop, one detection at a time. Slow."""
    return _evaluate(
        _match_reference, detections, annotations, num_classes, iou_threshold, use_07_metric
    )


def _evaluate(
    match: Matcher,
    detections: Sequence[Detections],
    annotations: Sequence[Annotation],
    num_classes: int,
    iou_threshold: float,
    use_07_metric: bool,
) -> VocResult:
    """Match with ``match`` (steps 1-3), then build each class's curve and AP (step 4)."""
    _check_inputs(detections, annotations, num_classes, iou_threshold)
    detections, annotations = on_cpu(detections), on_cpu(annotations)
    labels, is_tp, counted = match(detections, annotations, iou_threshold)
    num_gt = _count_ground_truth(annotations, num_classes)
    precision, recall = [], []
    for k in range(1, num_classes + 1):
        # detections of class k that count, already in score order
        p, r = _precision_recall(is_tp[counted & (labels == k)], num_gt[k - 1].item())
        precision.append(p)
        recall.append(r)
    ap = _class_aps(precision, recall, num_gt, use_07_metric)
    return VocResult(ap, num_gt, tuple(precision), tuple(recall), iou_threshold, use_07_metric)


def precision_envelope(recall: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
    """The devkit's interpolated curve: recall (D,), precision (D,) -> (D + 2,), (D + 2,).

    Recall gains the end points 0 and 1 (with precision 0), and each precision becomes the
    highest precision at that recall or any larger one: p_interp(r) = max_{r' >= r} p(r').
    """
    zero, one = recall.new_zeros(1), recall.new_ones(1)
    mrec = torch.cat([zero, recall, one])
    mpre = torch.cat([zero, precision, zero])
    # running maximum from the right: flip, cumulative max, flip back
    return mrec, mpre.flip(0).cummax(0).values.flip(0)


def average_precision(recall: Tensor, precision: Tensor, use_07_metric: bool = False) -> float:
    """AP of one class from its curve, recall (D,) and precision (D,) in score order.

    All-point (VOC2010+): the area under :func:`precision_envelope`, summed over the
    recall steps. 11-point (VOC2007): the mean over r in {0, 0.1, ..., 1} of the highest
    precision at recall >= r (0 where no point reaches r). The levels here are exactly
    k / 10; implementations that add 0.1 repeatedly get 0.30000000000000004 and so do not
    count a recall of exactly 0.3 at that level.
    """
    if use_07_metric:
        if recall.numel() == 0:
            return 0.0
        levels = torch.arange(11, dtype=recall.dtype) / 10
        reached = recall[None, :] >= levels[:, None]  # (11, D)
        best = torch.where(reached, precision[None, :], 0.0).amax(dim=1)
        return best.mean().item()
    mrec, mpre = precision_envelope(recall, precision)
    # rectangles between consecutive recall points; where recall does not change, width 0
    return ((mrec[1:] - mrec[:-1]) * mpre[1:]).sum().item()


def _match(
    detections: Sequence[Detections], annotations: Sequence[Annotation], iou_threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1-3 for all classes at once -> labels, is_tp, counted: (D,) in score order."""
    # 2. per image: each detection's best box of its class
    overlaps, gt_ids, offset = [], [], 0
    for det, ann in zip(detections, annotations, strict=True):
        overlap, best = _best_overlap(det, ann)
        overlaps.append(overlap)
        gt_ids.append(best + offset)  # numbered over the whole data set
        offset += len(ann)
    difficult = torch.cat([a.difficult for a in annotations]).bool()
    scores = torch.cat([d.scores for d in detections]).double()
    # 1. highest score first; stable, so that ties keep their input order
    order = torch.sort(scores, descending=True, stable=True).indices
    labels = torch.cat([d.labels for d in detections])[order]
    overlap, gt_id = torch.cat(overlaps)[order], torch.cat(gt_ids)[order]
    # 3. a hit on a difficult box is ignored; the first hit on any other box is a TP
    hit = overlap >= iou_threshold
    counted = torch.ones_like(hit)
    counted[hit] = ~difficult[gt_id[hit]]
    valid = hit & counted
    rank = torch.arange(len(order))
    first = torch.full((offset,), len(order), dtype=torch.int64)
    first.scatter_reduce_(0, gt_id[valid], rank[valid], reduce="amin")
    is_tp = torch.zeros_like(hit)
    is_tp[valid] = first[gt_id[valid]] == rank[valid]
    return labels, is_tp, counted


def _match_reference(
    detections: Sequence[Detections], annotations: Sequence[Annotation], iou_threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_match` as the devkit writes it: a loop over the detections in score order."""
    owner = [(i, j) for i, det in enumerate(detections) for j in range(len(det))]
    scores = torch.cat([d.scores for d in detections]).double()
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    taken = [[False] * len(a) for a in annotations]
    labels, is_tp, counted = [], [], []
    for i, j in (owner[d] for d in order):
        box, label, ann = detections[i].boxes[j : j + 1], detections[i].labels[j], annotations[i]
        ovmax, jmax = -math.inf, -1
        for g in range(len(ann)):
            ov = box_iou_reference(box.double(), ann.boxes[g : g + 1].double()).item()
            if ann.labels[g] == label and ov > ovmax:
                ovmax, jmax = ov, g
        labels.append(label.item())
        hit = ovmax >= iou_threshold
        counted.append(not (hit and bool(ann.difficult[jmax])))
        is_tp.append(hit and counted[-1] and not taken[i][jmax])
        if is_tp[-1]:
            taken[i][jmax] = True
    return (
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(is_tp, dtype=torch.bool),
        torch.tensor(counted, dtype=torch.bool),
    )


def _best_overlap(det: Detections, ann: Annotation) -> tuple[Tensor, Tensor]:
    """Step 2 in one image: (D,) float64 IoU with, and (D,) index of, the best same-class box."""
    if len(ann) == 0:
        nothing = torch.full((len(det),), -1.0, dtype=torch.float64)
        return nothing, torch.zeros(len(det), dtype=torch.int64)
    iou = box_iou(det.boxes.double(), ann.boxes.double())  # (D, G)
    iou.masked_fill_(det.labels[:, None] != ann.labels[None, :], -1.0)
    best = iou.max(dim=1)  # the first maximum on ties, as the devkit's strict ">"
    return best.values, best.indices


def _count_ground_truth(annotations: Sequence[Annotation], num_classes: int) -> Tensor:
    """(K,) int64: non-difficult boxes of each class."""
    labels = torch.cat([a.labels[~a.difficult.bool()] for a in annotations])
    return torch.bincount(labels, minlength=num_classes + 1)[1:]


def _precision_recall(is_tp: Tensor, num_gt: int) -> tuple[Tensor, Tensor]:
    """Step 4: is_tp (D_k,) bool in score order -> precision, recall (D_k,) float64."""
    tp = torch.cumsum(is_tp, 0, dtype=torch.float64)
    fp = torch.cumsum(~is_tp, 0, dtype=torch.float64)
    recall = tp / num_gt if num_gt else torch.full_like(tp, math.nan)
    return tp / (tp + fp), recall


def _class_aps(
    precision: Sequence[Tensor], recall: Sequence[Tensor], num_gt: Tensor, use_07_metric: bool
) -> Tensor:
    """(K,) float64 AP per class; NaN where the class has no non-difficult ground truth."""
    aps = [
        average_precision(r, p, use_07_metric) if n > 0 else math.nan
        for p, r, n in zip(precision, recall, num_gt.tolist(), strict=True)
    ]
    return torch.tensor(aps, dtype=torch.float64)


def _check_inputs(
    detections: Sequence[Detections],
    annotations: Sequence[Annotation],
    num_classes: int,
    iou_threshold: float,
) -> None:
    if not annotations:
        raise RcnnError("nothing to evaluate: no annotated images were given")
    if len(detections) != len(annotations):
        raise RcnnError(
            f"evaluation needs one Detections per image: got {len(detections)} for "
            f"{len(annotations)} annotated images"
        )
    if not 0.0 < iou_threshold <= 1.0:
        raise RcnnError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    for i, (det, ann) in enumerate(zip(detections, annotations, strict=True)):
        check_labels(det.labels, num_classes, f"image {i}: detection")
        check_labels(ann.labels, num_classes, f"image {i}: ground-truth")


def on_cpu(records: Sequence[Record]) -> list[Record]:
    """The Annotations or Detections with their tensors on the CPU, where evaluation runs:
    thousands of tiny per-image steps gain nothing from an accelerator."""
    return [type(r)(*(getattr(r, f.name).cpu() for f in fields(r))) for r in records]


def check_labels(labels: Tensor, num_classes: int, what: str) -> None:
    """Raise RcnnError naming ``what`` unless every one of ``labels`` (B,) is in [1, K]."""
    if labels.numel() and not 1 <= labels.min().item() <= labels.max().item() <= num_classes:
        found = sorted(set(labels.tolist()))
        raise RcnnError(f"{what} labels must be in [1, {num_classes}], got {found}")
