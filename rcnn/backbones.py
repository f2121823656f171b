"""Backbones: the convolutional trunk that runs once per image and the head that runs per RoI.

Fast R-CNN (section 2) splits the network at the last pooling layer: the convolutional layers
run once on the whole image and give a feature map; RoI pooling cuts a ``p x p`` window out of
it for every region, and the layers after the pooling (fc6, fc7) run once per region. SPPNet
and Faster R-CNN split the same way; R-CNN runs both parts on each warped region. So every
backbone here is those two parts::

    trunk: images (N, 3, H_in, W_in), normalised  ->  features (N, C, H, W)
    head:  pooled RoIs (R, C, p, p)                ->  (R, D)

with stride 16 and ``H = ceil(H_in / 16)``, ``W = ceil(W_in / 16)``: a 600x800 image gives
the 38x50 map of the papers (38 * 50 * 9 = 17,100 anchors). py-faster-rcnn's Caffe rounds its
VGG16 pooling up, and so do we (``ceil_mode=True``); the other trunks get the same rule from
3x3/2 and 7x7/2 layers with "same" padding, each of which maps a size ``s`` to ``ceil(s / 2)``.

=========  ==================================  =====  ===  ===========================  =====
name       trunk                                 C     p   head                           D
=========  ==================================  =====  ===  ===========================  =====
small      9 conv3x3 + BatchNorm (ours, CPU)     128    7   1x1 -> 32, fc6, fc7            256
zf         ZF conv1-conv5 (py-faster-rcnn)       256    6   fc6, fc7 with dropout         4096
vgg16      conv1_1 .. conv5_3 (no pool5)         512    7   fc6, fc7 with dropout         4096
resnet18   conv1 .. layer3 ("C4")                256   14   layer4 + global average pool   512
resnet50   conv1 .. layer3                      1024   14   layer4 + global average pool  2048
resnet101  conv1 .. layer3                      1024   14   layer4 + global average pool  2048
=========  ==================================  =====  ===  ===========================  =====

The small backbone also names a finer layer of its trunk, conv3_2 at stride 8, as a ``Tap``:
Fast R-CNN's head pools it beside the stride-16 map ("skip pooling", as ION and HyperNet
pooled conv3 and conv4 beside conv5 of VGG16), which a trunk this small needs for the
shapes of objects that cover one or two cells of the stride-16 map (``rcnn.heads``).

``p`` is the RoI pooling size the head expects: 7x7 as in Fast R-CNN for VGG16, 6x6 for ZF
(py-faster-rcnn's ``roi_pool_conv5``, ZF's pool5 being 6x6), and 14x14 for the ResNets, whose
layer4 starts with a stride-2 block that turns it into 7x7 (the "C4" design of Detectron).

Pretrained weights come as torchvision-format files (see ``load_pretrained``). Fine-tuning a
pretrained backbone fixes its early layers, as the papers did (``frozen``): VGG16's conv1 and
conv2 (py-faster-rcnn), ResNet's conv1 and layer1 and every BatchNorm (Detectron).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn.errors import RcnnError
from rcnn.structures import ImageBatch
from rcnn.weights import read_weight_file

BACKBONE_NAMES = ("small", "zf", "vgg16", "resnet18", "resnet50", "resnet101")

# torchvision's ImageNet statistics of RGB inputs in [0, 1]; the data transforms normalise
# images with a backbone's pixel_mean and pixel_std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Tap:
    """A trunk layer (a child of the Trunk, by name) whose output map the detection head pools
    too: ``channels`` channels at ``stride`` pixels a cell."""

    layer: str
    stride: int
    channels: int


class Trunk(nn.Sequential):
    """The convolutional layers, run in order; ``tapped`` also hands back named layers' maps."""

    def forward(self, images: Tensor) -> Tensor:
        return self.tapped(images)[0]

    def tapped(self, images: Tensor, layers: tuple[str, ...] = ()) -> tuple[Tensor, list[Tensor]]:
        """images (N, 3, H_in, W_in) -> (the last layer's map, [the map of each of ``layers``])."""
        maps = {}
        x = images
        for name, layer in self.named_children():
            x = layer(x)
            if name in layers:
                maps[name] = x
        missing = [name for name in layers if name not in maps]
        if missing:
            raise ValueError(f"the trunk has no layer {missing[0]!r} to tap")
        return x, [maps[name] for name in layers]


