import importlib

import pytest
import torch

from rcnn.ops import roi_align
from tests.ops.kernels import on_both_paths

roi_align_module = importlib.import_module("rcnn.ops.roi_align")
roi_align_reference = roi_align_module.roi_align_reference


path = on_both_paths(roi_align_module, "_native_forward", "RoIAlign")


def test_the_c_kernel_is_built_and_serves_calls_without_box_gradients(path):
    if path == "torch":
        pytest.skip("a test of the C kernel")
    from rcnn.ops import _roi_align

    assert roi_align_module._native_forward is _roi_align.roi_align_forward
    features = torch.randn(1, 2, 5, 5, requires_grad=True)
    rois = torch.tensor([[0.0, 0, 0, 40, 40]])
    assert roi_align_module._native_applies(features, rois)  # the map's gradient: in C
    assert not roi_align_module._native_applies(features, rois.requires_grad_())  # boxes': not
    with torch.no_grad():
        assert roi_align_module._native_applies(features, rois)
    assert not roi_align_module._native_applies(features.double(), rois.detach().double())
    assert roi_align_module._native_applies(features.bfloat16(), rois.detach())


def test_a_bfloat16_map_is_pooled_in_float32_and_keeps_its_type(path, random_rois):
    # under bfloat16 autocast the map is a convolution's bfloat16 output; the C kernel reads
    # it as float32 and hands back bfloat16 values and a bfloat16 gradient, as PyTorch's does
    if path == "torch":
        pytest.skip("compares the two paths itself")
    g = torch.Generator().manual_seed(7)
    features = torch.randn(2, 16, 9, 12, generator=g).to(torch.bfloat16).requires_grad_()
    rois = random_rois(20, 2, g, size=200.0, dtype=torch.float32)
    grad_out = torch.randn(20, 16, 7, 7, generator=g).to(torch.bfloat16)
    out = roi_align(features, rois, 7, 1 / 16, 2)
    (grad,) = torch.autograd.grad(out, features, grad_out)
    assert out.dtype == grad.dtype == torch.bfloat16
    exact = roi_align(features.detach().float(), rois, 7, 1 / 16, 2)  # the same values in fp32
    torch.testing.assert_close(out.float(), exact.to(torch.bfloat16).float())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(roi_align_module, "_native_forward", None)
        expected = roi_align(features, rois, 7, 1 / 16, 2)
        (expected_grad,) = torch.autograd.grad(expected, features, grad_out)
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("channels", [1, 7, 32, 33])
@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(2, False), (-1, True), (0, False)])
def test_the_two_paths_agree(path, channels, sampling_ratio, aligned, random_rois):
    if path == "torch":
        pytest.skip("compares the two paths itself")
    g = torch.Generator().manual_seed(channels)
    features = torch.randn(3, channels, 13, 17, generator=g)
    rois = random_rois(40, 3, g, size=250.0, dtype=torch.float32)
    rois[0, 1:] = torch.tensor([80.0, 60.0, 70.0, 50.0])  # inside-out: no samples when aligned
    args = (features, rois, 7, 1 / 16, sampling_ratio, aligned)
    native = roi_align(*args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(roi_align_module, "_native_forward", None)
        torch.testing.assert_close(native, roi_align(*args), rtol=1e-5, atol=1e-5)
    # a channels-last map (the demo's memory format) gives the same numbers
    channels_last = features.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(roi_align(channels_last, *args[1:]), native)


@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(2, False), (-1, True)])
def test_the_two_paths_agree_on_the_maps_gradient(path, sampling_ratio, aligned, random_rois):
    # the C backward is the transpose of its forward; PyTorch's comes from autograd through the
    # taps' weighted sums. Border samples (one cell read twice) and RoIs off the map included.
    if path == "torch":
        pytest.skip("compares the two paths itself")
    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 33, 9, 12, generator=g, requires_grad=True)
    rois = random_rois(30, 2, g, size=200.0, dtype=torch.float32)
    grad_out = torch.randn(30, 33, 7, 7, generator=g)
    args = (rois, 7, 1 / 16, sampling_ratio, aligned)
    (native,) = torch.autograd.grad(roi_align(features, *args), features, grad_out)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(roi_align_module, "_native_forward", None)
        (expected,) = torch.autograd.grad(roi_align(features, *args), features, grad_out)
    torch.testing.assert_close(native, expected, rtol=1e-4, atol=1e-5)


