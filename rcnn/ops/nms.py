"""Non-maximum suppression: R-CNN's test-time clean-up (§2.2) and Faster R-CNN's proposal filter.

Greedy NMS, as every paper of the lineage uses it: visit the boxes by decreasing score and keep
a box unless a box kept before it overlaps it with IoU *strictly greater* than the threshold.
Equal scores are visited in index order (the lower index first), so the result is a function
of the inputs alone.

Shapes: ``boxes (B, 4)`` xyxy, ``scores (B,)``, ``labels (B,)`` int64; results are int64
indices into ``boxes``, ordered by decreasing score (ties: lower index first).

On the CPU the greedy step runs in C (``_greedy_nms.c``, compiled at install where a C
compiler is found): the textbook loop, each kept box against the later boxes as a loop
without branches that the compiler vectorises; 12,000 RPN-like boxes in 13 ms. Elsewhere (CUDA,
half precision, no compiler) the PyTorch path runs, exact as well. It takes the boxes in score
order, ``_BLOCK`` at a time:

1. inside the block, boxes suppress later boxes through the upper-triangular matrix
   ``S[i, j] = IoU(i, j) > t, i < j``; greedy's answer is the fixed point of
   ``keep[j] = not any_i (S[i, j] and keep[i])``, reached by iterating from "keep all"
   (the fixed point of a triangular system is unique, hence it *is* the greedy answer);
2. the block's kept boxes then remove every later box they suppress, so later blocks only
   see boxes that no kept box has suppressed yet.

Every IoU goes through ``rcnn.boxes.box_iou``, elementwise, so each comparison is the same
floating-point number as in ``nms_reference``; the two agree bit for bit, and the C kernel
rounds each IoU as ``box_iou`` does, so all three keep the same boxes.

Under ``torch.export`` both functions become one opaque node, ``rcnn::nms`` (the loops above
depend on the data), which ``rcnn.export`` writes as ONNX's NonMaxSuppression.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rcnn.boxes import box_iou

try:  # the C kernel, built at install where a C compiler was found (setup.py)
    from rcnn.ops._greedy_nms import greedy_nms as _native_greedy
except ImportError:
    _native_greedy = None
_NATIVE = (torch.float32, torch.float64)  # the box types the kernel reads

# Boxes resolved together in step 1. Larger blocks mean fewer Python steps but a bigger
# (block, block) matrix and more fixed-point rounds; on the 2-core CPU, blocks of 64 to 2048
# timed within noise of each other on 12,000 RPN-like boxes, and 256 is in the middle.
_BLOCK = 256


def nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    *,
    top_k: int | None = None,
    score_threshold: float | None = None,
) -> Tensor:
    """Greedy NMS -> int64 indices of the kept ``boxes (B, 4)``, by decreasing ``scores (B,)``.

    ``score_threshold``: drop boxes whose score is not above it first (py-faster-rcnn's
    ``scores > thresh``). ``top_k``: keep at most this many; the search stops as soon as it
    has them, which is what makes RPN's "NMS, then the top 2000" cheap.
    """
    if torch.compiler.is_exporting():
        return torch.ops.rcnn.nms(boxes, scores, None, iou_threshold, top_k, score_threshold)
    candidates = _candidates(boxes, scores, None, score_threshold, top_k)
    order = candidates[torch.sort(scores[candidates], descending=True, stable=True).indices]
    return _greedy(boxes, order, None, iou_threshold, top_k)


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float,
    *,
    top_k: int | None = None,
    score_threshold: float | None = None,
) -> Tensor:
    """NMS within each label: boxes of different ``labels (B,)`` never suppress each other.

    Returns int64 indices of the kept boxes by decreasing score (ties: lower index first),
    at most ``top_k`` of them. Exact: pairs of different labels are masked out of the
    comparison rather than moved apart by a coordinate offset, which would round.
    """
    if torch.compiler.is_exporting():
        return torch.ops.rcnn.nms(boxes, scores, labels, iou_threshold, top_k, score_threshold)
    candidates = _candidates(boxes, scores, labels, score_threshold, top_k)
    by_score = candidates[torch.sort(scores[candidates], descending=True, stable=True).indices]
    # group by label, keeping score order inside each group: (label, -score, index) order
    order = by_score[torch.sort(labels[by_score], stable=True).indices]
    kept = _greedy(boxes, order, labels, iou_threshold, None)
    rank = torch.empty(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    rank[by_score] = torch.arange(by_score.numel(), device=boxes.device)
    kept = kept[torch.sort(rank[kept]).indices]
    return kept if top_k is None else kept[:top_k]


@torch.library.custom_op("rcnn::nms", mutates_args=())
def _nms_op(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor | None,
    iou_threshold: float,
    top_k: int | None,
    score_threshold: float | None,
) -> Tensor:
    """``nms`` (``labels`` None) or ``batched_nms`` as one node of an exported graph."""
    if labels is None:
        return nms(boxes, scores, iou_threshold, top_k=top_k, score_threshold=score_threshold)
    return batched_nms(
        boxes, scores, labels, iou_threshold, top_k=top_k, score_threshold=score_threshold
    )


@_nms_op.register_fake
def _(boxes, scores, labels, iou_threshold, top_k, score_threshold):
    kept = torch.library.get_ctx().new_dynamic_size()  # how many: known only at run time
    return boxes.new_empty((kept,), dtype=torch.int64)


def _greedy(
    boxes: Tensor, order: Tensor, labels: Tensor | None, threshold: float, top_k: int | None
) -> Tensor:
    """Greedy NMS over the indices ``order (P,)``, visited in that order -> kept indices.

    With ``labels``, ``order`` must be grouped by label (see batched_nms). On the CPU the C
    kernel runs it when it was built; else the blocks below. Autocast is off inside the
    blocks: its casts would cost more than the block products they feed (under bfloat16
    autocast, 4x the time of each 256 x 256 product on this CPU).
    """
    if _native_greedy is not None and boxes.device.type == "cpu" and boxes.dtype in _NATIVE:
        return _greedy_native(boxes, order, labels, threshold, top_k)
    with torch.autocast(boxes.device.type, enabled=False):
        return _greedy_blocks(boxes, order, labels, threshold, top_k)


def _greedy_native(
    boxes: Tensor, order: Tensor, labels: Tensor | None, threshold: float, top_k: int | None
) -> Tensor:
    """``_greedy`` by the C kernel (``_greedy_nms.c``): the textbook loop over the boxes in
    visiting order, each kept box dropping the later ones it overlaps."""
    visited = boxes.detach()[order].contiguous()
    visited_labels = None if labels is None else labels[order].to(torch.int64).numpy()
    keep = torch.empty(order.numel(), dtype=torch.int64)
    count = _native_greedy(
        visited.numpy(), visited_labels, threshold, -1 if top_k is None else top_k, keep.numpy()
    )
    return order[keep[:count]]


def _greedy_blocks(
    boxes: Tensor, order: Tensor, labels: Tensor | None, threshold: float, top_k: int | None
) -> Tensor:
    remaining, kept, n_kept = order, [], 0
    while remaining.numel() > 0 and (top_k is None or n_kept < top_k):
        block, later = remaining[:_BLOCK], remaining[_BLOCK:]
        block_labels = None if labels is None else labels[block]
        # 1. greedy inside the block
        winners = block[_greedy_within_block(boxes[block], block_labels, threshold)]
        kept.append(winners)
        n_kept += winners.numel()
        # 2. the block's kept boxes remove the later boxes they suppress
        remaining = _survivors(boxes, winners, later, labels, threshold)
    kept = torch.cat(kept) if kept else order[:0]
    return kept if top_k is None else kept[:top_k]


def _survivors(
    boxes: Tensor, winners: Tensor, later: Tensor, labels: Tensor | None, threshold: float
) -> Tensor:
    """The indices ``later (P,)`` that no box of ``winners (k,)`` suppresses, in order."""
    if labels is None:
        return later[~_overlaps(boxes[winners], boxes[later], threshold).any(dim=0)]
    # grouped by label: only a prefix of ``later`` can share a label with the winners
    end = int(torch.searchsorted(labels[later], labels[winners].max(), right=True))
    near, far = later[:end], later[end:]
    same = labels[winners][:, None] == labels[near][None, :]
    doomed = (_overlaps(boxes[winners], boxes[near], threshold) & same).any(dim=0)
    return torch.cat([near[~doomed], far])


def _greedy_within_block(boxes: Tensor, labels: Tensor | None, threshold: float) -> Tensor:
    """Greedy answer inside one block of score-ordered ``boxes (b, 4)`` -> keep mask ``(b,)``."""
    suppresses = _overlaps(boxes, boxes, threshold).triu_(diagonal=1)  # S[i, j], i < j
    if labels is not None:
        suppresses &= labels[:, None] == labels[None, :]
    weights = suppresses.to(boxes.dtype)
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    while True:  # keep[j] = no kept i < j suppresses j; at most b rounds, usually a few
        new_keep = (keep.to(boxes.dtype) @ weights) == 0
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def _overlaps(a: Tensor, b: Tensor, threshold: float) -> Tensor:
    """``(n, m)`` bool: IoU(a_i, b_j) > threshold, for ``a (n, 4)`` and ``b (m, 4)``."""
    return box_iou(a, b) > threshold


def _candidates(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor | None,
    score_threshold: float | None,
    top_k: int | None,
) -> Tensor:
    """Check the arguments; int64 indices of the boxes whose score passes ``score_threshold``."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (B, 4) xyxy, got shape {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(
            f"scores must be ({boxes.shape[0]},) for {boxes.shape[0]} boxes, "
            f"got shape {tuple(scores.shape)}"
        )
    if labels is not None and labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"labels must be ({boxes.shape[0]},) for {boxes.shape[0]} boxes, "
            f"got shape {tuple(labels.shape)}"
        )
    if score_threshold is None:
        return torch.arange(boxes.shape[0], device=boxes.device)
    return torch.nonzero(scores > score_threshold).flatten()


