"""Fast R-CNN (Girshick, 2015): one convolutional pass over the whole image, then RoI pooling
and a per-region head for each region proposal that selective search made beforehand.

1. the trunk computes the feature map of the whole image once;
2. each proposal (selective search, "fast" mode, about 2,000 per image, computed outside the
   network and cached) is projected onto the map and RoI max pooling cuts out a 7 x 7 window;
3. in training, hierarchical sampling (section 2.3): N = 2 images a mini-batch and R / N = 64
   RoIs from each, 25% of them foreground (IoU >= 0.5), the rest background (IoU [0.1, 0.5));
4. fc6 and fc7 turn each window into a feature vector; two sibling layers give a softmax over
   K + 1 classes and class-specific box regression, trained jointly with the multi-task loss
   L = L_cls + [u >= 1] L_loc (eq. 1), in one stage: no SVMs, no separate regressors;
5. at test time, per-class NMS turns the refined boxes into detections. Truncated SVD of fc6
   and fc7 (section 3.1, ``rcnn.svd``) can then make the head cheaper.

Unlike SPPNet, every layer after the trunk's first ones trains: the RoI pooling layer passes
gradients back into the convolutions (section 2.3, "back-propagation through RoI pooling").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from rcnn.backbones import test_maps, trunk_maps
from rcnn.heads import FastRCNNHead, RoIOp
from rcnn.postprocess import DetectionConfig
from rcnn.proposal_targets import ProposalTargetConfig
from rcnn.structures import Detections, ImageBatch

STAGE = "multi-task"  # single-stage training (section 2.3): one network, one loss


@dataclass(frozen=True)
class FastRCNNConfig:
    """``proposal_mode``: selective search's mode for the proposals; ``roi_targets``: 64 RoIs
    per image, 25% foreground (with ``train.images_per_batch = 2``: the paper's 128-RoI
    mini-batch); ``roi_op``: RoI max pooling as in the paper, or RoIAlign."""

    proposal_mode: Literal["fast", "quality"] = "fast"
    roi_targets: ProposalTargetConfig = field(
        default_factory=lambda: ProposalTargetConfig(batch_size_per_image=64)
    )
    roi_op: RoIOp = "pool"
    skip_pooling: bool = True  # also pool the finer maps the backbone taps (small: conv3_2)
    detection: DetectionConfig = field(default_factory=DetectionConfig)


class FastRCNN(nn.Module):
    def __init__(self, backbone, num_classes: int, config: FastRCNNConfig = FastRCNNConfig()):
        super().__init__()
        self.config = config
        self.proposal_mode = config.proposal_mode  # proposals come from outside (Detector, runs)
        self.trunk = backbone.trunk
        self.head = FastRCNNHead.on(backbone, num_classes, config.roi_op, config.skip_pooling)
        self.pixel_stats = (tuple(backbone.pixel_mean), tuple(backbone.pixel_std))
        self.stages = (STAGE,)

    def forward(self, batch: ImageBatch) -> dict[str, Tensor] | list[Detections]:
        """Training: the multi-task loss on sampled RoIs. Evaluation: one Detections per image,
        in the batch's (resized) pixels. ``batch.proposals`` must be set (resized pixels)."""
        if batch.proposals is None:
            raise ValueError("Fast R-CNN needs region proposals: ImageBatch.proposals is None")
        # 1. the feature map, once per image (and the finer maps the head also pools)
        if not self.training:  # 2, 4, 5.
            detection = self.config.detection
            layers = self.head.tap_layers
            features, taps, mirrored = test_maps(self.trunk, batch, layers, detection.flip)
            sizes = batch.image_sizes
            return self.head.detect(features, batch.proposals, sizes, detection, taps, mirrored)
        features, taps = trunk_maps(self.trunk, batch.images, self.head.tap_layers)
        gt_boxes, gt_labels = batch.training_targets()
        # 2-4. sample 64 RoIs per image, pool them, fc6/fc7, multi-task loss
        return self.head.loss(
            features, batch.proposals, gt_boxes, gt_labels, self.config.roi_targets, taps
        )

    def set_stage(self, stage: str) -> None:
        """Fast R-CNN trains in one stage; every layer not frozen by the backbone trains."""
        if stage != STAGE:
            raise ValueError(f"{stage!r} is not a stage of Fast R-CNN (only {STAGE!r})")
