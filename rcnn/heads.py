"""The two heads that sit on the shared feature map.

RPNHead (Faster R-CNN section 3.1): an n x n (3 x 3) convolution slides over the feature map,
followed by ReLU and two sibling 1 x 1 convolutions: a box-classification layer giving an
objectness score per anchor and a box-regression layer giving 4 deltas per anchor. We use the
paper's logistic-regression form (k scores with a sigmoid rather than 2k with a softmax).

FastRCNNHead (Fast R-CNN section 2): each RoI's features are pooled to a fixed p x p grid (RoI
max pooling, or RoIAlign), passed through the backbone's per-region layers (fc6, fc7 for
VGG16) and two sibling layers: a softmax over K + 1 classes and class-specific box regression
(4 deltas for each of the K + 1 classes; the background's are never trained or used).

Skip pooling (ION, Bell et al. 2016; HyperNet, Kong et al. 2016): where the backbone names
finer trunk layers (``Tap``), each RoI is also pooled from their maps, at their strides, and
the pooled grids join the last map's before the per-region layers. The head opens with a 1x1
convolution; on a concatenation of grids that is the sum of one 1x1 convolution per grid,
so each tapped map gets its own bias-free 1x1 convolution to the head's width, added before
the opening block's normalisation. Those start at zero: a new head is the plain head, and
learns how much of the finer maps to use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from rcnn.backbones import Tap
from rcnn.box_coder import BoxCoder
from rcnn.boxes import hflip_boxes, to_rois
from rcnn.losses import fast_rcnn_loss
from rcnn.ops import roi_align, roi_pool
from rcnn.postprocess import DetectionConfig, select_detections
from rcnn.proposal_targets import ProposalTargetConfig, proposal_targets
from rcnn.structures import Detections

RoIOp = Literal["pool", "align"]


class RPNHead(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.objectness = nn.Conv2d(mid_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(mid_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)  # py-faster-rcnn's initialisation
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (N, C, H, W) -> objectness logits (N, H*W*A), deltas (N, H*W*A, 4).

        The order (H, W, A) matches ``rcnn.anchors.shift_anchors``.
        """
        hidden = torch.relu(self.conv(features))
        n = features.shape[0]
        objectness = (
            self.objectness(hidden).permute(0, 2, 3, 1).reshape(n, -1)
        )  # (N, A, H, W) -> (N, H*W*A)
        deltas = self.deltas(hidden)  # (N, A*4, H, W)
        deltas = deltas.permute(0, 2, 3, 1).reshape(n, -1, 4)  # -> (N, H, W, A*4) -> (N, H*W*A, 4)
        return objectness, deltas


