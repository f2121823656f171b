"""Box-aware image transforms: the papers' scale rule, resizing, flipping, normalizing, batching.

Images are ``(3, H, W)`` (uint8 or float), boxes ``(G, 4)`` float xyxy pixels. Every function
keeps the boxes on the same image content as the pixels and preserves dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from rcnn.boxes import hflip_boxes
from rcnn.data.dataset import Sample
from rcnn.structures import ImageBatch

# The statistics torchvision's ImageNet-trained backbones were trained with (RGB, in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_scale(image_size: tuple[int, int], min_size: int, max_size: int) -> float:
    """The factor that brings the shorter side to ``min_size`` unless the longer side would
    then pass ``max_size`` (Fast R-CNN's s = 600 with a 1000 cap; py-faster-rcnn's rule)."""
    short, long = min(image_size), max(image_size)
    scale = min_size / short
    if round(scale * long) > max_size:
        scale = max_size / long
    return scale


def resize(image: Tensor, boxes: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Resize ``image (3, H, W)`` by ``scale`` (bilinear, antialiased when shrinking) ->
    ``(image (3, round(H * scale), round(W * scale)), boxes (G, 4))``.

    Boxes follow each axis's actual factor (new size / old size), so they stay on the same
    pixels after the sizes are rounded.
    """
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    # (3, H, W) -> (1, 3, H, W) -> interpolate -> (3, h, w)
    resized = F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1
    )[0]
    factors = boxes.new_tensor([size[1] / width, size[0] / height]).repeat(2)
    return resized, boxes * factors


def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror ``image (3, H, W)`` left-right and its ``boxes (G, 4)``: x -> W - x."""
    return image.flip(-1), hflip_boxes(boxes, image.shape[-1])


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``(3, H, W)`` RGB -> float32 ``(3, H, W)``: ``(x / 255 - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=image.device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=image.device)[:, None, None]
    return (image.to(torch.float32) / 255 - mean_t) / std_t


def batch_images(images: Sequence[Tensor], size_divisible: int = 1):
    """Stack ``(3, h_i, w_i)`` images into one zero-padded ``(N, 3, H, W)`` tensor, images at
    the top left, H and W rounded up to multiples of ``size_divisible`` (the backbone's
    stride) -> ``(batch, image_sizes [(h_i, w_i), ...])``."""
    if not images:
        return torch.zeros(0, 3, 0, 0), []
    # sizes stay as the shapes give them: symbolic under torch.export (rcnn.export)
    sizes = [(image.shape[-2], image.shape[-1]) for image in images]
    height = math.ceil(max(h for h, _ in sizes) / size_divisible) * size_divisible
    width = math.ceil(max(w for _, w in sizes) / size_divisible) * size_divisible
    padded = [
        F.pad(image, (0, width - w, 0, height - h))  # zeros on the right and at the bottom
        for image, (h, w) in zip(images, sizes, strict=True)
    ]
    return torch.stack(padded), sizes


@dataclass(frozen=True)
class TrainTransform:
    """Fast R-CNN's training transform: resize the shorter side to one of ``min_sizes``
    (chosen at random per image: multi-scale training when there are several; the longer
    side capped at ``max_size``) and flip left-right with probability ``flip_prob``.

    With one min size and ``flip_prob=0`` it is the deterministic test-time transform.
    """

    min_sizes: tuple[int, ...] = (600,)
    max_size: int = 1000
    flip_prob: float = 0.5

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """``sample`` (as a data set gives it) -> the resized, maybe flipped Sample, with
        ``scale`` set to the factor applied to the original image."""
        pick = int(torch.randint(len(self.min_sizes), (1,), generator=generator))
        flip = bool(torch.rand((), generator=generator) < self.flip_prob)
        size = (sample.image.shape[-2], sample.image.shape[-1])
        scale = resize_scale(size, self.min_sizes[pick], self.max_size)
        # the ground-truth boxes and the proposals (if any) move together: (G + P, 4)
        count = len(sample.annotation)
        boxes = sample.annotation.boxes
        if sample.proposals is not None:
            boxes = torch.cat((boxes, sample.proposals.to(boxes.dtype)))
        image, boxes = resize(sample.image, boxes, scale)
        if flip:
            image, boxes = hflip(image, boxes)
        return replace(
            sample,
            image=image,
            annotation=replace(sample.annotation, boxes=boxes[:count]),
            scale=sample.scale * scale,
            flipped=sample.flipped != flip,
            proposals=None if sample.proposals is None else boxes[count:],
        )


def make_batch(
    samples: Sequence[Sample],
    mean: Sequence[float],
    std: Sequence[float],
    size_divisible: int,
    channels_last: bool = False,
) -> ImageBatch:
    """Transformed Samples -> the ImageBatch a detector takes: normalised, zero-padded images
    (in channels-last memory layout if ``channels_last``: ``train.channels_last``), their sizes
    and scales, their annotations and proposals (in the resized pixels)."""
    images, sizes = batch_images([normalize(s.image, mean, std) for s in samples], size_divisible)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    proposals = (
        [s.proposals for s in samples] if all(s.proposals is not None for s in samples) else None
    )
    return ImageBatch(
        images, sizes, [s.scale for s in samples], [s.annotation for s in samples], proposals
    )
