import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rcnn.errors import RcnnError
from rcnn.evaluation.voc_ap import average_precision, evaluate_voc, evaluate_voc_reference
from rcnn.structures import Annotation, Detections


def gt(boxes, labels, difficult=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels, dtype=torch.int64)
    difficult = torch.zeros(len(labels), dtype=torch.bool) if difficult is None else difficult
    return Annotation(boxes, labels, torch.as_tensor(difficult, dtype=torch.bool))


def dets(boxes, scores, labels):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Detections(boxes, torch.tensor(scores), torch.tensor(labels, dtype=torch.int64))


def square(i):
    """The i-th of a row of disjoint 10x10 boxes."""
    return [20.0 * i, 0.0, 20.0 * i + 10, 10.0]


FAR = [500.0, 500.0, 510.0, 510.0]  # overlaps nothing


def test_perfect_detections_give_ap_one_in_both_metrics():
    anns = [gt([square(0), square(1)], [1, 2]), gt([square(2)], [2])]
    found = [dets([square(0), square(1)], [0.9, 0.8], [1, 2]), dets([square(2)], [0.7], [2])]
    for use_07 in (False, True):
        result = evaluate_voc(found, anns, num_classes=2, use_07_metric=use_07)
        assert result.ap.tolist() == [1.0, 1.0]
        assert result.map == 1.0


def test_known_curve_all_point_and_eleven_point_by_hand():
    # 4 ground-truth boxes; 6 detections in score order: TP FP TP FP FP TP (one box missed)
    #   TP/FP cumulated   precision  recall
    #   1/0               1          0.25
    #   1/1               1/2        0.25
    #   2/1               2/3        0.50
    #   2/2               1/2        0.50
    #   2/3               2/5        0.50
    #   3/3               1/2        0.75
    # envelope: 1 up to recall 0.25, 2/3 up to 0.5, 1/2 up to 0.75, 0 after
    # all-point AP = 0.25 * 1 + 0.25 * 2/3 + 0.25 * 1/2 = 13/24
    # 11-point: r = 0, 0.1, 0.2 -> 1; r = 0.3, 0.4, 0.5 -> 2/3; r = 0.6, 0.7 -> 1/2;
    #           r = 0.8, 0.9, 1 -> 0;  AP = (3 + 2 + 1) / 11 = 6/11
    anns = [gt([square(i) for i in range(4)], [1, 1, 1, 1])]
    boxes = [square(0), FAR, square(1), FAR, FAR, square(2)]
    found = [dets(boxes, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1] * 6)]
    result = evaluate_voc(found, anns, num_classes=1)
    torch.testing.assert_close(
        result.precision[0],
        torch.tensor([1, 1 / 2, 2 / 3, 1 / 2, 2 / 5, 1 / 2], dtype=torch.float64),
    )
    torch.testing.assert_close(
        result.recall[0], torch.tensor([0.25, 0.25, 0.5, 0.5, 0.5, 0.75], dtype=torch.float64)
    )
    assert result.ap.item() == pytest.approx(13 / 24)
    assert result.with_metric(use_07_metric=True).ap.item() == pytest.approx(6 / 11)
    assert evaluate_voc(found, anns, 1, use_07_metric=True).ap.item() == pytest.approx(6 / 11)


def test_eleven_point_rewards_reaching_a_recall_level_all_point_does_not():
    # 2 boxes, one found at precision 1: all-point = 0.5 * 1; 11-point counts r = 0 .. 0.5
    recall = torch.tensor([0.5], dtype=torch.float64)
    precision = torch.tensor([1.0], dtype=torch.float64)
    assert average_precision(recall, precision) == pytest.approx(0.5)
    assert average_precision(recall, precision, use_07_metric=True) == pytest.approx(6 / 11)
    # recall exactly 0.3 reaches the 0.3 level (the levels are k / 10, not sums of 0.1)
    assert average_precision(
        torch.tensor([0.3], dtype=torch.float64), precision, use_07_metric=True
    ) == pytest.approx(4 / 11)


def test_envelope_uses_the_best_precision_at_higher_recall():
    # a dip then a recovery: the envelope lifts the dip to the later precision 0.8
    recall = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    precision = torch.tensor([1.0, 0.5, 0.6, 0.8], dtype=torch.float64)
    assert average_precision(recall, precision) == pytest.approx(0.2 * 1 + 0.6 * 0.8)


