import torch

from rcnn.matching import IGNORE, NEGATIVE, match_boxes, matched_labels, sample_balanced


def test_match_boxes_thresholds():
    # 2 ground-truth boxes x 5 boxes
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.0, 0.75], [0.1, 0.6, 0.31, 0.0, 0.8]])
    matches = match_boxes(iou, 0.7, (0.0, 0.3))
    assert matches.tolist() == [0, IGNORE, IGNORE, NEGATIVE, 1]


def test_negative_range_lower_bound_ignores_easy_background():
    iou = torch.tensor([[0.55, 0.3, 0.05, 0.5]])
    # Fast R-CNN: foreground >= 0.5, background [0.1, 0.5), below 0.1 ignored
    assert match_boxes(iou, 0.5, (0.1, 0.5)).tolist() == [0, NEGATIVE, IGNORE, 0]


def test_low_quality_matches_give_each_ground_truth_its_best_boxes():
    iou = torch.tensor([[0.4, 0.2, 0.4, 0.0], [0.1, 0.65, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    matches = match_boxes(iou, 0.7, (0.0, 0.3), allow_low_quality=True)
    # gt 0's best (0.4) is shared by boxes 0 and 2 (ties kept); box 2 keeps its own best gt (1)
    # gt 1's best is box 1; gt 2 overlaps nothing and claims no box
    assert matches.tolist() == [0, 1, 1, NEGATIVE]


def test_no_ground_truth_means_all_background():
    for negative_range in [(0.0, 0.3), (0.1, 0.5)]:
        assert match_boxes(torch.zeros(0, 4), 0.5, negative_range).tolist() == [NEGATIVE] * 4


def test_sample_balanced_fractions_and_caps():
    labels = torch.tensor([1] * 10 + [0] * 500 + [-1] * 50)
    g = torch.Generator().manual_seed(0)
    pos, neg = sample_balanced(labels, 256, 0.5, g)
    assert pos.numel() == 10 and neg.numel() == 246  # too few positives: negatives fill up
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(neg.tolist())) == 246
    labels = torch.tensor([3] * 300 + [0] * 300)
    pos, neg = sample_balanced(labels, 128, 0.25, g)
    assert pos.numel() == 32 and neg.numel() == 96  # R-CNN's 32 positives / 96 background


def test_sample_balanced_is_seeded_and_empty_safe():
    labels = torch.tensor([1] * 50 + [0] * 50)
    a = sample_balanced(labels, 20, 0.5, torch.Generator().manual_seed(3))
    b = sample_balanced(labels, 20, 0.5, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    pos, neg = sample_balanced(torch.zeros(0, dtype=torch.int64), 10, 0.5)
    assert pos.numel() == 0 and neg.numel() == 0


def test_matched_labels():
    matches = torch.tensor([1, NEGATIVE, IGNORE, 0])
    assert matched_labels(matches, torch.tensor([7, 3])).tolist() == [3, 0, -1, 7]
    assert matched_labels(torch.tensor([NEGATIVE]), torch.zeros(0, dtype=torch.int64)).tolist() == [
        0
    ]
