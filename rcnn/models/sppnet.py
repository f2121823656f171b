"""SPPNet for detection (He et al., 2014, section 4): R-CNN's recipe, with the convolutional
layers run once per image instead of once per region.

1. Selective search proposes about 2,000 regions per image ("fast" mode);
2. the trunk computes the feature map of the whole image once;
3. each proposal is projected onto the map (the appendix's rule, ``rcnn.ops.spp``) and its
   window is max-pooled by a 4-level spatial pyramid, 6x6, 3x3, 2x2 and 1x1 bins: 50 bins per
   channel, one fixed-length vector whatever the window's size;
4. new fully connected layers fc6 (C * 50 -> D) and fc7 take that vector;
5. as R-CNN (``rcnn.models.svm_detector``): stage "finetune" trains the fc layers and the
   (N+1)-way softmax only, the convolutional layers frozen as the paper does (positives IoU
   >= 0.5, background [0.1, 0.5), 25% positives); SVMs on fc7 (negatives that overlap another
   negative by more than 70% dropped) with hard negative mining; box regression on the pooled
   features of regions with IoU >= 0.5; per-class NMS.

The paper's trunk was pre-trained on ImageNet and never trained for detection. To train
from scratch (the small CPU backbone), ``pretrain=True`` adds a first SGD stage "pretrain"
in which the trunk learns too, on the same softmax loss: our stand-in for that pre-training.

Multi-scale testing (``scales``, e.g. the paper's 480, 576, 688, 864, 1200): at test time
(and when the SVMs' features are cached) each image is resized so its shorter side is each
scale; each proposal is pooled from the one scale at which its area is closest to
``scale_target`` squared (224 x 224 in the paper). The images reach the model at
``input.test_size``: set it to the largest scale, or larger scales only upsample.

Shapes: N images, R regions, C trunk channels, D fc7 size.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rcnn.backbones import fc_layers, init_from_scratch
from rcnn.boxes import box_area, to_rois
from rcnn.classic.bbox_regressor import BoxRegressionConfig
from rcnn.classic.svm import SVMConfig
from rcnn.data.transforms import resize
from rcnn.models.svm_detector import FinetuneConfig, SVMDetector, SVMDetectorConfig
from rcnn.ops import spp
from rcnn.structures import ImageBatch


@dataclass(frozen=True)
class SPPNetConfig(SVMDetectorConfig):
    levels: tuple[int, ...] = (6, 3, 2, 1)
    dropout: float = 0.5  # in fc6 and fc7, as the paper's ZF-5 / VGG fc layers
    pretrain: bool = False
    scales: tuple[int, ...] = ()  # multi-scale testing; () = the image as it comes
    scale_target: int = 224
    finetune: FinetuneConfig = field(
        default_factory=lambda: FinetuneConfig(background_iou=(0.1, 0.5))
    )
    svm: SVMConfig = field(default_factory=lambda: SVMConfig(negative_nms=0.7))
    regression: BoxRegressionConfig = field(
        default_factory=lambda: BoxRegressionConfig(min_iou=0.5)
    )


class SPPNet(SVMDetector):
    def __init__(self, backbone, num_classes: int, config: SPPNetConfig = SPPNetConfig()):
        pooled_size = backbone.out_channels * sum(n * n for n in config.levels)
        head = nn.Sequential(
            OrderedDict(fc_layers(pooled_size, backbone.representation_size, config.dropout))
        )
        init_from_scratch(head)
        parts = {"finetune": ("head", "cls_score")}  # step 5: the convolutions stay fixed
        if config.pretrain:
            parts = {"pretrain": ("trunk", "head", "cls_score"), **parts}
        sizes = (pooled_size, backbone.representation_size)
        super().__init__(backbone.trunk, head, sizes, num_classes, config, parts)
        self.spatial_scale = 1.0 / backbone.stride
        self.pixel_stats = (tuple(backbone.pixel_mean), tuple(backbone.pixel_std))

    def region_features(self, batch: ImageBatch, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Steps 2-4 -> the pooled features (R, C * 50) ("pool5" for box regression) and fc7
        (R, D). The trunk keeps no graph while it is frozen."""
        trunk_learns = any(p.requires_grad for p in self.trunk.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trunk_learns):
            if self.training or not self.config.scales:
                features = self.trunk(batch.images)  # 2. once per image
                pooled = spp(features, to_rois(boxes), self.config.levels, self.spatial_scale)
            else:
                pooled = self.multiscale_pool(batch, boxes)
        return pooled, self.head(pooled)

    def multiscale_pool(self, batch: ImageBatch, boxes: list[Tensor]) -> Tensor:
        """Each region pooled at the scale where its area is closest to ``scale_target``^2."""
        pooled = []
        for image, (height, width), image_boxes in zip(
            batch.images, batch.image_sizes, boxes, strict=True
        ):
            factors = [scale / min(height, width) for scale in self.config.scales]
            area = box_area(image_boxes)  # (R_i,)
            gaps = [(area * f * f - self.config.scale_target**2).abs() for f in factors]
            choice = torch.stack(gaps).argmin(dim=0)  # (R_i,): the scale of each region
            out = image_boxes.new_zeros((len(image_boxes), self.regressors.weight.shape[0]))
            for k, factor in enumerate(factors):
                rows = torch.nonzero(choice == k).flatten()
                if rows.numel() > 0:
                    resized, scaled = resize(image[:, :height, :width], image_boxes[rows], factor)
                    features = self.trunk(resized[None])  # (1, C, h, w)
                    rois = to_rois([scaled])
                    out[rows] = spp(features, rois, self.config.levels, self.spatial_scale)
            pooled.append(out)
        return torch.cat(pooled)