class FastRCNNHead(nn.Module):
    """RoI pooling (of the last map and of any tapped finer maps) + the backbone's per-region
    layers + the two sibling output layers; its training loss on sampled RoIs and its
    test-time detections."""

    def __init__(
        self,
        representation: nn.Module,
        representation_size: int,
        num_classes: int,
        pool_size: int,
        spatial_scale: float,
        roi_op: RoIOp = "pool",
        taps: tuple[Tap, ...] = (),
    ):
        super().__init__()
        self.representation = representation
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        self.bbox_pred = nn.Linear(representation_size, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)  # Fast R-CNN's initialisation
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.pool_size = pool_size
        self.spatial_scale = spatial_scale
        self.roi_op = roi_op
        self.coder = BoxCoder.fast_rcnn()
        self.taps = taps
        self.skip = nn.ModuleList(self._skip_projection(tap) for tap in taps)

    @classmethod
    def on(
        cls, backbone, num_classes: int, roi_op: RoIOp = "pool", skip_pooling: bool = True
    ) -> FastRCNNHead:
        """The head on a backbone's per-region layers, pooling its stride's feature map and,
        with ``skip_pooling``, the finer maps the backbone taps."""
        return cls(
            backbone.head,
            backbone.representation_size,
            num_classes,
            backbone.pool_size,
            1.0 / backbone.stride,
            roi_op,
            tuple(getattr(backbone, "taps", ())) if skip_pooling else (),
        )

    @property
    def tap_layers(self) -> tuple[str, ...]:
        """The trunk layers whose maps ``forward`` takes as ``taps``, in that order."""
        return tuple(tap.layer for tap in self.taps)

    def pool(self, features: Tensor, rois: Tensor, spatial_scale: float | None = None) -> Tensor:
        """features (N, C, H, W), rois (R, 5) -> (R, C, p, p); the last map's scale by default."""
        scale = self.spatial_scale if spatial_scale is None else spatial_scale
        if self.roi_op == "align":
            return roi_align(features, rois, self.pool_size, scale, sampling_ratio=2)
        return roi_pool(features, rois, self.pool_size, scale)

    def forward(
        self, features: Tensor, rois: Tensor, taps: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        """features (N, C, H, W), rois (R, 5) and the tapped maps (N, C_t, H_t, W_t), one per
        ``self.taps`` -> class logits (R, K+1), class-specific box deltas (R, (K+1)*4).

        When the per-region layers open with a bias-free 1x1 convolution (the small backbone's
        channel reduction), it is applied per pooled map and the results summed, with each
        tapped map's own convolution (skip pooling). With RoIAlign it runs on each map before
        pooling instead of on every pooled RoI: both are linear, so they commute, and the map
        (N x H x W positions) is far smaller than the RoIs (R x p x p). The same function, a
        fraction of the work.
        """
        block = self._opening_projection()
        if block is None:
            x = self.representation(self.pool(features, rois))
        else:
            x = self._projected_pool(block[0], features, rois, self.spatial_scale)
            for conv, tap, tapped in zip(self.skip, self.taps, taps, strict=True):
                x = x + self._projected_pool(conv, tapped, rois, 1.0 / tap.stride)
            x = self.representation[1:](block[1:](x))
        return self.cls_score(x), self.bbox_pred(x)

    def _projected_pool(self, conv: nn.Conv2d, features: Tensor, rois: Tensor, scale: float):
        """``conv`` (bias-free 1x1) of the RoIs pooled from ``features``: before RoIAlign
        (they commute), after RoI max pooling (they do not)."""
        if self.roi_op == "align":
            return self.pool(conv(features), rois, scale)
        return conv(self.pool(features, rois, scale))

    def _opening_projection(self) -> nn.Sequential | None:
        """The per-region layers' opening (1x1 conv, ...) block when its convolution is linear
        and bias-free (see forward), else None."""
        first = self.representation[0] if isinstance(self.representation, nn.Sequential) else None
        if not isinstance(first, nn.Sequential) or not len(first):
            return None
        conv = first[0]
        linear = isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
        return first if linear and conv.stride == (1, 1) and conv.groups == 1 else None

    def _skip_projection(self, tap: Tap) -> nn.Conv2d:
        """A tapped map's bias-free 1x1 convolution to the opening block's width, zero at first."""
        block = self._opening_projection()
        if block is None:
            raise ValueError(
                f"skip pooling of {tap.layer!r} needs per-region layers that open with a "
                "bias-free 1x1 convolution"
            )
        conv = nn.Conv2d(tap.channels, block[0].out_channels, 1, bias=False)
        nn.init.zeros_(conv.weight)
        return conv

    def loss(
        self,
        features: Tensor,
        proposals: list[Tensor],
        gt_boxes: list[Tensor],
        gt_labels: list[Tensor],
        config: ProposalTargetConfig,
        taps: Sequence[Tensor] = (),
    ) -> dict[str, Tensor]:
        """Sample RoIs per image (proposal target layer), then the multi-task loss on them.

        The RoIs are gathered from the proposals themselves, so a gradient the proposals carry
        (non-approximate joint training) reaches what made them.
        """
        sampled = [
            proposal_targets(p, b, l, config, self.coder)
            for p, b, l in zip(proposals, gt_boxes, gt_labels, strict=True)
        ]
        boxes = [
            torch.cat((p, b.to(p.dtype)))[s.indices]
            for p, b, s in zip(proposals, gt_boxes, sampled, strict=True)
        ]
        logits, deltas = self(features, to_rois(boxes), taps)
        labels = torch.cat([s.labels for s in sampled])
        targets = torch.cat([s.targets for s in sampled])
        return fast_rcnn_loss(logits, deltas, labels, targets)

    def detect(
        self,
        features: Tensor,
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        config: DetectionConfig,
        taps: Sequence[Tensor] = (),
        mirrored: tuple[Tensor, Sequence[Tensor]] | None = None,
    ) -> list[Detections]:
        """Score and refine every proposal, then per-class NMS, image by image. ``mirrored``:
        the maps (and tapped maps) of the left-right mirrored images, for flip testing: each
        proposal is also scored there, mirrored, and the class probabilities and the boxes of
        the two views averaged."""
        rois = to_rois(proposals)
        probabilities, boxes = self.score(features, rois, taps)
        if mirrored is not None:
            mirror_features, mirror_taps = mirrored
            # each RoI's image width (R,), made without a tensor of Python ints, which
            # torch.export could not trace from symbolic image sizes
            pairs = zip(proposals, image_sizes, strict=True)
            widths = torch.cat([p.new_full((p.shape[0],), w) for p, (_, w) in pairs])
            mirror_rois = torch.cat((rois[:, :1], hflip_boxes(rois[:, 1:], widths)), dim=1)
            other_probabilities, other_boxes = self.score(mirror_features, mirror_rois, mirror_taps)
            probabilities = (probabilities + other_probabilities) / 2
            boxes = (boxes + hflip_boxes(other_boxes, widths[:, None])) / 2
        counts = [p.shape[0] for p in proposals]
        return [
            select_detections(b[:, 1:], s[:, 1:], size, config)  # the background column dropped
            for b, s, size in zip(
                boxes.split(counts), probabilities.split(counts), image_sizes, strict=True
            )
        ]

    def score(
        self, features: Tensor, rois: Tensor, taps: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        """rois (R, 5) -> class probabilities (R, K+1) and each class's refined box (R, K+1, 4)."""
        logits, deltas = self(features, rois, taps)
        boxes = self.coder.decode(deltas, rois[:, 1:])  # (R, (K+1)*4)
        boxes = boxes.reshape(rois.shape[0], logits.shape[1], 4)  # -> (R, K+1, 4), also for R = 0
        return torch.softmax(logits, dim=1), boxes