def nms_reference(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    *,
    top_k: int | None = None,
    score_threshold: float | None = None,
) -> Tensor:
    """The textbook loop: take the best box left, drop what it overlaps, repeat. Slow."""
    candidates = _candidates(boxes, scores, None, score_threshold, top_k).tolist()
    values = scores.tolist()
    order = sorted(candidates, key=lambda i: (-values[i], i))
    suppressed, keep = set(), []
    for position, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        if top_k is not None and len(keep) == top_k:
            break
        overlaps = (box_iou(boxes[i : i + 1], boxes)[0] > iou_threshold).tolist()
        suppressed.update(j for j in order[position + 1 :] if overlaps[j])
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms_reference(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float,
    *,
    top_k: int | None = None,
    score_threshold: float | None = None,
) -> Tensor:
    """One textbook NMS per label, then all kept boxes by decreasing score. Slow."""
    candidates = _candidates(boxes, scores, labels, score_threshold, top_k)
    kept = []
    for label in labels[candidates].unique().tolist():
        members = candidates[labels[candidates] == label]
        kept += members[nms_reference(boxes[members], scores[members], iou_threshold)].tolist()
    values = scores.tolist()
    kept.sort(key=lambda i: (-values[i], i))
    return torch.tensor(kept[:top_k], dtype=torch.int64, device=boxes.device)
