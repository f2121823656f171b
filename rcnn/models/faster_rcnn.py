"""Faster R-CNN (Ren et al., 2015): a Region Proposal Network and a Fast R-CNN detector that
share one convolutional trunk.

1. the trunk computes the feature map of the whole image once;
2. the RPN proposes regions from it (anchors, objectness, deltas, proposal layer);
3. in training, the proposal target layer samples RoIs (25% foreground);
4. RoI pooling and the Fast R-CNN head classify each RoI into K + 1 classes and refine its box;
5. at test time, per-class NMS turns the refined boxes into detections.

Three ways to train the shared trunk (section 3.2):
* approximate joint training (the default): one network, both losses; the proposals are
  treated as constants, so no gradient flows into the RPN through the proposal boxes;
* the paper's 4-step alternating training: (1) train the RPN; (2) train a separate Fast R-CNN
  detector, its trunk initialised afresh, on the step-1 RPN's proposals; (3) the detector's
  trunk becomes the shared trunk, frozen, and only the RPN's own layers are fine-tuned;
  (4) only the Fast R-CNN head's own layers are fine-tuned, on the step-3 RPN's proposals;
* non-approximate joint training, which the paper only mentions: the RoI warping must be
  differentiable with respect to the box coordinates; RoIAlign is, so the detector's loss
  also moves the proposals and trains the RPN's box regression through them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from rcnn.backbones import test_maps, trunk_maps
from rcnn.heads import FastRCNNHead, RoIOp
from rcnn.postprocess import DetectionConfig
from rcnn.proposal_targets import ProposalTargetConfig
from rcnn.rpn import RegionProposalNetwork, RPNConfig
from rcnn.structures import Detections, ImageBatch

Scheme = Literal["approximate-joint", "alternating", "non-approximate-joint"]

# The stages of each training scheme, in order; each trains the parts STAGE_PARTS names.
STAGES: dict[str, tuple[str, ...]] = {
    "approximate-joint": ("joint",),
    "non-approximate-joint": ("joint",),
    "alternating": ("rpn", "detector", "rpn-finetune", "detector-finetune"),
}
STAGE_PARTS = {
    "joint": ("trunk", "rpn", "head"),
    "rpn": ("trunk", "rpn"),
    "detector": ("trunk", "head"),
    "rpn-finetune": ("rpn",),
    "detector-finetune": ("head",),
}


@dataclass(frozen=True)
class FasterRCNNConfig:
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_targets: ProposalTargetConfig = field(default_factory=ProposalTargetConfig)
    roi_op: RoIOp = "pool"
    skip_pooling: bool = True  # also pool the finer maps the backbone taps (small: conv3_2)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    scheme: Scheme = "approximate-joint"


class FasterRCNN(nn.Module):
    def __init__(self, backbone, num_classes: int, config: FasterRCNNConfig = FasterRCNNConfig()):
        super().__init__()
        self.config = config
        self.joint_gradient = config.scheme == "non-approximate-joint"
        roi_op = (
            "align" if self.joint_gradient else config.roi_op
        )  # RoI pooling has no box gradient
        self.trunk = backbone.trunk
        self.rpn = RegionProposalNetwork(backbone.out_channels, config.rpn)
        self.head = FastRCNNHead.on(backbone, num_classes, roi_op, config.skip_pooling)
        self.pixel_stats = (tuple(backbone.pixel_mean), tuple(backbone.pixel_std))
        self.frozen = {name for name, p in self.named_parameters() if not p.requires_grad}
        self.proposal_trunk: nn.Module | None = None  # alternating training, step 2 only
        self.initial_trunk = (
            copy.deepcopy(self.trunk.state_dict()) if config.scheme == "alternating" else None
        )
        self.stages = STAGES[config.scheme]
        self.stage = self.stages[0]

    def forward(self, batch: ImageBatch) -> dict[str, Tensor] | list[Detections]:
        """Training: the losses of the current stage. Evaluation (steps 1, 2, 4, 5): one
        Detections per image, in the batch's (resized) pixels."""
        # 1. the shared feature map (and the finer maps the head also pools)
        if not self.training:
            detection = self.config.detection
            layers = self.head.tap_layers
            features, taps, mirrored = test_maps(self.trunk, batch, layers, detection.flip)
            proposals, _ = self.rpn(features, batch.image_sizes, batch.scales)  # 2.
            sizes = batch.image_sizes
            return self.head.detect(features, proposals, sizes, detection, taps, mirrored)
        features, taps = trunk_maps(self.trunk, batch.images, self.head.tap_layers)
        gt_boxes, gt_labels = batch.training_targets()
        parts = STAGE_PARTS[self.stage]
        proposals, losses = self.rpn(
            self.proposal_features(batch, features),
            batch.image_sizes,
            batch.scales,
            gt_boxes if "rpn" in parts else None,
            keep_gradient=self.joint_gradient,
        )
        if "head" in parts:  # 3-4.
            roi_config = self.config.roi_targets
            losses.update(
                self.head.loss(features, proposals, gt_boxes, gt_labels, roi_config, taps)
            )
        return losses

    def proposal_features(self, batch: ImageBatch, features: Tensor) -> Tensor:
        """The map the RPN proposes from: the shared one, or in alternating training's step 2 the
        frozen step-1 trunk's (the two networks do not share convolutions yet)."""
        if self.proposal_trunk is None:
            return features
        with torch.no_grad():
            return self.proposal_trunk(batch.images)

    def set_stage(self, stage: str) -> None:
        """Enter a training stage: what trains, and where proposals come from (step 2)."""
        if stage not in STAGES[self.config.scheme]:
            raise ValueError(f"{stage!r} is not a stage of {self.config.scheme} training")
        if stage == "detector":  # step 2: a separate detector trunk, initialised afresh
            self.proposal_trunk = copy.deepcopy(self.trunk).requires_grad_(False)
            self.trunk.load_state_dict(self.initial_trunk)
        elif self.proposal_trunk is not None:  # from step 3 on, the detector's trunk is shared
            self.proposal_trunk = None
        parts = STAGE_PARTS[stage]
        for name, parameter in self.named_parameters():
            trainable = name.split(".")[0] in parts and name not in self.frozen
            parameter.requires_grad_(trainable)
        self.stage = stage