def trunk_maps(
    trunk: nn.Module, images: Tensor, layers: tuple[str, ...] = ()
) -> tuple[Tensor, list[Tensor]]:
    """A trunk's last map and the maps of its tapped ``layers`` (a Trunk's ``tapped``); a
    trunk asked for no taps is simply called, whatever its class."""
    if not layers:
        return trunk(images), []
    return trunk.tapped(images, layers)


def test_maps(
    trunk: nn.Module, batch: ImageBatch, layers: tuple[str, ...], flip: bool
) -> tuple[Tensor, list[Tensor], tuple[Tensor, list[Tensor]] | None]:
    """A test batch's maps as ``trunk_maps`` gives them and, for flip testing, those of its
    mirrored images (``head.detect``'s ``mirrored``), from one trunk pass over the 2N images."""
    if not flip:
        return (*trunk_maps(trunk, batch.images, layers), None)
    n = batch.images.shape[0]
    both = torch.cat((batch.images, batch.mirrored_images()))
    features, taps = trunk_maps(trunk, both, layers)
    return features[:n], [t[:n] for t in taps], (features[n:], [t[n:] for t in taps])


class Backbone(nn.Module):
    """A trunk and a per-RoI head, and what a detector needs to know to put them together.

    ``forward(images (N, 3, H_in, W_in)) -> (N, out_channels, ceil(H_in/16), ceil(W_in/16))``
    runs the trunk; ``head(pooled (R, out_channels, pool_size, pool_size)) -> (R,
    representation_size)``. The head is an ``nn.Sequential`` whose fully connected layers
    are named ``fc6`` and ``fc7`` where it has them (Fast R-CNN's truncated SVD replaces them).
    ``frozen`` says whether the paper's fine-tuning set-up is in place (early layers and
    BatchNorm fixed); ``pretrained_report`` is set when ``build_backbone`` loaded a file.
    ``taps`` name the finer trunk layers a detection head may pool beside the last one.
    """

    stride = 16

    def __init__(
        self,
        name: str,
        trunk: Trunk,
        head: nn.Sequential,
        *,
        out_channels: int,
        representation_size: int,
        pool_size: int,
        frozen: bool,
        taps: tuple[Tap, ...] = (),
    ):
        super().__init__()
        self.name = name
        self.taps = taps
        self.trunk = trunk
        self.head = head
        self.out_channels = out_channels
        self.representation_size = representation_size
        self.pool_size = pool_size
        self.frozen = frozen
        self.pixel_mean = IMAGENET_MEAN
        self.pixel_std = IMAGENET_STD
        self.pretrained_report: PretrainedReport | None = None

    def forward(self, images: Tensor) -> Tensor:
        """Normalised images (N, 3, H_in, W_in) -> features (N, C, ceil(H_in/16), ceil(W_in/16))."""
        return self.trunk(images)


def build_backbone(
    name: str, pretrained: str | os.PathLike | None = None, *, frozen: bool | None = None
) -> Backbone:
    """The backbone called ``name`` (one of ``BACKBONE_NAMES``), loaded from ``pretrained``.

    ``frozen`` defaults to "a pretrained file was given": fine-tuning fixes the early layers
    and the ResNets' BatchNorm, training from scratch does not. Pass ``frozen=True`` without
    a file to rebuild a fine-tuned detector's structure before loading its checkpoint.
    """
    frozen = pretrained is not None if frozen is None else frozen
    if name == "small":
        backbone = _small(frozen)
    elif name == "zf":
        backbone = _zf(frozen)
    elif name == "vgg16":
        backbone = _vgg16(frozen)
    elif name in _RESNET_LAYOUTS:
        backbone = _resnet(name, frozen)
    else:
        raise RcnnError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONE_NAMES)}")
    if pretrained is not None:
        backbone.pretrained_report = load_pretrained(backbone, pretrained)
    return backbone


# ----------------------------------------------------------------------------------------
# small: a CPU backbone that trains from scratch in minutes