def test_difficult_boxes_are_neither_hits_nor_misses():
    anns = [gt([square(0), square(1)], [1, 1], difficult=[False, True])]
    # the highest-scoring detection sits on the difficult box: ignored, not a false positive
    found = [dets([square(1), square(0)], [0.9, 0.8], [1, 1])]
    result = evaluate_voc(found, anns, num_classes=1)
    assert result.num_gt.tolist() == [1]
    assert result.recall[0].tolist() == [1.0]  # one counted detection
    assert result.ap.item() == 1.0
    # a difficult box nobody finds does not lower recall either
    alone = evaluate_voc([dets([square(0)], [0.5], [1])], anns, num_classes=1)
    assert alone.ap.item() == 1.0


def test_second_detection_of_a_box_is_a_false_positive():
    # boxes A, B; detections A (0.9), A again (0.8), B (0.7): TP FP TP
    # precision 1, 1/2, 2/3 at recall 0.5, 0.5, 1: AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    anns = [gt([square(0), square(1)], [1, 1])]
    found = [dets([square(0), square(0), square(1)], [0.9, 0.8, 0.7], [1, 1, 1])]
    result = evaluate_voc(found, anns, num_classes=1)
    assert result.precision[0].tolist() == pytest.approx([1, 0.5, 2 / 3])
    assert result.ap.item() == pytest.approx(5 / 6)


def test_a_duplicate_does_not_fall_back_to_the_next_best_free_box():
    # A and B overlap; the second detection overlaps A (IoU 90/110) more than B (IoU 70/130
    # >= 0.5). The devkit takes the best box, A, already taken: a false positive; B stays missed.
    anns = [gt([[0, 0, 10, 10], [4, 0, 14, 10]], [1, 1])]
    found = [dets([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.8], [1, 1])]
    result = evaluate_voc(found, anns, num_classes=1)
    assert result.recall[0].tolist() == [0.5, 0.5]
    assert result.precision[0].tolist() == [1.0, 0.5]


def test_equal_overlaps_go_to_the_first_box_of_the_image():
    # the detection overlaps both boxes by 90/110; the first one listed decides
    found = [dets([[1, 0, 11, 10]], [0.9], [1])]
    plain_first = [gt([[0, 0, 10, 10], [2, 0, 12, 10]], [1, 1], difficult=[False, True])]
    difficult_first = [gt([[2, 0, 12, 10], [0, 0, 10, 10]], [1, 1], difficult=[True, False])]
    assert evaluate_voc(found, plain_first, 1).ap.item() == 1.0  # a true positive
    ignored = evaluate_voc(found, difficult_first, 1)  # on the difficult box: not counted
    assert ignored.recall[0].numel() == 0 and ignored.ap.item() == 0.0


def test_iou_threshold_is_inclusive_as_in_the_devkit():
    anns = [gt([[0, 0, 10, 10]], [1])]
    exactly_half = dets([[0, 0, 20, 10]], [0.9], [1])  # IoU 100 / 200
    just_below = dets([[0, 0, 20.5, 10]], [0.9], [1])
    assert evaluate_voc([exactly_half], anns, 1).ap.item() == 1.0
    assert evaluate_voc([just_below], anns, 1).ap.item() == 0.0
    assert evaluate_voc([just_below], anns, 1, iou_threshold=0.4).ap.item() == 1.0


def test_detections_in_images_without_ground_truth_are_false_positives():
    # the 0.9 detection is in an empty image: FP then TP, precision 0 then 1/2 at recall 1
    anns = [gt([square(0)], [1]), Annotation.empty()]
    found = [dets([square(0)], [0.5], [1]), dets([square(0)], [0.9], [1])]
    result = evaluate_voc(found, anns, num_classes=1)
    assert result.precision[0].tolist() == [0.0, 0.5]
    assert result.ap.item() == pytest.approx(0.5)


def test_detection_of_another_class_is_a_false_positive():
    anns = [gt([square(0)], [1])]
    result = evaluate_voc([dets([square(0)], [0.9], [2])], anns, num_classes=2)
    assert result.ap[0].item() == 0.0
    assert math.isnan(result.ap[1].item())


