"""The Region Proposal Network (Faster R-CNN section 3.1): head, anchors, proposals, loss.

It slides the RPN head over the shared feature map, places the anchors, turns the head's
outputs into proposals with the proposal layer and, in training, scores them against the
anchor target layer's labels with the RPN's multi-task loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rcnn.anchor_targets import AnchorTargetConfig, anchor_targets
from rcnn.anchors import AnchorConfig, AnchorGenerator
from rcnn.heads import RPNHead
from rcnn.losses import RPNLossConfig, rpn_loss
from rcnn.proposals import ProposalConfig, propose


@dataclass(frozen=True)
class RPNConfig:
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    mid_channels: int | None = None  # the 3x3 conv's width (ZF 256, VGG16 512); None: the map's C
    targets: AnchorTargetConfig = field(default_factory=AnchorTargetConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    loss: RPNLossConfig = field(default_factory=RPNLossConfig)


class RegionProposalNetwork(nn.Module):
    def __init__(self, in_channels: int, config: RPNConfig = RPNConfig()):
        super().__init__()
        self.config = config
        self.head = RPNHead(
            in_channels, config.mid_channels or in_channels, config.anchors.num_anchors
        )
        self.anchor_generator = AnchorGenerator(config.anchors)

    def forward(
        self,
        features: Tensor,
        image_sizes: list[tuple[int, int]],
        image_scales: list[float],
        gt_boxes: list[Tensor] | None = None,
        keep_gradient: bool = False,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """features (N, C, H, W) -> proposals, one (P_i, 4) tensor per image, and the RPN losses
        (only when ``gt_boxes``, one (G_i, 4) tensor per image, are given).

        The proposals carry the gradient of the deltas only when ``keep_gradient`` (Faster
        R-CNN's non-approximate joint training); otherwise they are constants, as in the paper's
        approximate joint training.
        """
        objectness, deltas = self.head(features)  # (N, H*W*A), (N, H*W*A, 4)
        anchors = self.anchor_generator(tuple(features.shape[-2:]), features.device)
        source = deltas if keep_gradient else deltas.detach()
        proposals = [
            propose(
                anchors, objectness[i], source[i], size, scale, self.config.proposals, self.training
            )[0]
            for i, (size, scale) in enumerate(zip(image_sizes, image_scales, strict=True))
        ]
        if gt_boxes is None:
            return proposals, {}
        return proposals, self.loss(anchors, objectness, deltas, image_sizes, gt_boxes)

    def loss(
        self,
        anchors: Tensor,
        objectness: Tensor,
        deltas: Tensor,
        image_sizes: list[tuple[int, int]],
        gt_boxes: list[Tensor],
    ) -> dict[str, Tensor]:
        """The RPN loss of a batch: the anchor target layer per image, then one loss over all."""
        labels, targets = zip(
            *(
                anchor_targets(anchors, boxes, size, self.config.targets)
                for boxes, size in zip(gt_boxes, image_sizes, strict=True)
            ),
            strict=True,
        )
        num_locations = objectness.shape[0] * objectness.shape[1] // self.config.anchors.num_anchors
        return rpn_loss(
            objectness.reshape(-1),
            deltas.reshape(-1, 4),
            torch.cat(labels),
            torch.cat(targets),
            num_locations,
            self.config.loss,
        )