def _small(frozen: bool) -> Backbone:
    """Nine 3x3 conv + BatchNorm + ReLU layers, 16 -> 128 channels, stride 16.

    Four stride-2 convolutions (conv1, conv2_1, conv3_1, conv4_1) reach stride 16. The
    receptive field after each layer is 3, 7, 15, 23, 39, 55, 87, 119, 151 pixels (183 behind
    the RPN's 3x3 conv). That is less than the largest objects (~250 px), which is fine for
    the reason Faster R-CNN gives (section 3.1.1): the extent of an object can be inferred
    from its middle, and the RoI head pools over the whole box anyway. About 0.39 GMAC
    (0.79 GFLOP) for a 320x320 image.

    The trunk normalises with BatchNorm, the head with GroupNorm (8 channels a group), which
    normalises each RoI on its own. The head reduces the pooled 7x7 RoIs to 32 channels with
    a 1x1 conv (+ GroupNorm, ReLU) before fc6 (256) and fc7 (256): 0.67 MMAC per RoI, 86 MMAC
    for 128 RoIs, a fifth of the trunk, where fc6 on all 128 channels would cost 1.6 MMAC
    per RoI. No dropout: the net is small and trains for minutes. ``frozen`` fixes nothing.

    conv3_2 (64 channels, stride 8) is tapped for skip pooling: at stride 16 an object under
    32 px covers one or two cells, too few for the head to tell a circle from a hexagon.
    Pooling conv3_2 beside conv4_4 (``rcnn.heads``) took Faster R-CNN on shapes from mAP50
    0.744 to 0.826 in the demo's 7 minutes (COCO AP 0.540 to 0.615).

    Faster R-CNN on the built-in shapes, 1,000 AdamW steps of 4 images from scratch: mAP50
    0.319 with the trunk's BatchNorm, 0.112 with GroupNorm there instead (whose statistics
    of each image on its own had been chosen to behave the same for any batch size); a
    64-channel reduction in the head gave 0.120 against 0.112. Classifying RoIs of shapes
    (600 SGD steps of 4 images): without the head's GroupNorm 25% against 29%; dilated convs
    at stride 16 (279 px receptive field) 19%; a wider stride-8 stage or a fifth conv at
    stride 16 did not help.
    """
    layers = [  # (name, in channels, out channels, stride)
        ("conv1", 3, 16, 2),
        ("conv2_1", 16, 32, 2),
        ("conv2_2", 32, 32, 1),
        ("conv3_1", 32, 64, 2),
        ("conv3_2", 64, 64, 1),
        ("conv4_1", 64, 128, 2),
        ("conv4_2", 128, 128, 1),
        ("conv4_3", 128, 128, 1),
        ("conv4_4", 128, 128, 1),
    ]
    trunk = Trunk(
        OrderedDict((name, _conv_norm_relu(*spec, nn.BatchNorm2d)) for name, *spec in layers)
    )
    reduce = ("reduce", _conv_norm_relu(128, 32, 1, _group_norm, kernel_size=1))
    head = nn.Sequential(OrderedDict([reduce, *fc_layers(32 * 7 * 7, 256, dropout=0.0)]))
    backbone = Backbone(
        "small",
        trunk,
        head,
        out_channels=128,
        representation_size=256,
        pool_size=7,
        frozen=frozen,
        taps=(Tap("conv3_2", 8, 64),),
    )
    init_from_scratch(backbone)
    return backbone


def _conv_norm_relu(
    in_channels: int, out_channels: int, stride: int, norm, kernel_size: int = 3
) -> nn.Sequential:
    """Convolution ("same" padding), ``norm(out_channels)``, ReLU."""
    padding = kernel_size // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    return nn.Sequential(
        OrderedDict(conv=conv, norm=norm(out_channels), relu=nn.ReLU(inplace=True))
    )


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of 8 channels a group."""
    return nn.GroupNorm(channels // 8, channels)


def fc_layers(in_features: int, hidden: int, dropout: float) -> list[tuple[str, nn.Module]]:
    """flatten, fc6, relu6, [drop6], fc7, relu7, [drop7]: the layers after RoI pooling."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for name, size in (("6", in_features), ("7", hidden)):
        layers += [(f"fc{name}", nn.Linear(size, hidden)), (f"relu{name}", nn.ReLU(inplace=True))]
        if dropout > 0:
            layers.append((f"drop{name}", nn.Dropout(dropout)))
    return layers


