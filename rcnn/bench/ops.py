"""``rcnn bench ops``: the region ops on the input sizes of issue #2, against its targets.

Inputs are generated here, deterministically (fixed seeds), so that every run, and any other
program given the same generator, times the same work.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rcnn.bench import Timing, time_ms
from rcnn.boxes import box_iou, clip_boxes
from rcnn.ops import batched_nms, nms, roi_align, roi_pool, spp

IMAGE_SIZE = (600, 800)  # (H, W): a VOC image after Fast R-CNN's shorter-side-600 resize
FEATURES = (1, 512, 38, 50)  # VGG16 conv5_3 of that image: stride 16


def rpn_like_boxes(n: int, *, objects: int = 40, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` boxes ``(n, 4)`` and scores ``(n,)`` that look like RPN proposals before NMS.

    A 600 x 800 image holds ``objects`` objects: centres uniform over the image, sides
    anchor-like (32 to 512 pixels, log-uniform, aspect ratio 1/2, 1 or 2). Four boxes in five
    are jittered copies of an object (centre moved by N(0, 0.15) of its size, each side
    scaled by exp(N(0, 0.2))), scored high and higher the smaller the jitter; the rest is
    clutter spread uniformly over the image with low scores. All boxes are clipped to the
    image, as the proposal layer clips them.
    """
    g = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SIZE
    centres = torch.rand(objects, 2, generator=g) * torch.tensor([width, height])
    sizes = _anchor_like_sizes(objects, g)
    n_near = n * 4 // 5
    owner = torch.randint(0, objects, (n_near,), generator=g)
    shift = torch.randn(n_near, 2, generator=g) * 0.15
    scale = torch.exp(torch.randn(n_near, 2, generator=g) * 0.2)
    near_centres = centres[owner] + shift * sizes[owner]
    near_sizes = sizes[owner] * scale
    jitter = shift.norm(dim=1) + (scale.log()).abs().sum(dim=1)
    near_scores = 0.5 + 0.5 * torch.exp(-2.0 * jitter) * torch.rand(n_near, generator=g)
    n_far = n - n_near
    far_centres = torch.rand(n_far, 2, generator=g) * torch.tensor([width, height])
    far_sizes = _anchor_like_sizes(n_far, g)
    far_scores = 0.5 * torch.rand(n_far, generator=g)
    boxes = _from_centres(
        torch.cat([near_centres, far_centres]), torch.cat([near_sizes, far_sizes])
    )
    return clip_boxes(boxes, IMAGE_SIZE), torch.cat([near_scores, far_scores])


