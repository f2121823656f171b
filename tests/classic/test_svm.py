import pytest
import torch

from rcnn.classic.svm import (
    LinearSVMs,
    SVMConfig,
    linear_scores,
    mine_hard_negatives,
    negative_candidates,
    train_svm,
)

# A large C and a large bias feature: the squared-hinge SVM tends to the hard-margin one.
HARD_MARGIN = SVMConfig(C=100.0, bias_multiplier=100.0)


def separable(seed: int, negatives: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """2-d points: positives at x >= 1, negatives at x <= -1, each side with points on its
    line x = +-1, so the widest margin is the line x = 0: w = (1, 0), b = 0."""
    g = torch.Generator().manual_seed(seed)
    on_margin = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, -2.0]])
    positives = torch.cat(
        (on_margin, torch.rand(60, 2, generator=g) * 3 + torch.tensor([1.2, -1.5]))
    )
    far = -(torch.rand(negatives, 2, generator=g) * 4 + torch.tensor([1.2, -2.0]))
    return positives, torch.cat((-on_margin, far))


def test_svm_finds_the_widest_margin_separator():
    positives, negatives = separable(0)
    weight, bias = train_svm(positives, negatives, HARD_MARGIN)
    assert torch.allclose(weight, torch.tensor([1.0, 0.0]), atol=2e-3)
    assert abs(bias.item()) < 2e-3
    assert (positives @ weight + bias >= 0.99).all() and (negatives @ weight + bias <= -0.99).all()


def test_svm_regularisation_and_positive_weight_move_the_solution_as_the_objective_says():
    positives, negatives = separable(1)
    weak = SVMConfig(C=0.001, bias_multiplier=100.0)
    weight, _ = train_svm(positives, negatives, weak)
    assert weight.norm() < 0.9  # a small C buys a narrower |w|, violating the margin
    heavier = train_svm(positives, negatives, SVMConfig(C=0.001, positive_weight=10.0))
    lighter = train_svm(positives, negatives, SVMConfig(C=0.001, positive_weight=1.0))
    # weighting the positives' loss more raises their scores
    assert (positives @ heavier[0] + heavier[1]).mean() > (
        positives @ lighter[0] + lighter[1]
    ).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_adds_exactly_the_margin_violators_and_ends_at_the_svm_of_all_negatives(seed):
    positives, negatives = separable(seed)
    features = torch.cat((torch.randn(50, 2) + 5, negatives))  # rows 0-49 are not negatives
    rows = torch.arange(50, len(features))
    config = SVMConfig(C=100.0, bias_multiplier=100.0, initial_negatives=10)
    g = torch.Generator().manual_seed(seed)
    mined = mine_hard_negatives(positives, features, rows, config, generator=g)
    used = set(mined.initial.tolist())
    assert len(used) == 10 and used <= set(rows.tolist())
    for round_ in mined.rounds:
        scores = linear_scores(features, round_.weight, round_.bias)
        expected = {r for r in rows.tolist() if scores[r] > -1 and r not in used}
        assert set(round_.added.tolist()) == expected
        used |= expected
    assert mined.converged and mined.rounds[-1].added.numel() == 0 and len(mined.rounds) > 1
    full_weight, full_bias = train_svm(positives, negatives, config)
    assert torch.allclose(mined.weight, full_weight, atol=2e-3)
    assert torch.allclose(mined.bias, full_bias, atol=2e-3)
    assert mined.used.numel() < len(rows) / 2  # most easy negatives were never trained on


def test_mining_stops_at_the_round_limit():
    positives, negatives = separable(0)
    config = SVMConfig(C=100.0, bias_multiplier=100.0, initial_negatives=1, max_rounds=1)
    rows = torch.arange(len(negatives))
    mined = mine_hard_negatives(positives, negatives, rows, config)
    assert len(mined.rounds) == 1 and mined.rounds[0].added.numel() > 0 and not mined.converged
    assert mined.used.numel() == 1 + mined.rounds[0].added.numel()


def test_negatives_are_the_regions_below_the_iou_threshold_less_overlapping_ones():
    class_iou = torch.tensor([0.0, 0.29, 0.3, 0.9, 0.1, 0.0])
    boxes = torch.tensor(
        [
            [0, 0, 10, 10],
            [0, 0, 10, 10.5],
            [0, 0, 10, 10],
            [5, 5, 9, 9],
            [0, 0, 10, 9.9],
            [30, 30, 40, 40],
        ]
    )
    image_index = torch.tensor([0, 0, 0, 0, 1, 1])
    plain = negative_candidates(class_iou, boxes, image_index, SVMConfig())
    assert plain.tolist() == [0, 1, 4, 5]
    sppnet = negative_candidates(class_iou, boxes, image_index, SVMConfig(negative_nms=0.7))
    assert sppnet.tolist() == [0, 4, 5]  # row 1 overlaps row 0 of its image; row 4 is elsewhere


def test_fitted_svms_score_unscaled_features_whatever_their_scale():
    """The features are normalised to a mean norm of 20 before training, so multiplying them
    all by a constant changes nothing in the scores."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * 20 + [2] * 20 + [0] * 400)
    features = torch.relu(torch.randn(len(labels), 16, generator=g))
    features[labels == 1, 0] += 4.0
    features[labels == 2, 1] += 4.0
    class_iou = torch.stack((labels == 1, labels == 2), dim=1).float()
    boxes = torch.rand(len(labels), 4, generator=g).sort(dim=1).values * 100
    image_index = torch.zeros(len(labels), dtype=torch.int64)
    scores = []
    for scale in (1.0, 1000.0):
        svms = LinearSVMs(2, 16)
        summary = svms.fit(features * scale, labels, class_iou, boxes, image_index)
        assert svms.fitted and [s["positives"] for s in summary] == [20, 20]
        scores.append(svms(features * scale))
    assert torch.allclose(scores[0], scores[1], atol=1e-3)
    assert (scores[0][labels == 1, 0] > scores[0][labels == 0, 0].max()).float().mean() > 0.9
    assert (scores[0][labels == 2, 1] > scores[0][labels == 0, 1].max()).float().mean() > 0.9


def test_a_class_without_positives_or_negatives_still_trains():
    weight, bias = train_svm(torch.zeros(0, 3), torch.rand(5, 3))
    assert (torch.rand(5, 3) @ weight + bias < 0).all()
    weight, bias = train_svm(torch.zeros(0, 3), torch.zeros(0, 3))
    assert weight.shape == (3,) and weight.abs().sum() == 0 and bias == 0