def init_from_scratch(module: nn.Module) -> None:
    """Kaiming-normal weights for every conv and fc layer (each feeds a ReLU), zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.bias is not None:
            nn.init.zeros_(layer.bias)


# ----------------------------------------------------------------------------------------
# ZF: Zeiler and Fergus's net, as py-faster-rcnn's ZF/faster_rcnn_end2end used it


class WithinChannelLRN(nn.Module):
    """Caffe's local response normalisation with ``norm_region: WITHIN_CHANNEL`` (ZF's norm1/2).

    ``x / (1 + alpha * mean(x^2 over a size x size window))^beta``, each channel on its own;
    the window is zero-padded at the borders and the padding counts in the mean, as in Caffe.
    (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        mean_square = F.avg_pool2d(x * x, self.size, 1, self.size // 2, count_include_pad=True)
        return x / (1 + self.alpha * mean_square).pow(self.beta)


def _zf(frozen: bool) -> Backbone:
    """conv1 96 7x7/2, LRN, pool 3x3/2, conv2 256 5x5/2, LRN, pool, conv3 384, conv4 384, conv5 256.

    No torchvision file exists for ZF: it trains from scratch or loads our own checkpoints.
    Caffe's ceil-mode pooling would give one cell more at some sizes (39x51 at 600x800);
    floor mode keeps the ceil(H/16) rule of every other backbone. ``frozen`` fixes nothing:
    py-faster-rcnn's end-to-end ZF trains every layer.
    """
    trunk = Trunk(
        OrderedDict(
            conv1=nn.Conv2d(3, 96, kernel_size=7, stride=2, padding=3),
            relu1=nn.ReLU(inplace=True),
            norm1=WithinChannelLRN(),
            pool1=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            conv2=nn.Conv2d(96, 256, kernel_size=5, stride=2, padding=2),
            relu2=nn.ReLU(inplace=True),
            norm2=WithinChannelLRN(),
            pool2=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            conv3=nn.Conv2d(256, 384, kernel_size=3, padding=1),
            relu3=nn.ReLU(inplace=True),
            conv4=nn.Conv2d(384, 384, kernel_size=3, padding=1),
            relu4=nn.ReLU(inplace=True),
            conv5=nn.Conv2d(384, 256, kernel_size=3, padding=1),
            relu5=nn.ReLU(inplace=True),
        )
    )
    head = nn.Sequential(OrderedDict(fc_layers(256 * 6 * 6, 4096, dropout=0.5)))
    backbone = Backbone(
        "zf", trunk, head, out_channels=256, representation_size=4096, pool_size=6, frozen=frozen
    )
    init_from_scratch(backbone)
    return backbone


# ----------------------------------------------------------------------------------------
# VGG16: torchvision's layout, so that ``features.*`` and ``classifier.*`` keys map onto ours

# torchvision's configuration "D" without the last "M" (pool5): the trunk ends at conv5_3's
# ReLU, features[:30]. Conv layers sit at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26,
# 28 (conv1_1 ... conv5_3), each followed by its ReLU; "M" is a 2x2/2 max pooling.
_VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG16_FROZEN = 10  # trunk[:10] = conv1_1 .. pool2: py-faster-rcnn fixes conv1 and conv2


def _vgg16(frozen: bool) -> Backbone:
    """VGG16's conv1_1 .. conv5_3 (stride 16, ceil-mode pools) and fc6, fc7 with dropout."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    trunk = Trunk(*layers)
    head = nn.Sequential(OrderedDict(fc_layers(512 * 7 * 7, 4096, dropout=0.5)))
    backbone = Backbone(
        "vgg16", trunk, head, out_channels=512, representation_size=4096, pool_size=7, frozen=frozen
    )
    init_from_scratch(backbone)
    if frozen:
        trunk[:_VGG16_FROZEN].requires_grad_(False)
    return backbone


# ----------------------------------------------------------------------------------------
# ResNet: torchvision's layout; trunk = conv1 .. layer3 (stride 16), head = layer4 + pooling


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (Detectron's, for pretrained ResNets).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, per channel, in
    training and testing alike. All four are buffers, not parameters: nothing learns them.
    Its state-dict keys are BatchNorm2d's, less ``num_batches_tracked``. (N, C, H, W) ->
    (N, C, H, W), in the input's dtype.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        # (C,) -> (C, 1, 1), broadcast over (N, C, H, W)
        return x * scale.to(x.dtype)[:, None, None] + shift.to(x.dtype)[:, None, None]


class BasicBlock(nn.Module):
    """ResNet-18's block: two 3x3 convs and the shortcut; the first conv carries the stride."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, norm: type[nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, planes, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50/101's block: 1x1 reduce, 3x3 (with the stride, as torchvision), 1x1 expand x4."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, norm: type[nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, planes * self.expansion, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: type[nn.Module]):
    """The projection shortcut (1x1 conv + norm) where the shape changes, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
    return nn.Sequential(conv, norm(out_channels))


# name -> (block, blocks in layer1..layer4)
_RESNET_LAYOUTS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def _resnet(name: str, frozen: bool) -> Backbone:
    """torchvision's ResNet: trunk conv1 .. layer3 (C4, stride 16), head layer4 + average pool.

    Frozen (fine-tuning a pretrained net, Detectron's default): FrozenBatchNorm2d throughout,
    and conv1 and layer1 fixed. From scratch: ordinary, trained BatchNorm2d.
    """
    block, blocks = _RESNET_LAYOUTS[name]
    norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    widths, layers, in_channels = (64, 128, 256, 512), [], 64
    for index, (planes, count) in enumerate(zip(widths, blocks, strict=True)):
        stride = 1 if index == 0 else 2
        layers.append(_resnet_layer(block, in_channels, planes, count, stride, norm))
        in_channels = planes * block.expansion
    stem = OrderedDict(
        conv1=nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
        bn1=norm(64),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    trunk = Trunk(OrderedDict(**stem, layer1=layers[0], layer2=layers[1], layer3=layers[2]))
    head = nn.Sequential(
        OrderedDict(layer4=layers[3], avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())
    )
    out_channels = widths[2] * block.expansion
    backbone = Backbone(
        name,
        trunk,
        head,
        out_channels=out_channels,
        representation_size=in_channels,
        pool_size=14,
        frozen=frozen,
    )
    init_from_scratch(backbone)
    if frozen:
        trunk.conv1.requires_grad_(False)
        trunk.layer1.requires_grad_(False)
    return backbone


def _resnet_layer(
    block: type[BasicBlock | Bottleneck],
    in_channels: int,
    planes: int,
    count: int,
    stride: int,
    norm: type[nn.Module],
) -> nn.Sequential:
    """``count`` blocks; the first changes the stride and width, the others keep them."""
    blocks = [block(in_channels, planes, stride, norm)]
    blocks += [block(planes * block.expansion, planes, 1, norm) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


# ----------------------------------------------------------------------------------------
# Pretrained weights: torchvision's files (or our own) mapped onto our keys

# our key prefix -> torchvision's key prefix, first match wins. The trunk and head mirror
# torchvision's module names, so the table only moves prefixes; what it leaves out of the
# file (VGG16's classifier.6, ResNet's fc: ImageNet's 1000 classes) is ignored.
_VGG16_PREFIXES = (
    ("trunk.", "features."),
    ("head.fc6.", "classifier.0."),
    ("head.fc7.", "classifier.3."),
)
_RESNET_PREFIXES = (("trunk.", ""), ("head.layer4.", "layer4."))
_TORCHVISION_PREFIXES = {
    "vgg16": _VGG16_PREFIXES,
    "resnet18": _RESNET_PREFIXES,
    "resnet50": _RESNET_PREFIXES,
    "resnet101": _RESNET_PREFIXES,
}
# BatchNorm's batch counter: loaded into a trained BatchNorm2d when the file has it, never required
_OPTIONAL_SUFFIX = ".num_batches_tracked"


@dataclass(frozen=True)
class PretrainedReport:
    """What ``load_pretrained`` did: the file's layout, our keys it filled, its keys unused."""

    path: str
    layout: str  # "torchvision" or "rcnn" (our own keys, e.g. a checkpoint of ours)
    loaded: tuple[str, ...]
    ignored: tuple[str, ...]

    def __str__(self) -> str:
        ignored = f"; ignored {len(self.ignored)}: {_preview(self.ignored)}" if self.ignored else ""
        return f"{self.path}: loaded {len(self.loaded)} tensors ({self.layout} layout){ignored}"


def load_pretrained(backbone: Backbone, path: str | os.PathLike) -> PretrainedReport:
    """Copy the weights in ``path`` into ``backbone``, every key present and every shape right.

    The file is torchvision's layout (``vgg16``, ``resnet*``: ``features.0.weight``,
    ``layer1.0.conv1.weight``, ...) or ours (``trunk.*``, ``head.*``, under any prefix such as
    a detector's ``backbone.``), whichever matches more keys. Raises ``RcnnError`` naming the
    file and the first problems when it is not a weight file or does not fit this backbone.
    """
    path = str(path)
    tensors = read_weight_file(path)
    ours = backbone.state_dict()  # tensors sharing storage with the parameters and buffers
    layout, mapping = max(_layouts(backbone.name, ours, tensors), key=lambda m: _hits(m, tensors))
    _check_fits(path, backbone.name, ours, mapping, tensors)
    with torch.no_grad():
        for our_key, file_key in mapping.items():
            if file_key in tensors:
                ours[our_key].copy_(tensors[file_key])
    used = set(mapping.values())
    ignored = [k for k in tensors if k not in used and not k.endswith(_OPTIONAL_SUFFIX)]
    loaded = [our_key for our_key, file_key in mapping.items() if file_key in tensors]
    return PretrainedReport(path, layout, tuple(loaded), tuple(ignored))


def _layouts(name: str, ours: dict[str, Tensor], tensors: dict[str, Tensor]):
    """(layout, {our key: file key}) for each layout this backbone's files may have."""
    prefix = next((key[: key.index("trunk.")] for key in tensors if "trunk." in key), "")
    layouts = [("rcnn", {key: prefix + key for key in ours})]
    if name in _TORCHVISION_PREFIXES:
        rules = _TORCHVISION_PREFIXES[name]
        layouts.append(("torchvision", {key: _rename(key, rules) for key in ours}))
    return layouts


def _rename(key: str, rules: Iterable[tuple[str, str]]) -> str:
    for ours, theirs in rules:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise AssertionError(f"no torchvision name for {key!r}")  # every key starts trunk./head.


def _hits(layout: tuple[str, dict[str, str]], tensors: dict[str, Tensor]) -> int:
    return sum(file_key in tensors for file_key in layout[1].values())


def _check_fits(
    path: str,
    name: str,
    ours: dict[str, Tensor],
    mapping: dict[str, str],
    tensors: dict[str, Tensor],
) -> None:
    """Raise ``RcnnError`` unless every required key is in the file with our shape."""
    required = {k: v for k, v in mapping.items() if not k.endswith(_OPTIONAL_SUFFIX)}
    missing = [file_key for file_key in required.values() if file_key not in tensors]
    if len(missing) == len(required):
        raise RcnnError(
            f"{path}: not a {name} weight file: 0 of {len(required)} expected keys found "
            f"(it has {len(tensors)} tensors: {_preview(tensors)})"
        )
    wrong = [
        f"{file_key!r} is {tuple(tensors[file_key].shape)}, expected {tuple(ours[key].shape)}"
        for key, file_key in mapping.items()
        if file_key in tensors and tensors[file_key].shape != ours[key].shape
    ]
    if missing or wrong:
        problems = [f"missing {key!r}" for key in missing[:3]] + wrong[:3]
        raise RcnnError(
            f"{path}: does not fit the {name} backbone: {len(missing)} of {len(required)} "
            f"expected keys missing, {len(wrong)} of another shape: {'; '.join(problems)}"
        )


def _preview(keys: Iterable[str], count: int = 3) -> str:
    """'a', 'b', 'c', ... (N more)"""
    keys = list(keys)
    shown = ", ".join(repr(key) for key in keys[:count])
    return shown + (f", ... ({len(keys) - count} more)" if len(keys) > count else "")
