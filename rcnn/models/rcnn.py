"""R-CNN (Girshick et al., 2014): regions with CNN features.

1. Selective search proposes about 2,000 regions per image ("fast" mode);
2. each region, whatever its size and shape, is warped to the network's fixed input size
   S x S (227 for AlexNet; 224 for VGG16; a config value), after dilating it so that S / 227
   * 16 pixels of the warped image are context around the original box (appendix A, "context
   padding", p = 16); what falls outside the image is the image mean;
3. the whole network runs on each warped region: the trunk, max pooling of its map into the
   head's p x p grid (pool5), then the head (fc6, fc7);
4. training and testing follow ``rcnn.models.svm_detector``: a fine-tuned (N+1)-way softmax,
   per-class SVMs on fc7 with hard negative mining, ridge box regression on pool5, per-class
   NMS at test time.

Every region runs through every layer, which is what makes R-CNN slow (about 50 s per image
in the seeds' notes): the cost grows with the number of proposals (``max_proposals``).

Shapes: N images, R regions, S warp size, C trunk channels, p pooled size, D fc7 size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rcnn.models.svm_detector import SVMDetector, SVMDetectorConfig
from rcnn.ops import roi_pool
from rcnn.structures import ImageBatch

PAPER_WARP_SIZE = 227  # AlexNet's input, at which R-CNN's context padding is 16 pixels


@dataclass(frozen=True)
class RCNNConfig(SVMDetectorConfig):
    """warp_size: S; context_padding: p, in pixels of a 227 x 227 warp (the same fraction of
    any S); warp_batch: regions warped and run through the network at a time."""

    warp_size: int = 224
    context_padding: float = 16.0
    warp_batch: int = 256


class RCNN(SVMDetector):
    def __init__(self, backbone, num_classes: int, config: RCNNConfig = RCNNConfig()):
        pool5_size = backbone.out_channels * backbone.pool_size**2
        sizes = (pool5_size, backbone.representation_size)
        parts = {"finetune": ("trunk", "head", "cls_score")}  # the whole network learns
        super().__init__(backbone.trunk, backbone.head, sizes, num_classes, config, parts)
        self.pool_size = backbone.pool_size
        self.pixel_stats = (tuple(backbone.pixel_mean), tuple(backbone.pixel_std))

    def region_features(self, batch: ImageBatch, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Steps 2-3, ``warp_batch`` regions at a time -> pool5 (R, C*p*p), fc7 (R, D)."""
        config = self.config
        pool5, fc7 = [], []
        for image, image_boxes in zip(batch.images, boxes, strict=True):
            dilated = context_boxes(image_boxes, config.warp_size, config.context_padding)
            for chunk in dilated.split(config.warp_batch):
                crops = warp_regions(image, chunk, config.warp_size)  # (r, 3, S, S)
                features = self.trunk(crops)  # (r, C, h, w)
                pool5.append(self.pool5(features))
                fc7.append(self.head(pool5[-1]))
        if not pool5:  # no regions at all
            sizes = self.regressors.weight.shape[0], self.svms.weight.shape[1]
            return tuple(batch.images.new_zeros((0, size)) for size in sizes)
        return torch.cat(pool5).flatten(1), torch.cat(fc7)

    def pool5(self, features: Tensor) -> Tensor:
        """Max pooling of each crop's whole map ``(r, C, h, w)`` into ``(r, C, p, p)`` bins:
        RoI pooling with the RoI the whole map, in cells (VGG16's pool5 at S = 224)."""
        h, w = features.shape[-2:]
        whole = torch.tensor([0.0, 0.0, w - 1, h - 1], device=features.device)
        index = torch.arange(features.shape[0], device=features.device, dtype=whole.dtype)
        rois = torch.cat((index[:, None], whole.expand(features.shape[0], 4)), dim=1)  # (r, 5)
        return roi_pool(features, rois.to(features.dtype), self.pool_size, 1.0)


def context_boxes(boxes: Tensor, warp_size: int, padding: float) -> Tensor:
    """R-CNN's context padding: ``boxes (R, 4)`` dilated about their centres so that, warped
    to ``warp_size``, ``padding * warp_size / 227`` pixels of context surround the original
    box on every side -> ``(R, 4)``. The dilation is S / (S - 2p): 227 / 195 at any S."""
    context = padding * warp_size / PAPER_WARP_SIZE
    factor = warp_size / (warp_size - 2 * context)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * factor
    return torch.cat((centre - half, centre + half), dim=1)


def warp_regions(image: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Warp the pixels of each box of ``image (3, H, W)`` to ``size x size`` (bilinear,
    anisotropic, as R-CNN's "warp") -> ``(R, 3, S, S)``. Output pixel j samples the box at
    ``x1 + (j + 0.5) * width / S``; outside the image it reads zeros, the mean of a normalised
    image, as R-CNN fills with the image mean."""
    height, width = image.shape[-2:]
    steps = (torch.arange(size, dtype=image.dtype, device=image.device) + 0.5) / size  # (S,)
    xs = boxes[:, 0:1] + steps * (boxes[:, 2:3] - boxes[:, 0:1])  # (R, S) sample columns
    ys = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2])  # (R, S) sample rows
    # pixel coordinates -> grid_sample's [-1, 1], whose ends are the image's outer edges
    gx, gy = 2 * xs / width - 1, 2 * ys / height - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    # all R crops in one call: grid (R, S, S, 2) -> (1, R*S, S, 2); out (1, 3, R*S, S)
    out = F.grid_sample(
        image[None], grid.reshape(1, -1, size, 2), align_corners=False, padding_mode="zeros"
    )
    return out.reshape(3, -1, size, size).transpose(0, 1)  # -> (3, R, S, S) -> (R, 3, S, S)
