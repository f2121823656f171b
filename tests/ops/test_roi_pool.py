import importlib

import pytest
import torch

from rcnn.ops import project_rois, roi_pool
from rcnn.ops._pooling import round_half_away

roi_pool_reference = importlib.import_module("rcnn.ops.roi_pool").roi_pool_reference


def test_projection_of_the_seeds_example():
    # an RoI centred at (340, 450), 128 wide and 320 high, on a 1/16 map
    box = torch.tensor([340 - 64, 450 - 160, 340 + 64, 450 + 160], dtype=torch.float32)
    x1, y1, x2, y2 = project_rois(box, 1 / 16).tolist()
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == (21, 28)
    assert (y2 - y1, x2 - x1) == (20, 8)


def test_round_half_away_from_zero():
    x = torch.tensor([2.5, -2.5, 0.5, -0.5, 1.4999, 0.49999997, 3.0])
    assert round_half_away(x).tolist() == [3, -3, 1, -1, 1, 0, 3]


def test_hand_computed_bins_and_empty_bins():
    features = torch.arange(16.0).view(1, 1, 4, 4)
    whole = torch.tensor([[0.0, 0, 0, 3, 3]])
    assert roi_pool(features, whole, 2, 1.0)[0, 0].tolist() == [[5, 7], [13, 15]]
    # 4 cells into 3 bins: [0, 2), [1, 3), [2, 4): neighbouring bins share a cell
    assert roi_pool(features, whole, 3, 1.0)[0, 0].tolist() == [
        [5, 6, 7],
        [9, 10, 11],
        [13, 14, 15],
    ]
    # cells 2..5 of a 4-cell map: the second half of the window is off the map -> 0
    corner = torch.tensor([[0.0, 2, 2, 5, 5]])
    assert roi_pool(features, corner, 2, 1.0)[0, 0].tolist() == [[15, 0], [0, 0]]
    # a window far off the map pools nothing
    assert roi_pool(features, torch.tensor([[0.0, 50, 50, 60, 60]]), 2, 1.0).abs().sum() == 0


def test_empty_bins_pass_no_gradient():
    features = torch.arange(16.0).view(1, 1, 4, 4).requires_grad_()
    rois = torch.tensor([[0.0, 2, 2, 5, 5], [0.0, 50, 50, 60, 60]])  # 3 of 4 bins, all bins off
    roi_pool(features, rois, 2, 1.0).backward(torch.full((2, 1, 2, 2), 2.0))
    expected = torch.zeros(16)
    expected[15] = 2.0  # the one bin on the map
    assert features.grad.flatten().tolist() == expected.tolist()


@pytest.mark.parametrize("output_size", [1, 2, (3, 5), 7])
@pytest.mark.parametrize("scale", [1 / 16, 1 / 8, 0.3])
def test_matches_reference(output_size, scale, random_rois):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 11, 13, generator=g, dtype=torch.float64)
    rois = random_rois(25, 2, g)
    expected = roi_pool_reference(features, rois, output_size, scale)
    assert torch.equal(roi_pool(features, rois, output_size, scale), expected)


def test_gradient_goes_to_the_first_maximum_like_the_reference(random_rois):
    g = torch.Generator().manual_seed(1)
    features = torch.randint(0, 3, (2, 4, 9, 10), generator=g).double()  # ties everywhere
    rois = random_rois(20, 2, g, size=150.0)
    grad = torch.randn(20, 4, 3, 3, generator=g, dtype=torch.float64)
    fast = features.clone().requires_grad_()
    roi_pool(fast, rois, 3, 1 / 16).backward(grad)
    slow = features.clone().requires_grad_()
    roi_pool_reference(slow, rois, 3, 1 / 16).backward(grad)
    # a different argmax would be off by a whole gradient value, not by rounding
    torch.testing.assert_close(fast.grad, slow.grad, rtol=0, atol=1e-12)


def test_gradcheck(random_rois):
    g = torch.Generator().manual_seed(2)
    features = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(6, 2, g, size=100.0)
    assert torch.autograd.gradcheck(
        lambda f: roi_pool(f, rois, (2, 3), 1 / 16), (features,), fast_mode=True
    )


def test_empty_dtype_and_bad_inputs():
    features = torch.randn(1, 3, 5, 5)
    assert roi_pool(features, torch.zeros(0, 5), 7, 1.0).shape == (0, 3, 7, 7)
    rois = torch.tensor([[0.0, 0, 0, 4, 4]])
    for dtype in (torch.float32, torch.float64):
        assert roi_pool(features.to(dtype), rois.to(dtype), 2, 1.0).dtype == dtype
    with pytest.raises(ValueError, match=r"\(R, 5\)"):
        roi_pool(features, torch.zeros(2, 4), 2, 1.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        roi_pool(features[0], rois, 2, 1.0)
    with pytest.raises(ValueError, match="batch_index"):
        roi_pool(features, torch.tensor([[1.0, 0, 0, 4, 4]]), 2, 1.0)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(features, rois, 0, 1.0)
