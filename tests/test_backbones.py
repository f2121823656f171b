import functools
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rcnn.backbones as backbones
from rcnn.backbones import (
    BACKBONE_NAMES,
    FrozenBatchNorm2d,
    Tap,
    WithinChannelLRN,
    build_backbone,
    load_pretrained,
    trunk_maps,
)
from rcnn.errors import RcnnError
from rcnn.heads import FastRCNNHead

# --- torchvision's published layouts, written out from its model definitions -------------

# torchvision.models.vgg16: features.{index} = Conv2d(in, out, 3, padding=1), index -> (out, in)
VGG16_CONVS = {
    0: (64, 3), 2: (64, 64),
    5: (128, 64), 7: (128, 128),
    10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512),
    24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
VGG16_CLASSIFIER = {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}


def vgg16_shapes() -> dict[str, tuple[int, ...]]:
    """The keys and shapes of torchvision.models.vgg16().state_dict()."""
    shapes = {}
    for index, (out, inp) in VGG16_CONVS.items():
        shapes[f"features.{index}.weight"] = (out, inp, 3, 3)
        shapes[f"features.{index}.bias"] = (out,)
    for index, (out, inp) in VGG16_CLASSIFIER.items():
        shapes[f"classifier.{index}.weight"] = (out, inp)
        shapes[f"classifier.{index}.bias"] = (out,)
    return shapes


