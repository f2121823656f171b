import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rcnn.errors import RcnnError
from rcnn.evaluation.recall import IOU_THRESHOLDS, evaluate_proposals
from rcnn.structures import Annotation


def annotation(boxes, labels, difficult=None):
    difficult = [False] * len(labels) if difficult is None else difficult
    return Annotation(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(difficult, dtype=torch.bool),
    )


# Image 0: box A (class 1), box B (class 2), a difficult box nobody covers (left out).
# Proposals in rank order: IoU 0.5 with A, IoU 1 with B, IoU 0.8 with A.
# Image 1: box C (class 1), no proposals at all: best overlap 0.
ANNOTATIONS = [
    annotation(
        [[0, 0, 10, 10], [20, 20, 40, 40], [60, 60, 70, 70]], [1, 2, 1], [False, False, True]
    ),
    annotation([[0, 0, 10, 10]], [1]),
]
PROPOSALS = [
    torch.tensor([[0.0, 0, 10, 5], [20, 20, 40, 40], [0, 0, 10, 8]]),
    torch.zeros(0, 4),
]


def test_recall_average_recall_and_mabo_by_hand():
    result = evaluate_proposals(PROPOSALS, ANNOTATIONS, num_classes=3, counts=(1, 2))
    # best overlaps with all proposals: A 0.8, B 1.0, C 0
    assert result.num_gt == 3
    assert result.recall50 == pytest.approx(2 / 3)
    assert result.recall70 == pytest.approx(2 / 3)
    # A counts at 0.50 .. 0.80 (7 thresholds), B at all 10, C at none:
    # AR = (7 * 2/3 + 3 * 1/3) / 10
    assert result.average_recall == pytest.approx((7 * 2 / 3 + 3 / 3) / 10)
    # ABO: class 1 (A, C) = (0.8 + 0) / 2, class 2 (B) = 1, class 3 has no box
    torch.testing.assert_close(result.abo[:2], torch.tensor([0.4, 1.0], dtype=torch.float64))
    assert math.isnan(result.abo[2].item())
    assert result.mabo == pytest.approx(0.7)
    assert result.boxes_per_image == 1.5


def test_recall_versus_number_of_proposals():
    result = evaluate_proposals(PROPOSALS, ANNOTATIONS, num_classes=2, counts=(1, 2, 1000))
    # 1000 >= every image's count: it is "all", which comes last (3 = the most proposals)
    assert result.counts == (1, 2, 3)
    at_half = result.recall[:, IOU_THRESHOLDS.index(0.5)]
    at_07 = result.recall[:, IOU_THRESHOLDS.index(0.7)]
    # top 1: A at 0.5; top 2: A at 0.5 and B; all 3: A at 0.8 and B
    torch.testing.assert_close(at_half, torch.tensor([1 / 3, 2 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(at_07, torch.tensor([0, 1 / 3, 2 / 3], dtype=torch.float64))


def test_no_proposals_recall_nothing_and_no_ground_truth_is_undefined():
    nothing = [torch.zeros(0, 4), torch.zeros(0, 4)]
    result = evaluate_proposals(nothing, ANNOTATIONS, num_classes=2)
    assert result.recall50 == 0.0 and result.mabo == 0.0
    empty = evaluate_proposals(PROPOSALS[:1], [Annotation.empty()], num_classes=2)
    assert empty.num_gt == 0
    assert math.isnan(empty.recall50) and math.isnan(empty.mabo)


def test_bad_inputs_are_reported():
    with pytest.raises(RcnnError, match="proposals for 1 images and annotations for 2"):
        evaluate_proposals(PROPOSALS[:1], ANNOTATIONS, num_classes=2)
    with pytest.raises(RcnnError, match=r"labels must be in \[1, 1\]"):
        evaluate_proposals(PROPOSALS, ANNOTATIONS, num_classes=1)
    with pytest.raises(RcnnError, match="counts must be >= 1"):
        evaluate_proposals(PROPOSALS, ANNOTATIONS, num_classes=2, counts=(0, 10))


boxes = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 40), st.integers(1, 40)),
    max_size=8,
).map(
    lambda rows: torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows]).reshape(-1, 4).float()
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(boxes, boxes), min_size=1, max_size=3))
def test_recall_grows_with_proposals_and_falls_with_the_threshold(images):
    anns = [annotation(gt.tolist(), [1] * len(gt)) for gt, _ in images]
    result = evaluate_proposals([p for _, p in images], anns, num_classes=1, counts=(1, 2, 4))
    if result.num_gt == 0:
        return
    assert (result.recall[1:] >= result.recall[:-1]).all()  # more proposals
    assert (result.recall[:, 1:] <= result.recall[:, :-1]).all()  # stricter IoU
    assert 0.0 <= result.average_recall <= result.recall50 + 1e-12  # rounding of the mean
    assert result.recall50 <= 1.0
    assert 0.0 <= result.mabo <= 1.0
