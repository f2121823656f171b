import importlib

import pytest
import torch

from rcnn.ops import spp

spp_module = importlib.import_module("rcnn.ops.spp")


@pytest.mark.parametrize(("levels", "bins"), [((4, 2, 1), 21), ((6, 3, 2, 1), 50)])
@pytest.mark.parametrize("size", [(13, 13), (10, 17), (3, 2)])
def test_fixed_length_whatever_the_map_size(levels, bins, size):
    features = torch.randn(2, 5, *size)
    assert spp(features, None, levels).shape == (2, 5 * bins)
    rois = torch.tensor([[0.0, 0, 0, 100, 60], [1.0, 30, 10, 31, 12]])
    assert spp(features, rois, levels).shape == (2, 5 * bins)


def test_hand_computed_levels():
    features = torch.arange(16.0).view(1, 1, 4, 4)
    # level 2: window 2, stride 2; level 1: the whole map; concatenated level by level
    assert spp(features, None, (2, 1)).tolist() == [[5, 7, 13, 15, 15]]
    # level 3 of 4 cells: window 2, stride 1 -> bins [0, 2), [1, 3), [2, 4)
    assert spp(features, None, (3,)).view(3, 3).tolist() == [[5, 6, 7], [9, 10, 11], [13, 14, 15]]


def test_the_papers_caveat_leaves_the_far_cells_out():
    # a = 7, n = 4: window 2, stride 1: the bins end at cell 5, cells 5 and 6 are never pooled
    features = torch.randn(1, 2, 7, 7)
    changed = features.clone()
    changed[..., 5:] = 100.0
    changed[..., 5:, :] = 100.0
    assert torch.equal(spp(features, None, (4,)), spp(changed, None, (4,)))


def test_window_smaller_than_the_level_repeats_cells():
    features = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    level = spp(features, None, (4,)).view(4, 4)
    assert level.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_sppnet_window_projection():
    boxes = torch.tensor([[0.0, 0, 64, 64], [100, 100, 110, 110], [-50, 500, 900, 900]])
    windows = spp_module.sppnet_window(boxes, 1 / 16, (38, 50))
    # left/top floor(x/16) + 1, right/bottom ceil(x/16) - 1, clipped to the 38 x 50 map;
    # the 10-pixel box comes out inside-out and becomes its centre cell, round(105/16) = 7
    assert windows.tolist() == [[1, 1, 3, 3], [7, 7, 7, 7], [0, 32, 49, 37]]


@pytest.mark.parametrize("levels", [(4, 2, 1), (6, 3, 2, 1), (5,)])
def test_matches_reference(levels, random_rois):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 11, 13, generator=g, dtype=torch.float64)
    rois = random_rois(25, 2, g)
    expected = spp_module.spp_reference(features, rois, levels, 1 / 16)
    assert torch.equal(spp(features, rois, levels, 1 / 16), expected)
    assert torch.equal(
        spp(features, None, levels), spp_module.spp_reference(features, None, levels)
    )


def test_gradcheck(random_rois):
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(5, 2, g, size=100.0)
    assert torch.autograd.gradcheck(lambda f: spp(f, rois, (3, 1)), (features,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda f: spp(f, None, (2, 1)), (features,), fast_mode=True)


def test_empty_dtype_and_bad_inputs():
    features = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    assert spp(features, torch.zeros(0, 5, dtype=torch.float64)).shape == (0, 3 * 21)
    assert spp(features, None).dtype == torch.float64
    with pytest.raises(ValueError, match="levels"):
        spp(features, None, (2, 0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        spp(features[0], None)
