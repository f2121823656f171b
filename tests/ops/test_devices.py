"""The ops on an accelerator agree with the CPU, forward and backward.

Skipped where no accelerator is present (CI); run on a GPU machine. Also, on the CPU, the
one place where CUDA's pooling kernel differs from the CPU's is imitated: over a bin of
nothing but -inf it names position 0 of the input rather than the bin's own first position.
"""

import pytest
import torch

from rcnn.boxes import box_iou
from rcnn.data.dataset import make_annotation
from rcnn.evaluation.report import evaluate_detections
from rcnn.ops import batched_nms, nms, roi_align, roi_pool, spp
from rcnn.structures import Detections

ACCELERATORS = [d for d in ("cuda", "mps") if getattr(torch, d).is_available()]


def rpn_like_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """n boxes in a 600 x 1000 image, 8-208 px a side; a quarter of them reach past x = 800."""
    centres = torch.rand(n, 2, generator=generator) * torch.tensor([1000.0, 600.0])
    sides = torch.rand(n, 2, generator=generator) * 200 + 8
    return torch.cat((centres - sides / 2, centres + sides / 2), 1)


def pooled_and_gradients(op, features, rois, device):
    """op's output and the gradients of a fixed weighted sum of it, on ``device``."""
    f = features.to(device).requires_grad_()
    r = rois.to(device).requires_grad_(op is roi_align)
    out = op(f, r)
    weights = torch.linspace(-1, 1, out.numel(), device=device).reshape(out.shape)
    (out * weights).sum().backward()
    return out.cpu(), f.grad.cpu(), None if r.grad is None else r.grad.cpu()


POOLING = {
    "roi_pool": lambda f, r: roi_pool(f, r, 7, 1 / 16),
    "roi_align": lambda f, r: roi_align(f, r, 7, 1 / 16, sampling_ratio=2),
    "spp": lambda f, r: spp(f, r),
}


@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("name", sorted(POOLING))
def test_pooling_on_the_accelerator_matches_the_cpu(device, name):
    generator = torch.Generator().manual_seed(0)
    # a 38 x 50 map (600 x 800) under RoIs drawn over 600 x 1000: some bins fall off the map
    features = torch.randn(2, 16, 38, 50, generator=generator)
    image = torch.randint(0, 2, (256, 1), generator=generator).float()
    rois = torch.cat((image, rpn_like_boxes(256, generator)), 1)
    op = POOLING[name]
    on_cpu = pooled_and_gradients(op, features, rois, "cpu")
    on_device = pooled_and_gradients(op, features, rois, device)
    for cpu, accelerated in zip(on_cpu, on_device, strict=True):
        if cpu is not None:
            torch.testing.assert_close(accelerated, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", ACCELERATORS)
def test_nms_and_iou_on_the_accelerator_match_the_cpu(device):
    generator = torch.Generator().manual_seed(1)
    boxes = rpn_like_boxes(6000, generator)
    scores = torch.rand(6000, generator=generator)
    labels = torch.randint(0, 20, (6000,), generator=generator)
    b, s, lab = boxes.to(device), scores.to(device), labels.to(device)
    torch.testing.assert_close(box_iou(b[:500], b).cpu(), box_iou(boxes[:500], boxes))
    assert torch.equal(nms(b, s, 0.7).cpu(), nms(boxes, scores, 0.7))
    assert torch.equal(batched_nms(b, s, lab, 0.3).cpu(), batched_nms(boxes, scores, labels, 0.3))


def test_an_empty_bin_passes_no_gradient_whatever_index_the_kernel_names(monkeypatch):
    real = torch.ops.aten.max_pool2d_with_indices.out

    def cuda_like(crop, kernel, stride, padding, dilation, ceil_mode, out, indices):
        real(crop, kernel, stride, padding, dilation, ceil_mode, out=out, indices=indices)
        indices.masked_fill_(out == float("-inf"), 0)  # CUDA: an all -inf bin names position 0
        return out, indices

    pool = type("Pool", (), {"out": staticmethod(cuda_like)})
    monkeypatch.setattr(torch.ops.aten, "max_pool2d_with_indices", pool)
    features = torch.arange(16.0).view(1, 1, 4, 4).requires_grad_()
    # cells 2..5 of a 4-cell map: three of the four bins are off the map
    roi_pool(features, torch.tensor([[0.0, 2, 2, 5, 5]]), 2, 1.0).sum().backward()
    expected = torch.zeros(4, 4)
    expected[3, 3] = 1  # only the one bin on the map, whose maximum is cell (3, 3)
    assert torch.equal(features.grad[0, 0], expected)


@pytest.mark.parametrize("device", ACCELERATORS)
def test_detections_on_the_accelerator_are_evaluated(device):
    truth = make_annotation([[10, 10, 50, 50]], [1], [False])
    found = Detections(
        torch.tensor([[11.0, 10, 50, 52]], device=device),
        torch.tensor([0.9], device=device),
        torch.tensor([1], device=device),
    )
    evaluation = evaluate_detections([found], [truth], ["thing"], [(100, 100)], 0.0)
    assert evaluation.metrics["map50"] == pytest.approx(1.0)
