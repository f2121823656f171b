import math

import torch

from rcnn.losses import fast_rcnn_loss, rpn_loss, smooth_l1


def test_smooth_l1_pieces():
    x = torch.tensor([0.05, -0.5, 2.0])
    # sigma 1: 0.5 x^2 below 1, |x| - 0.5 above
    torch.testing.assert_close(
        smooth_l1(x, torch.zeros(3)), torch.tensor(0.5 * 0.0025 + 0.125 + 1.5)
    )
    # sigma 3: quadratic only below 1/9
    expected = 0.5 * 9 * 0.0025 + (0.5 - 0.5 / 9) + (2.0 - 0.5 / 9)
    torch.testing.assert_close(smooth_l1(x, torch.zeros(3), sigma=3.0), torch.tensor(expected))


def test_smooth_l1_is_continuous_at_the_switch():
    beta = 1 / 9
    below = smooth_l1(torch.tensor([beta - 1e-7]), torch.zeros(1), sigma=3.0)
    above = smooth_l1(torch.tensor([beta + 1e-7]), torch.zeros(1), sigma=3.0)
    assert abs(below.item() - above.item()) < 1e-6


def test_rpn_loss_normalisers():
    objectness = torch.zeros(6)  # p = 0.5 everywhere: log loss ln 2 per sampled anchor
    labels = torch.tensor([1, 0, 0, -1, -1, 1])
    deltas = torch.zeros(6, 4)
    targets = torch.zeros(6, 4)
    targets[0, 0] = 1.0  # |x| = 1 >= 1/9: 1 - 1/18
    losses = rpn_loss(objectness, deltas, labels, targets, num_locations=40)
    torch.testing.assert_close(losses["rpn_cls"], torch.tensor(math.log(2.0)))
    torch.testing.assert_close(losses["rpn_box"], torch.tensor(10.0 * (1 - 1 / 18) / 40))


def test_fast_rcnn_loss_uses_true_class_deltas_only():
    logits = torch.zeros(3, 3)  # K = 2 classes + background
    labels = torch.tensor([0, 2, 1])
    deltas = torch.zeros(3, 12)
    deltas[1, 8] = 0.5  # the true class (2) of RoI 1: counts
    deltas[1, 4] = 9.0  # another class of RoI 1: ignored
    deltas[0, 0] = 9.0  # a background RoI: ignored
    losses = fast_rcnn_loss(logits, deltas, labels, torch.zeros(3, 4))
    torch.testing.assert_close(losses["fast_rcnn_cls"], torch.tensor(math.log(3.0)))
    torch.testing.assert_close(losses["fast_rcnn_box"], torch.tensor(0.5 * 0.25 / 3))


def test_losses_without_positives_are_finite_and_differentiable():
    objectness = torch.zeros(4, requires_grad=True)
    losses = rpn_loss(
        objectness, torch.zeros(4, 4), torch.tensor([0, 0, -1, 0]), torch.zeros(4, 4), 10
    )
    assert losses["rpn_box"].item() == 0.0
    sum(losses.values()).backward()
    assert torch.isfinite(objectness.grad).all()
    logits = torch.zeros(0, 3, requires_grad=True)
    empty = fast_rcnn_loss(
        logits, torch.zeros(0, 12), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4)
    )
    assert all(torch.isfinite(v) for v in empty.values())
