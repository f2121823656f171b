import pytest
import torch

from rcnn.box_coder import BoxCoder
from rcnn.classic.bbox_regressor import BoxRegressionConfig, BoxRegressors, ridge_regression


def linear_data(examples: int, features: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(examples, features, generator=g) * 3 + 1
    weight = torch.randn(features, 4, generator=g)
    bias = torch.randn(4, generator=g)
    return x, weight, bias


@pytest.mark.parametrize("examples", [200, 6])  # the primal form, then the dual (M < F)
def test_ridge_recovers_a_known_linear_map(examples):
    x, weight, bias = linear_data(examples, 5 if examples > 5 else 12)
    found_weight, found_bias = ridge_regression(x, x @ weight + bias, 1e-9)
    if examples > x.shape[1]:  # determined: the map itself
        assert torch.allclose(found_weight, weight, atol=1e-4)
        assert torch.allclose(found_bias, bias, atol=1e-4)
    # in every case it fits the examples exactly
    assert torch.allclose(x @ found_weight + found_bias, x @ weight + bias, atol=1e-3)


def test_lambda_shrinks_the_map_as_the_closed_form_says():
    """With orthogonal centred features of squared norm s, (X^T X + lambda I)^-1 X^T Y is
    s / (s + lambda) times the least-squares map: lambda = s halves it."""
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(300, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(raw - raw.mean(dim=0))  # orthonormal, centred columns
    s = 400.0
    x = (q * s**0.5 + 7.0).float()  # shifted: the intercept takes the shift, unregularised
    _, weight, bias = linear_data(300, 6)
    y = x @ weight + bias
    exact, exact_bias = ridge_regression(x, y, 1e-9)
    for lam in (100.0, 400.0, 1000.0, 1e5):
        shrunk, _ = ridge_regression(x, y, lam)
        assert torch.allclose(shrunk, exact * s / (s + lam), atol=1e-4)
    assert torch.allclose(exact_bias, bias, atol=1e-3)


def test_primal_and_dual_forms_agree():
    x, weight, bias = linear_data(40, 60)
    y = x @ weight + bias + torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    dual = ridge_regression(x, y, 1000.0)
    # the primal system, written out, on the same centred data
    xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    primal = torch.linalg.solve(
        xc.t() @ xc + 1000.0 * torch.eye(60, dtype=torch.float64), xc.t() @ yc
    )
    assert torch.allclose(dual[0], primal.float(), atol=1e-5)


def test_regressors_move_boxes_onto_their_ground_truth_and_leave_other_classes_alone():
    """Examples whose features hold their targets linearly: the fitted map recovers them."""
    g = torch.Generator().manual_seed(0)
    coder = BoxCoder()
    boxes = torch.rand(80, 2, generator=g) * 100
    boxes = torch.cat((boxes, boxes + 20 + torch.rand(80, 2, generator=g) * 40), dim=1)
    goals = torch.randn(80, 4, generator=g) * torch.tensor([0.1, 0.1, 0.2, 0.2])
    targets = coder.decode(goals, boxes)
    mixing = torch.randn(4, 30, generator=g)
    features = goals @ mixing + 0.5  # (80, 30)
    labels = torch.tensor([1, 3] * 40)  # class 2 has no examples
    regressors = BoxRegressors(3, 30)
    unfitted = regressors(features, boxes)
    assert torch.equal(unfitted, boxes[:, None, :].expand(80, 3, 4))
    summary = regressors.fit(
        features, boxes, targets, labels, BoxRegressionConfig(ridge_lambda=1e-6)
    )
    assert [s["examples"] for s in summary] == [40, 0, 40]
    moved = regressors(features, boxes)  # (80, 3, 4)
    rows = torch.arange(80)
    assert torch.allclose(moved[rows, labels - 1], targets, atol=1e-2)
    assert torch.allclose(moved[:, 1], boxes, atol=1e-4)  # no examples: the identity


def test_lambda_is_measured_on_features_scaled_to_a_mean_norm_of_20():
    """R-CNN's lambda = 1000 acts on features of mean norm 20: scaling every feature by a
    constant leaves the fitted boxes unchanged."""
    x, weight, bias = linear_data(50, 8)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0]]).expand(50, 4)
    targets = BoxCoder().decode((x @ weight + bias) * 0.01, boxes)
    labels = torch.ones(50, dtype=torch.int64)
    found = []
    for scale in (1.0, 300.0):
        regressors = BoxRegressors(1, 8)
        regressors.fit(x * scale, boxes, targets, labels)
        found.append(regressors(x * scale, boxes))
    assert torch.allclose(found[0], found[1], atol=1e-3)
