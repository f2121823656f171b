"""From per-RoI class scores and class-specific boxes to an image's detections.

The test-time step shared by the lineage (R-CNN section 2.2, Fast R-CNN section 4): for each
class independently, drop scores under a threshold (0.05), suppress with NMS (IoU 0.3), then
keep the highest-scoring detections over all classes (100 per image).

``flip`` turns on flip testing (test-time augmentation, Detectron's ``TEST.BBOX_AUG.H_FLIP``):
each proposal is also scored and refined on the mirrored image, and the two class
probabilities and the two boxes are averaged before the step above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.boxes import clip_boxes, remove_small_boxes
from rcnn.ops import batched_nms
from rcnn.structures import Detections


@dataclass(frozen=True)
class DetectionConfig:
    score_threshold: float = 0.05
    nms_threshold: float = 0.3
    max_detections: int = 100
    flip: bool = False


def select_detections(
    boxes: Tensor, scores: Tensor, image_size: tuple[int, int], config: DetectionConfig
) -> Detections:
    """boxes (R, K, 4) and scores (R, K) for the K object classes (background excluded) of one
    image -> its Detections, clipped to ``image_size = (H, W)``, best first."""
    num_classes = scores.shape[1]
    boxes = clip_boxes(boxes, image_size).reshape(-1, 4)  # (R, K, 4) -> (R*K, 4)
    labels = torch.arange(1, num_classes + 1, device=scores.device).repeat(scores.shape[0])
    scores = scores.reshape(-1)
    keep = torch.nonzero(scores > config.score_threshold).flatten()
    keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
    keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], config.nms_threshold)]
    keep = keep[: config.max_detections]  # batched_nms returns them by decreasing score
    return Detections(boxes[keep], scores[keep], labels[keep])


def rescale(detections: Detections, scale: float) -> Detections:
    """Detections in an image resized by ``scale`` -> in the original image's pixels."""
    return Detections(detections.boxes / scale, detections.scores, detections.labels)