def uniform_boxes(n: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` boxes with uniform centres and anchor-like sides on the image, uniform scores."""
    g = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SIZE
    centres = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
    boxes = _from_centres(centres, _anchor_like_sizes(n, g))
    return clip_boxes(boxes, IMAGE_SIZE), torch.rand(n, generator=g)


def _anchor_like_sizes(n: int, g: torch.Generator) -> Tensor:
    """``(n, 2)`` (width, height): area of a side 32..512 (log-uniform), ratio 1/2, 1 or 2."""
    side = torch.exp(torch.empty(n).uniform_(math.log(32), math.log(512), generator=g))
    ratio = torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (n,), generator=g)]
    return torch.stack([side / ratio.sqrt(), side * ratio.sqrt()], dim=1)


def _from_centres(centres: Tensor, sizes: Tensor) -> Tensor:
    """``(n, 2)`` centres and ``(n, 2)`` sizes -> ``(n, 4)`` xyxy boxes."""
    return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)


def bench_ops() -> list[Timing]:
    """Every row of ``rcnn bench ops``."""
    return [*bench_nms(), *bench_pooling()]


def bench_nms() -> list[Timing]:
    """NMS on RPN-like and uniform boxes, per-class NMS, and box_iou."""
    rows = []
    # 1,000: the small preset's proposal layer; 6,000 and 12,000: the paper's (test, train)
    for n, target in ((1000, ""), (6000, ""), (12000, "<= ~100")):
        boxes, scores = rpn_like_boxes(n)
        kept = nms(boxes, scores, 0.7).numel()
        ms = time_ms(lambda b=boxes, s=scores: nms(b, s, 0.7))
        rows.append(Timing("nms", f"{n} RPN-like boxes, IoU 0.7: {kept} kept", ms, target))
    boxes, scores = rpn_like_boxes(12000)
    ms = time_ms(lambda: nms(boxes, scores, 0.7, top_k=2000))
    rows.append(Timing("nms, top_k=2000", "12000 RPN-like boxes, IoU 0.7", ms))
    boxes, scores = uniform_boxes(12000)
    kept = nms(boxes, scores, 0.7).numel()
    ms = time_ms(lambda: nms(boxes, scores, 0.7))
    rows.append(Timing("nms", f"12000 uniform boxes, IoU 0.7: {kept} kept", ms))
    boxes, scores = rpn_like_boxes(6000, seed=2)
    labels = torch.randint(1, 21, (6000,), generator=torch.Generator().manual_seed(2))
    ms = time_ms(lambda: batched_nms(boxes, scores, labels, 0.3))
    rows.append(Timing("batched_nms", "6000 RPN-like boxes, 20 classes, IoU 0.3", ms))
    a, b = uniform_boxes(2000, seed=3)[0], uniform_boxes(20000, seed=4)[0]
    rows.append(Timing("box_iou", "2000 x 20000 boxes", time_ms(lambda: box_iou(a, b)), "< 700"))
    return rows


def bench_pooling() -> list[Timing]:
    """RoI pooling and RoIAlign forward+backward, and SPP, over 512 RPN-like RoIs."""
    boxes, _ = rpn_like_boxes(512, seed=1)
    rois = torch.cat([torch.zeros(512, 1), boxes], dim=1)
    features = torch.randn(*FEATURES, generator=torch.Generator().manual_seed(1))
    features.requires_grad_(True)
    sizes = "512 RoIs, 512x38x50 map, 1/16"
    cases = [
        ("roi_pool fwd+bwd", f"{sizes}, 7x7", lambda: roi_pool(features, rois, 7, 1 / 16), "< 150"),
        (
            "roi_align fwd+bwd",
            f"{sizes}, 7x7, sampling 2",
            lambda: roi_align(features, rois, 7, 1 / 16, sampling_ratio=2),
            "< 700",
        ),
        ("spp fwd+bwd", f"{sizes}, levels (4, 2, 1)", lambda: spp(features, rois), ""),
    ]
    rows = []
    for name, detail, op, target in cases:
        with torch.no_grad():
            forward = time_ms(op)
        rows.append(Timing(name.replace("fwd+bwd", "forward"), detail, forward))
        backward = time_ms(lambda op=op: _forward_backward(op, features))
        rows.append(Timing(name, detail, backward, target))
    return [*rows, _small_test_image_pool()]


def _small_test_image_pool() -> Timing:
    """RoIAlign at test time on the small backbone: a 384x512 image's 100 proposals on its
    stride-16 map after the head's 1x1 reduction to 32 channels."""
    boxes, _ = rpn_like_boxes(100, seed=3)
    rois = torch.cat([torch.zeros(100, 1), boxes * 0.64], dim=1)  # 600x800 -> 384x512
    features = torch.randn(1, 32, 24, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ms = time_ms(lambda: roi_align(features, rois, 7, 1 / 16, sampling_ratio=2))
    return Timing("roi_align forward", "100 RoIs, 32x24x32 map, 1/16, 7x7, sampling 2", ms)


def _forward_backward(op, features: Tensor) -> Tensor:
    """Run ``op()`` and return the gradient of its sum with respect to ``features``."""
    out = op()
    return torch.autograd.grad(out, features, torch.ones_like(out))[0]