def batch_norm_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    names = ("weight", "bias", "running_mean", "running_var")
    return {**{f"{prefix}.{n}": (channels,) for n in names}, f"{prefix}.num_batches_tracked": ()}


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """The keys and shapes of torchvision.models.resnet50().state_dict() (Bottleneck, 3-4-6-3)."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **batch_norm_shapes("bn1", 64)}
    inp = 64
    for layer, (planes, blocks) in enumerate(
        zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True), start=1
    ):
        for block in range(blocks):
            name = f"layer{layer}.{block}"
            shapes[f"{name}.conv1.weight"] = (planes, inp, 1, 1)
            shapes[f"{name}.conv2.weight"] = (planes, planes, 3, 3)
            shapes[f"{name}.conv3.weight"] = (planes * 4, planes, 1, 1)
            for bn, channels in (("bn1", planes), ("bn2", planes), ("bn3", planes * 4)):
                shapes.update(batch_norm_shapes(f"{name}.{bn}", channels))
            if block == 0:
                shapes[f"{name}.downsample.0.weight"] = (planes * 4, inp, 1, 1)
                shapes.update(batch_norm_shapes(f"{name}.downsample.1", planes * 4))
            inp = planes * 4
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        key: torch.randint(0, 1000, shape) if key.endswith("num_batches_tracked")
        else torch.empty(shape).uniform_(-1, 1)
        for key, shape in shapes.items()
    }  # fmt: skip


def test_torchvision_layouts_have_the_published_sizes():
    # known answers: len(state_dict()) and parameter counts of torchvision's models
    vgg, resnet = vgg16_shapes(), resnet50_shapes()
    assert len(vgg) == 32 and len(resnet) == 320
    assert sum(math.prod(s) for s in vgg.values()) == 138_357_544
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    parameters = [s for k, s in resnet.items() if not k.endswith(buffers)]
    assert sum(math.prod(s) for s in parameters) == 25_557_032


# --- fixtures: the big backbones once per module ------------------------------------------


@pytest.fixture(scope="module")
def vgg16():
    return build_backbone("vgg16", frozen=True)


@pytest.fixture(scope="module")
def built():
    """build_backbone(name), built once per module for the tests that only run it."""
    cache = {}

    def get(name: str) -> backbones.Backbone:
        if name not in cache:
            cache[name] = build_backbone(name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def resnet50():
    return build_backbone("resnet50", frozen=True)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    state_dict = random_state_dict(resnet50_shapes())
    path = tmp_path_factory.mktemp("weights") / "resnet50-0676ba61.pth"
    torch.save(state_dict, path)
    return path, state_dict


@functools.cache
def meta_backbone(name: str) -> backbones.Backbone:
    """The backbone on the meta device: shapes without the cost of real weights or arithmetic."""
    with torch.device("meta"):
        return build_backbone(name)


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_600x800_gives_the_papers_38x50_map(name):
    backbone = meta_backbone(name)
    features = backbone(torch.empty(2, 3, 600, 800, device="meta"))
    assert features.shape == (2, backbone.out_channels, 38, 50)
    assert backbone.stride == 16


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(BACKBONE_NAMES),
    height=st.integers(16, 1200),
    width=st.integers(16, 1200),
)
def test_feature_map_is_ceil_of_a_sixteenth(name, height, width):
    backbone = meta_backbone(name).eval()  # a trained BatchNorm refuses a 1x1 map of one image
    features = backbone(torch.empty(1, 3, height, width, device="meta"))
    assert features.shape[-2:] == (math.ceil(height / 16), math.ceil(width / 16))


@pytest.mark.parametrize(
    ("name", "size"), [("small", (600, 800)), ("zf", (97, 130)), ("resnet18", (97, 130))]
)
def test_real_forward_matches_the_meta_shapes(built, name, size):
    backbone = built(name).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, *size))
    expected = (1, backbone.out_channels, math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    assert features.shape == expected
    assert torch.isfinite(features).all()


def test_vgg16_real_forward_on_a_small_image(vgg16):
    with torch.no_grad():
        features = vgg16.eval()(torch.randn(1, 3, 33, 50))
    assert features.shape == (1, 512, 3, 4)


@pytest.mark.parametrize(
    ("name", "channels", "pool", "dim"),
    [
        ("small", 128, 7, 256),
        ("zf", 256, 6, 4096),
        ("vgg16", 512, 7, 4096),
        ("resnet18", 256, 14, 512),
        ("resnet50", 1024, 14, 2048),
        ("resnet101", 1024, 14, 2048),
    ],
)
def test_head_takes_pooled_rois_to_vectors(name, channels, pool, dim):
    backbone = meta_backbone(name)
    assert (backbone.out_channels, backbone.pool_size, backbone.representation_size) == (
        channels,
        pool,
        dim,
    )
    for rois in (5, 0):
        pooled = torch.empty(rois, channels, pool, pool, device="meta")
        assert backbone.head(pooled).shape == (rois, dim)


@pytest.mark.parametrize("name", ["small", "zf", "resnet18"])
@pytest.mark.parametrize("training", [True, False])
def test_real_head_on_some_and_no_rois(built, name, training):
    backbone = built(name).train(training)
    p = backbone.pool_size
    for rois in (3, 0):
        out = backbone.head(torch.randn(rois, backbone.out_channels, p, p))
        assert out.shape == (rois, backbone.representation_size)


@pytest.mark.parametrize(
    ("name", "parameters"),
    [  # torchvision's counts less the ImageNet classifier (classifier.6 / fc)
        ("vgg16", 138_357_544 - 4_097_000),
        ("resnet18", 11_689_512 - 513_000),
        ("resnet50", 25_557_032 - 2_049_000),
        ("resnet101", 44_549_160 - 2_049_000),
    ],
)
def test_parameter_counts_are_torchvisions(name, parameters):
    backbone = meta_backbone(name)  # from scratch: BatchNorm's affine terms are parameters
    assert sum(p.numel() for p in backbone.parameters()) == parameters


def test_heads_expose_fc6_and_fc7_by_name():
    for name, hidden in (("small", 256), ("zf", 4096), ("vgg16", 4096)):
        head = meta_backbone(name).head
        assert isinstance(head.fc6, nn.Linear) and isinstance(head.fc7, nn.Linear)
        assert head.fc6.out_features == head.fc7.in_features == head.fc7.out_features == hidden


# --- frozen layers ----------------------------------------------------------------------------


def trainable(backbone):
    return {name for name, p in backbone.named_parameters() if p.requires_grad}


def test_vgg16_fine_tuning_fixes_conv1_and_conv2(vgg16):
    fixed = {name for name, p in vgg16.named_parameters() if not p.requires_grad}
    # conv1_1, conv1_2, conv2_1, conv2_2: features 0, 2, 5, 7
    assert fixed == {f"trunk.{i}.{k}" for i in (0, 2, 5, 7) for k in ("weight", "bias")}
    assert {"trunk.10.weight", "trunk.28.weight", "head.fc6.weight"} <= trainable(vgg16)
    assert vgg16.frozen
    assert all(p.requires_grad for p in meta_backbone("vgg16").parameters())


def test_resnet_fine_tuning_fixes_conv1_layer1_and_batch_norm(resnet50):
    fixed = {name for name, p in resnet50.named_parameters() if not p.requires_grad}
    assert fixed and all(n.startswith(("trunk.conv1.", "trunk.layer1.")) for n in fixed)
    assert all(n.startswith(("trunk.layer2", "trunk.layer3", "head.")) for n in trainable(resnet50))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet50.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in resnet50.modules()) == 53
    scratch = meta_backbone("resnet50")
    assert not scratch.frozen and all(p.requires_grad for p in scratch.parameters())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in scratch.modules()) == 53


def test_frozen_batch_norm_is_batch_norm_in_eval_mode_with_nothing_to_learn():
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(6).eval()
    reference.running_mean.uniform_(-1, 1)
    reference.running_var.uniform_(0.5, 2)
    nn.init.uniform_(reference.weight, -2, 2)
    nn.init.uniform_(reference.bias, -1, 1)
    frozen = FrozenBatchNorm2d(6)
    state = {k: v for k, v in reference.state_dict().items() if k != "num_batches_tracked"}
    frozen.load_state_dict(state)
    x = torch.randn(3, 6, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(frozen.train()(x), reference.double()(x))
    assert frozen(x).dtype == torch.float64
    assert list(frozen.parameters()) == []
    assert frozen(x[:0]).shape == (0, 6, 5, 4)


# --- small and ZF ---------------------------------------------------------------------------


def test_small_normalises_the_trunk_by_batch_and_the_head_by_region():
    backbone = build_backbone("small")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in backbone.trunk.modules()) == 9
    assert not any(isinstance(m, nn.GroupNorm) for m in backbone.trunk.modules())
    # the head's GroupNorm: each RoI's vector does not depend on the other RoIs
    pooled = torch.randn(5, 128, 7, 7)
    with torch.no_grad():
        together = backbone.head(pooled)
        alone = torch.cat([backbone.head(roi[None]) for roi in pooled])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def random_rois(count: int, images: int, extent: float, generator) -> torch.Tensor:
    """(count, 5) RoIs spread over ``images`` images, corners in [-5, extent - 5], float64."""
    corners = torch.rand(count, 2, 2, generator=generator, dtype=torch.float64) * extent - 5
    image = (torch.arange(count) * images // count).double()[:, None]
    return torch.cat((image, corners.min(1)[0], corners.max(1)[0]), 1)


@pytest.mark.parametrize("roi_op", ["align", "pool"])
def test_small_head_reduces_channels_before_roialign_with_the_same_result(roi_op):
    backbone = build_backbone("small").double()
    head = FastRCNNHead.on(backbone, 4, roi_op, skip_pooling=False).double()
    assert head._opening_projection() is backbone.head.reduce
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 128, 9, 11, dtype=torch.float64, generator=generator)
    features.requires_grad_(True)
    rois = random_rois(6, 2, 170, generator)
    outputs = head(features, rois)
    # RoIAlign and the bias-free 1x1 conv are both linear, so they commute; max pooling is not,
    # and there the conv runs after it: both ways equal the per-region layers on pooled RoIs
    reference = head.representation(head.pool(features, rois))
    expected = (head.cls_score(reference), head.bbox_pred(reference))
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(got, want)
    conv = head.representation.reduce.conv.weight
    grads = torch.autograd.grad(sum(o.sum() for o in outputs), (features, conv))
    want = torch.autograd.grad(sum(o.sum() for o in expected), (features, conv))
    for got_grad, want_grad in zip(grads, want, strict=True):
        torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("roi_op", ["align", "pool"])
def test_skip_pooling_is_one_1x1_conv_over_the_concatenated_grids(roi_op):
    backbone = build_backbone("small").double()
    head = FastRCNNHead.on(backbone, 4, roi_op).double()
    assert head.tap_layers == ("conv3_2",) and head.taps[0].stride == 8
    generator = torch.Generator().manual_seed(1)
    skip = head.skip[0].weight
    with torch.no_grad():
        skip.copy_(torch.randn(skip.shape, generator=generator, dtype=torch.float64))
    features = torch.randn(2, 128, 9, 11, dtype=torch.float64, generator=generator)
    tapped = torch.randn(2, 64, 18, 22, dtype=torch.float64, generator=generator)
    rois = random_rois(6, 2, 170, generator)
    logits, deltas = head(features, rois, [tapped])
    # ION's form: both grids pooled, concatenated, one 1x1 conv over the 192 channels
    grids = torch.cat((head.pool(features, rois), head.pool(tapped, rois, 1 / 8)), 1)
    reduce = head.representation.reduce
    weight = torch.cat((reduce.conv.weight, skip), 1)  # (32, 128 + 64, 1, 1)
    x = reduce.relu(reduce.norm(torch.nn.functional.conv2d(grids, weight)))
    reference = head.representation[1:](x)
    torch.testing.assert_close(logits, head.cls_score(reference))
    torch.testing.assert_close(deltas, head.bbox_pred(reference))


def test_a_new_skip_pooling_head_is_the_plain_head_and_learns_from_the_tap():
    torch.manual_seed(0)
    backbone = build_backbone("small")
    with_skip = FastRCNNHead.on(backbone, 4, "align")
    plain = FastRCNNHead.on(backbone, 4, "align", skip_pooling=False)
    plain.load_state_dict(with_skip.state_dict(), strict=False)  # the same weights, less skip
    images = torch.randn(2, 3, 96, 128)
    features, taps = trunk_maps(backbone.trunk, images, with_skip.tap_layers)
    assert taps[0].shape == (2, 64, 12, 16)  # conv3_2: stride 8
    rois = random_rois(5, 2, 120, torch.Generator().manual_seed(2)).float()
    torch.testing.assert_close(with_skip(features, rois, taps), plain(features, rois))
    with_skip(features, rois, taps)[0].square().sum().backward()
    assert with_skip.skip[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):  # the tapped maps cannot be left out
        with_skip(features, rois)


def test_trunk_taps_its_named_layers_and_refuses_unknown_ones():
    trunk = build_backbone("small").trunk
    images = torch.randn(1, 3, 64, 64)
    last, (conv2_2, conv3_2) = trunk.tapped(images, ("conv2_2", "conv3_2"))
    assert conv2_2.shape == (1, 32, 16, 16) and conv3_2.shape == (1, 64, 8, 8)
    torch.testing.assert_close(last, trunk(images))
    with pytest.raises(ValueError, match="conv9"):
        trunk.tapped(images, ("conv9",))
    with pytest.raises(ValueError, match="1x1"):  # VGG16's fc6 cannot take a second grid
        FastRCNNHead(meta_backbone("vgg16").head, 4096, 4, 7, 1 / 16, "align", (Tap("x", 8, 64),))


def test_heads_without_a_leading_linear_projection_pool_first():
    for name in ("zf", "resnet18"):
        assert FastRCNNHead.on(meta_backbone(name), 4, "align")._opening_projection() is None


def test_small_trains_every_parameter():
    backbone = build_backbone("small")
    features = backbone(torch.randn(2, 3, 96, 96))
    vectors = backbone.head(torch.randn(4, 128, 7, 7))
    (features.square().mean() + vectors.square().mean()).backward()
    for name, parameter in backbone.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def receptive_field(trunk: nn.Sequential, size: int = 448) -> int:
    """Width of the input region one output cell depends on, measured by its gradient.

    Norm and ReLU layers become identities and every conv weight 1 / fan_in, so no path
    cancels and the gradient is positive exactly on the receptive field.
    """
    linear = _linearised(trunk).double()
    image = torch.zeros(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = linear(image)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    columns = image.grad[0, 0].abs().sum(0).nonzero()
    return int(columns.max() - columns.min() + 1)


def _linearised(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.GroupNorm, nn.ReLU)):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.Conv2d):
            nn.init.constant_(child.weight, 1 / child.weight[0].numel())
        else:
            _linearised(child)
    return module


def test_small_receptive_field():
    # nine 3x3 convs, four of them with stride 2 (see _small's docstring)
    assert receptive_field(build_backbone("small").trunk) == 151


def test_within_channel_lrn_known_values():
    lrn = WithinChannelLRN(size=3, alpha=0.5, beta=0.75)
    x = torch.full((1, 2, 4, 4), 2.0, dtype=torch.float64)
    out = lrn(x)
    # inside: mean of x^2 over 3x3 = 4; at a corner only 4 of the 9 window cells are inside
    assert out[0, 0, 1, 1].item() == pytest.approx(2.0 / (1 + 0.5 * 4) ** 0.75)
    assert out[0, 1, 0, 0].item() == pytest.approx(2.0 / (1 + 0.5 * 4 * 4 / 9) ** 0.75)
    assert out.dtype == torch.float64
    # channels do not mix: zeroing channel 0 leaves channel 1 as it was
    x[0, 0] = 0
    torch.testing.assert_close(lrn(x)[0, 1], out[0, 1])


def test_zf_layers_are_the_papers():
    trunk = meta_backbone("zf").trunk
    convs = [
        (m.out_channels, m.kernel_size[0], m.stride[0]) for m in trunk if isinstance(m, nn.Conv2d)
    ]
    assert convs == [(96, 7, 2), (256, 5, 2), (384, 3, 1), (384, 3, 1), (256, 3, 1)]
    assert isinstance(trunk.norm1, WithinChannelLRN) and isinstance(trunk.norm2, WithinChannelLRN)


# --- pretrained weights: torchvision's layouts --------------------------------------------


def test_vgg16_torchvision_weights_land_in_the_right_layers(vgg16, monkeypatch):
    state_dict = random_state_dict(vgg16_shapes())
    monkeypatch.setattr(backbones, "read_weight_file", lambda path: state_dict)
    report = load_pretrained(vgg16, "vgg16-397923af.pth")

    assert report.layout == "torchvision" and len(report.loaded) == 30
    assert report.ignored == ("classifier.6.weight", "classifier.6.bias")
    assert torch.equal(vgg16.trunk[0].weight, state_dict["features.0.weight"])  # conv1_1
    assert torch.equal(vgg16.trunk[28].bias, state_dict["features.28.bias"])  # conv5_3
    assert torch.equal(vgg16.head.fc6.weight, state_dict["classifier.0.weight"])
    assert torch.equal(vgg16.head.fc7.bias, state_dict["classifier.3.bias"])
    for key, value in vgg16.state_dict().items():
        source = key.replace("trunk.", "features.").replace("head.fc6.", "classifier.0.")
        assert torch.equal(value, state_dict[source.replace("head.fc7.", "classifier.3.")]), key
    assert not vgg16.trunk[0].weight.requires_grad  # loading keeps conv1 fixed


def test_resnet50_torchvision_file_lands_in_the_right_layers(resnet50, resnet50_file):
    path, state_dict = resnet50_file
    report = load_pretrained(resnet50, path)

    assert report.layout == "torchvision" and report.ignored == ("fc.weight", "fc.bias")
    assert len(report.loaded) == 320 - 2 - 53  # less fc and the BatchNorm counters
    assert "resnet50-0676ba61.pth" in str(report) and "'fc.weight'" in str(report)
    assert torch.equal(resnet50.trunk.conv1.weight, state_dict["conv1.weight"])
    assert torch.equal(
        resnet50.trunk.layer3[5].bn2.running_var, state_dict["layer3.5.bn2.running_var"]
    )
    assert torch.equal(resnet50.head.layer4[0].downsample[0].weight,
                       state_dict["layer4.0.downsample.0.weight"])  # fmt: skip
    assert torch.equal(resnet50.head.layer4[2].bn3.bias, state_dict["layer4.2.bn3.bias"])
    for key, value in resnet50.state_dict().items():
        assert torch.equal(value, state_dict[key.removeprefix("trunk.").removeprefix("head.")])


def test_resnet50_from_scratch_structure_loads_the_batch_norm_counters(resnet50_file):
    path, state_dict = resnet50_file
    backbone = build_backbone("resnet50", path, frozen=False)
    assert not backbone.frozen
    assert len(backbone.pretrained_report.loaded) == 320 - 2
    counter = backbone.trunk.layer2[1].bn1.num_batches_tracked
    assert torch.equal(counter, state_dict["layer2.1.bn1.num_batches_tracked"])


def test_build_backbone_with_a_file_fine_tunes(resnet50_file):
    path, state_dict = resnet50_file
    backbone = build_backbone("resnet50", str(path))
    assert backbone.frozen and backbone.pretrained_report.layout == "torchvision"
    assert not backbone.trunk.layer1[0].conv1.weight.requires_grad
    assert torch.equal(backbone.head.layer4[1].conv2.weight, state_dict["layer4.1.conv2.weight"])


# --- pretrained weights: our own files ------------------------------------------------------


def test_our_own_small_checkpoint_round_trips_nested_and_prefixed(tmp_path):
    source = build_backbone("small")
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["rpn.conv.weight"] = torch.zeros(3)  # the rest of a detector's checkpoint
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "epoch": 3}, path)
    target = build_backbone("small")
    report = load_pretrained(target, path)
    assert report.layout == "rcnn" and report.ignored == ("rpn.conv.weight",)
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_resnet50_weights_are_not_vgg16_weights(vgg16, resnet50_file):
    path, _ = resnet50_file
    expected = (
        r"resnet50-0676ba61\.pth: not a vgg16 weight file: 0 of 30 expected keys found .*'conv1"
    )
    with pytest.raises(RcnnError, match=expected):
        load_pretrained(vgg16, path)


def test_vgg16_weights_are_not_zf_weights(built, tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save({key: torch.zeros(1) for key in vgg16_shapes()}, path)
    with pytest.raises(RcnnError, match=r"vgg16\.pth: not a zf weight file: 0 of 14"):
        load_pretrained(built("zf"), path)


def test_wrong_shapes_and_missing_keys_are_named(vgg16, monkeypatch):
    shapes = vgg16_shapes()
    shapes["classifier.0.weight"] = (4096, 9216)  # fc6 of a 6x6 pool5 (ZF-like)
    del shapes["features.28.bias"]
    state_dict = {key: torch.empty(shape) for key, shape in shapes.items()}
    monkeypatch.setattr(backbones, "read_weight_file", lambda path: state_dict)
    with pytest.raises(RcnnError) as error:
        load_pretrained(vgg16, "odd.pth")
    message = str(error.value)
    assert message.startswith("odd.pth: does not fit the vgg16 backbone: 1 of 30")
    assert "missing 'features.28.bias'" in message
    assert "'classifier.0.weight' is (4096, 9216), expected (4096, 25088)" in message


def test_missing_file(tmp_path):
    with pytest.raises(RcnnError, match=r"nowhere\.pth: no such file"):
        build_backbone("small", tmp_path / "nowhere.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_random_bytes_are_not_a_weight_file(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(RcnnError, match=f"noise{suffix}: not a"):
        build_backbone("small", path)


class Payload:
    """Unpickling this runs ``exec``, which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize(
    ("protocol", "problem"),
    [  # torch's safe unpickler stops protocol 4 at its first FRAME, before the payload
        (2, r"refused to load: its pickle asks .*GLOBAL exec"),
        (4, r"not a weight file that can be read safely \(.*Unsupported operand 149\)"),
    ],
)
def test_a_pth_whose_pickle_runs_code_is_refused(tmp_path, protocol, problem):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": torch.zeros(1), "x": Payload(marker)}
    torch.save(payload, path, pickle_protocol=protocol)
    with pytest.raises(RcnnError, match=rf"evil\.pth: {problem}"):
        build_backbone("small", path)
    assert not marker.exists()
    # the payload is live: an unsafe load runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_unknown_backbone_names_the_choices():
    with pytest.raises(
        RcnnError, match="unknown backbone 'vgg19'; choose one of: small, zf, vgg16"
    ):
        build_backbone("vgg19")