def test_a_roi_with_a_non_finite_corner_pools_zeros_in_c(path):
    if path == "torch":
        pytest.skip("PyTorch's path cannot index such a RoI's samples")
    features = torch.randn(1, 3, 6, 6)
    rois = torch.tensor([[0.0, float("nan"), 0, 40, 40], [0.0, 0, 0, float("inf"), 40]])
    assert roi_align(features, rois, 2, 1 / 16, sampling_ratio=-1).abs().sum() == 0
    # finite corners that the scale takes past float32's range
    huge = torch.tensor([[0.0, 0, 0, 3e38, 40]])
    assert roi_align(features, huge, 2, 16.0, sampling_ratio=-1).abs().sum() == 0


def test_hand_computed_samples():
    features = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    roi = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]])
    # legacy: one sample at (0.5, 0.5), the mean of the four cells
    assert roi_align(features, roi, 1, 1.0, sampling_ratio=1).item() == 1.5
    # aligned: shifted by -0.5, the sample sits on cell (0, 0)
    assert roi_align(features, roi, 1, 1.0, sampling_ratio=1, aligned=True).item() == 0.0
    # 2 x 2 samples at 0.25 and 0.75 in each axis: x reads 0.25 or 0.75, y reads 0.5 or 1.5
    assert roi_align(features, roi, 1, 1.0, sampling_ratio=2).item() == 1.5
    # past the last cell centre a sample reads the edge; beyond -1 it reads 0
    edge = torch.tensor([[0.0, 1.5, 1.5, 1.9, 1.9]])
    assert roi_align(features, edge, 1, 1.0, sampling_ratio=1).item() == 3.0
    far = torch.tensor([[0.0, -9.0, -9.0, -5.0, -5.0]])
    assert roi_align(features, far, 2, 1.0).abs().sum() == 0


@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("output_size", [1, (2, 3), 7])
def test_matches_reference(sampling_ratio, aligned, output_size, random_rois):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    rois = random_rois(12, 2, g)
    rois[0, 1:] = torch.tensor([80.0, 60.0, 70.0, 50.0], dtype=torch.float64)  # inside-out
    args = (features, rois, output_size, 1 / 16, sampling_ratio, aligned)
    torch.testing.assert_close(roi_align(*args), roi_align_reference(*args))


def test_float32_matches_reference(random_rois):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1, 4, 20, 30, generator=g)
    rois = random_rois(30, 1, g, size=400.0, dtype=torch.float32)
    args = (features, rois, 7, 1 / 16, 2, False)
    out = roi_align(*args)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align_reference(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("sampling_ratio", "aligned"), [(2, True), (-1, False)])
def test_gradcheck_features_and_box_coordinates(sampling_ratio, aligned):
    g = torch.Generator().manual_seed(2)
    features = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    # boxes inside the map, away from integer sample positions (the kinks of bilinear)
    corners = torch.tensor([[10.3, 7.1, 61.7, 52.9], [30.2, 20.6, 90.4, 80.8]], dtype=torch.float64)
    corners.requires_grad_(True)
    batch = torch.tensor([[0.0], [1.0]], dtype=torch.float64)

    def op(f, c):
        return roi_align(f, torch.cat([batch, c], 1), (2, 3), 1 / 16, sampling_ratio, aligned)

    assert torch.autograd.gradcheck(op, (features, corners))


def test_empty_dtype_and_bad_inputs():
    features = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    assert roi_align(features, torch.zeros(0, 5, dtype=torch.float64), 7, 1.0).shape == (0, 3, 7, 7)
    rois = torch.tensor([[0.0, 0, 0, 4, 4]], dtype=torch.float64)
    assert roi_align(features, rois, 2, 1.0).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(R, 5\)"):
        roi_align(features, torch.zeros(2, 4), 2, 1.0)
    with pytest.raises(ValueError, match="batch_index"):
        roi_align(features, torch.tensor([[-1.0, 0, 0, 4, 4]]), 2, 1.0)
