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

IoU is the plain one of :mod:`rcnn.boxes` (``box_iou_reference`` in the devkit loop, the same
formula row by row in the fast path): our boxes are continuous pixel coordinates (the VOC
reader converted the devkit's 1-based inclusive corners once), so the devkit's ``+ 1`` in
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

from rcnn.boxes import box_area, box_iou_reference
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
    VOC2010 and later (see :func:`average_precision`). Matching is vectorised over the
    whole data set: a fixed number of tensor operations, whatever the number of images.
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
    detections, annotations = on_cpu(detections), on_cpu(annotations)
    _check_inputs(detections, annotations, num_classes, iou_threshold)
    labels, is_tp, counted = match(detections, annotations, iou_threshold)
    num_gt = _count_ground_truth(annotations, num_classes)
    # the detections that count, grouped by class; the stable sort keeps score order
    class_labels, by_class = torch.sort(labels[counted], stable=True)
    sizes = torch.bincount(class_labels, minlength=num_classes + 1)[1:].tolist()
    per_class = is_tp[counted][by_class].split(sizes)
    curves = [_precision_recall(tp, n) for tp, n in zip(per_class, num_gt.tolist(), strict=True)]
    precision, recall = [p for p, _ in curves], [r for _, r in curves]
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
    """Steps 1-3 for all images and classes at once -> labels, is_tp, counted (D,) in score
    order. A fixed number of tensor operations, however many images there are."""
    boxes, scores, labels, image = _flatten(detections, ("boxes", "scores", "labels"))
    gt_boxes, gt_labels, difficult, gt_image = _flatten(
        annotations, ("boxes", "labels", "difficult")
    )
    # 2. each detection's best box: the highest IoU among the boxes of its image and class,
    #    the first such box on ties (the devkit's strict ">")
    span = 1 + int(torch.cat([labels, gt_labels, labels.new_zeros(1)]).max())
    pair, pair_gt = _join(image * span + labels, gt_image * span + gt_labels)
    iou = _matched_iou(boxes[pair].double(), gt_boxes[pair_gt].double())  # (pairs,)
    overlap = torch.full((len(boxes),), -1.0, dtype=torch.float64)
    overlap.scatter_reduce_(0, pair, iou, reduce="amax")
    best = iou == overlap[pair]
    gt_id = torch.full((len(boxes),), len(gt_boxes), dtype=torch.int64)
    gt_id.scatter_reduce_(0, pair[best], pair_gt[best], reduce="amin")
    # 1. highest score first; stable, so that ties keep their input order
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    labels, overlap, gt_id = labels[order], overlap[order], gt_id[order]
    # 3. a hit on a difficult box is ignored; the first hit on any other box is a TP
    hit = overlap >= iou_threshold
    counted = torch.ones_like(hit)
    counted[hit] = ~difficult.bool()[gt_id[hit]]
    valid = hit & counted
    rank = torch.arange(len(order))
    first = torch.full((len(gt_boxes),), len(order), dtype=torch.int64)
    first.scatter_reduce_(0, gt_id[valid], rank[valid], reduce="amin")
    is_tp = torch.zeros_like(hit)
    is_tp[valid] = first[gt_id[valid]] == rank[valid]
    return labels, is_tp, counted


def _flatten(records: Sequence, names: tuple[str, ...]) -> list[Tensor]:
    """The named per-image tensors of N records, concatenated, and (total,) int64 image
    indices: which image each row came from."""
    columns = [torch.cat([getattr(r, name) for r in records]) for name in names]
    sizes = torch.tensor([len(r) for r in records])
    return [*columns, torch.repeat_interleave(torch.arange(len(records)), sizes)]


def _join(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
    """Every pair (i, j) with left[i] == right[j] -> (pairs,) i and (pairs,) j; the pairs of
    one i come in increasing j. left (L,), right (R,) int64 keys."""
    right_sorted, right_order = torch.sort(right, stable=True)
    start = torch.searchsorted(right_sorted, left, side="left")
    count = torch.searchsorted(right_sorted, left, side="right") - start  # (L,)
    i = torch.repeat_interleave(torch.arange(len(left)), count)
    # position of each pair within its run of i: 0, 1, ..., count[i] - 1
    within = torch.arange(len(i)) - (torch.cumsum(count, 0) - count)[i]
    return i, right_order[start[i] + within]


def _matched_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of each box of a (P, 4) with the box in the same row of b (P, 4) -> (P,)."""
    top_left = torch.maximum(a[:, :2], b[:, :2])
    bottom_right = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = box_area(a) + box_area(b) - inter
    return torch.where(union > 0, inter / union, 0.0)


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
    check_labels([d.labels for d in detections], num_classes, "detection")
    check_labels([a.labels for a in annotations], num_classes, "ground-truth")


def on_cpu(records: Sequence[Record]) -> list[Record]:
    """The Annotations or Detections with their tensors on the CPU, where evaluation runs:
    thousands of tiny per-image steps gain nothing from an accelerator."""
    return [type(r)(*(getattr(r, f.name).cpu() for f in fields(r))) for r in records]


def check_labels(labels: Sequence[Tensor], num_classes: int, what: str) -> None:
    """Raise RcnnError naming the first image whose ``labels[i]`` (B_i,) are not all in
    [1, K]; ``what`` says whose labels they are."""
    outside = [(lab < 1) | (lab > num_classes) for lab in labels]
    if torch.cat([*outside, torch.zeros(1, dtype=torch.bool)]).any():
        i = next(i for i, bad in enumerate(outside) if bad.any())
        found = sorted(set(labels[i].tolist()))
        raise RcnnError(f"image {i}: {what} labels must be in [1, {num_classes}], got {found}")