def test_class_without_ground_truth_is_undefined_and_left_out_of_the_mean():
    anns = [gt([square(0)], [1])]
    found = [dets([square(0), square(3)], [0.9, 0.8], [1, 2])]
    result = evaluate_voc(found, anns, num_classes=3)
    assert result.num_gt.tolist() == [1, 0, 0]
    assert result.ap[0].item() == 1.0
    assert result.ap[1:].isnan().all()
    assert result.map == 1.0


def test_no_detections_give_zero_and_no_ground_truth_gives_nan():
    anns = [gt([square(0)], [1]), Annotation.empty()]
    nothing = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    for use_07 in (False, True):
        result = evaluate_voc([nothing, nothing], anns, 1, use_07_metric=use_07)
        assert result.ap.tolist() == [0.0]
        assert result.map == 0.0
    assert math.isnan(evaluate_voc([nothing], [Annotation.empty()], 1).map)


def test_equal_scores_keep_input_order():
    anns = [gt([square(0)], [1])]
    fp_first = [dets([FAR, square(0)], [0.5, 0.5], [1, 1])]
    tp_first = [dets([square(0), FAR], [0.5, 0.5], [1, 1])]
    assert evaluate_voc(fp_first, anns, 1).ap.item() == pytest.approx(0.5)
    assert evaluate_voc(tp_first, anns, 1).ap.item() == 1.0


def test_bad_inputs_are_reported():
    anns = [gt([square(0)], [1])]
    with pytest.raises(RcnnError, match="one Detections per image"):
        evaluate_voc([], anns, 1)
    with pytest.raises(RcnnError, match=r"image 0: detection labels must be in \[1, 1\]"):
        evaluate_voc([dets([square(0)], [0.9], [2])], anns, 1)
    with pytest.raises(RcnnError, match="no annotated images"):
        evaluate_voc([], [], 1)
    with pytest.raises(RcnnError, match="iou_threshold"):
        evaluate_voc([dets([square(0)], [0.9], [1])], anns, 1, iou_threshold=0.0)


box_sizes = st.tuples(
    st.integers(0, 60), st.integers(0, 60), st.integers(9, 30), st.integers(9, 30)
)
jitters = st.tuples(*[st.integers(-4, 4)] * 4)


@st.composite
def scenes(draw):
    """Random images whose detections are jittered copies of their boxes plus strays, with
    scores on a coarse grid so that ties occur."""
    num_classes = draw(st.integers(1, 3))
    anns, found = [], []
    for _ in range(draw(st.integers(1, 4))):
        g = draw(st.integers(0, 4))
        boxes = [
            [x, y, x + w, y + h] for x, y, w, h in draw(st.lists(box_sizes, min_size=g, max_size=g))
        ]
        labels = draw(st.lists(st.integers(1, num_classes), min_size=g, max_size=g))
        difficult = draw(st.lists(st.booleans(), min_size=g, max_size=g))
        # a copy of each box, each corner moved by up to 4 pixels (boxes stay >= 1 wide)
        moved = [[c + j for c, j in zip(b, draw(jitters), strict=True)] for b in boxes]
        strays = draw(st.integers(0, 3))
        moved += [[10.0 * s, 5.0, 10.0 * s + 20, 25.0] for s in range(strays)]
        labels_found = labels + draw(
            st.lists(st.integers(1, num_classes), min_size=strays, max_size=strays)
        )
        scores = draw(st.lists(st.integers(0, 4), min_size=len(moved), max_size=len(moved)))
        anns.append(gt(boxes, labels, difficult))
        found.append(dets(moved, [s / 4 for s in scores], labels_found))
    return found, anns, num_classes


@settings(max_examples=60, deadline=None)
@given(scenes())
def test_vectorised_matching_equals_the_devkit_loop(scene):
    found, anns, num_classes = scene
    fast = evaluate_voc(found, anns, num_classes)
    slow = evaluate_voc_reference(found, anns, num_classes)
    torch.testing.assert_close(fast.ap, slow.ap, equal_nan=True)
    assert fast.num_gt.tolist() == slow.num_gt.tolist()
    for a, b in zip(fast.precision + fast.recall, slow.precision + slow.recall, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
