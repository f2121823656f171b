"""What flows between the parts: ground truth of an image, and a detector's output for it.

Both hold boxes in the conventions of ``rcnn.boxes`` (float xyxy pixels, labels in [1, K]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Annotation:
    """Ground truth of one image, in that image's pixel coordinates.

    boxes (G, 4) float32 xyxy; labels (G,) int64 in [1, K]; difficult (G,) bool: VOC's
    'difficult' or COCO's 'iscrowd'. Difficult boxes are excluded from AP (neither a hit nor
    a miss, as the VOC devkit does) and are not used as training targets.
    """

    boxes: Tensor
    labels: Tensor
    difficult: Tensor

    def __post_init__(self) -> None:
        g = self.boxes.shape[0]
        if self.boxes.shape != (g, 4) or self.labels.shape != (g,) or self.difficult.shape != (g,):
            shapes = [tuple(t.shape) for t in (self.boxes, self.labels, self.difficult)]
            raise ValueError(
                f"Annotation needs boxes (G, 4), labels (G,), difficult (G,); got {shapes}"
            )

    @classmethod
    def empty(cls) -> Annotation:
        """An image with no objects."""
        return cls(
            torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool)
        )

    def __len__(self) -> int:
        return self.boxes.shape[0]


@dataclass(frozen=True)
class Detections:
    """A detector's output for one image: boxes (D, 4), scores (D,), labels (D,) in [1, K]."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        d = self.boxes.shape[0]
        if self.boxes.shape != (d, 4) or self.scores.shape != (d,) or self.labels.shape != (d,):
            shapes = [tuple(t.shape) for t in (self.boxes, self.scores, self.labels)]
            raise ValueError(
                f"Detections need boxes (D, 4), scores (D,), labels (D,); got {shapes}"
            )

    def __len__(self) -> int:
        return self.boxes.shape[0]


@dataclass(frozen=True)
class ImageBatch:
    """What a detector's forward pass takes: N resized, normalised images, zero-padded to one size.

    images (N, 3, H, W) float; image_sizes: each image's (h, w) before padding; scales: resized
    size / original size per image; annotations: ground truth in the resized pixels (training);
    proposals: per image (P_i, 4) region proposals in the resized pixels, for the models that
    take them from outside (R-CNN, SPPNet, Fast R-CNN).
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    scales: list[float]
    annotations: list[Annotation] | None = None
    proposals: list[Tensor] | None = None

    def to(self, device: torch.device | str) -> ImageBatch:
        annotations = None
        if self.annotations is not None:
            annotations = [
                Annotation(a.boxes.to(device), a.labels.to(device), a.difficult.to(device))
                for a in self.annotations
            ]
        proposals = None if self.proposals is None else [p.to(device) for p in self.proposals]
        return ImageBatch(
            self.images.to(device), self.image_sizes, self.scales, annotations, proposals
        )

    def mirrored_images(self) -> Tensor:
        """``images`` mirrored left-right, each within its own width, so that the padding stays
        at the right as for a training image flipped before batching: (N, 3, H, W)."""
        mirrored = torch.zeros_like(self.images)
        for i, (h, w) in enumerate(self.image_sizes):
            mirrored[i, :, :h, :w] = self.images[i, :, :h, :w].flip(-1)
        return mirrored

    def training_targets(self) -> tuple[list[Tensor], list[Tensor]]:
        """Per image, the boxes (G_i, 4) and labels (G_i,) to train on: difficult ones left out."""
        if self.annotations is None:
            raise ValueError("this batch has no annotations to train on")
        keep = [~a.difficult for a in self.annotations]
        return (
            [a.boxes[k] for a, k in zip(self.annotations, keep, strict=True)],
            [a.labels[k] for a, k in zip(self.annotations, keep, strict=True)],
        )
