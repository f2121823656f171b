"""R-CNN and SPPNet: warping, pooling, stages, the feature cache, training and detection."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from rcnn.boxes import box_iou
from rcnn.config import from_dict, to_dict
from rcnn.data.dataset import DetectionDataset, WithProposals
from rcnn.data.transforms import TrainTransform, make_batch
from rcnn.models.build import RunConfig, build_model, preset
from rcnn.models.rcnn import RCNN, RCNNConfig, context_boxes, warp_regions
from rcnn.models.sppnet import SPPNet, SPPNetConfig
from rcnn.optim import TrainConfig, make_optimizer
from rcnn.train import FitContext
from tests.test_faster_rcnn import scene
from tests.tiny import tiny_backbone

FEW = dict(max_proposals=(60, 60))
MODELS = {
    "rcnn": lambda: RCNN(tiny_backbone(), 2, RCNNConfig(warp_size=64, **FEW)),
    "sppnet": lambda: SPPNet(tiny_backbone(), 2, SPPNetConfig(dropout=0.0, pretrain=True, **FEW)),
}
TRANSFORM = TrainTransform((128,), 160, 0.0)
SCENES = [
    [([20, 30, 70, 90], 1), ([90, 20, 140, 70], 2)],
    [([60, 40, 120, 100], 2)],
    [([10, 10, 50, 60], 1), ([70, 60, 130, 120], 1)],
]


class Scenes(DetectionDataset):
    """Hand-made scenes (``tests.test_faster_rcnn.scene``) as a data set: rectangles (1) and
    crosses (2) on a dark background."""

    def __init__(self, layouts):
        super().__init__("train", ("rectangle", "cross"))
        self.samples = [scene(objects) for objects in layouts]

    def __len__(self):
        return len(self.samples)

    def image_id(self, i):
        return f"scene{i}"

    def image_path(self, i):
        return f"scenes/{i}"

    def image_size(self, i):
        return tuple(self.samples[i].image.shape[-2:])

    def annotation(self, i):
        return self.samples[i].annotation

    def load_image(self, i):
        return self.samples[i].image


def with_proposals(dataset, seed=0):
    """Proposals as selective search would give them: boxes near each object, and clutter."""
    g = torch.Generator().manual_seed(seed)
    proposals = []
    for i in range(len(dataset)):
        gt = dataset.annotation(i).boxes
        near = gt.repeat(8, 1) + torch.randn(8 * len(gt), 4, generator=g) * 6
        corners = torch.rand(40, 2, generator=g) * torch.tensor([120.0, 100.0])
        clutter = torch.cat((corners, corners + 10 + torch.rand(40, 2, generator=g) * 50), dim=1)
        proposals.append(torch.cat((near, clutter)))
    return WithProposals(dataset, proposals)


def batch_of(model, dataset):
    return make_batch([TRANSFORM(dataset[i]) for i in range(len(dataset))], *model.pixel_stats, 16)


def fit_context(model, dataset, run_dir):
    return FitContext(dataset, TRANSFORM, model.pixel_stats, 16, run_dir, workers=0)


def sgd_steps(model, batch, steps, lr=0.02):
    optimizer = make_optimizer(model, TrainConfig(learning_rate=lr, weight_decay=1e-4))
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(batch)["cls"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_context_padding_leaves_p_pixels_of_context_at_the_warp_size():
    box = torch.tensor([[100.0, 50.0, 295.0, 148.0]])  # 195 x 98
    dilated = context_boxes(box, 227, 16.0)
    # 195 px become 227: 16 px of the warped image on each side are context; 98 px high
    # become 98 * 227 / 195, about the same centre
    half_height = 49 * 227 / 195
    expected = torch.tensor([[84.0, 99 - half_height, 311.0, 99 + half_height]])
    assert torch.allclose(dilated, expected, atol=1e-4)
    # the same fraction at any warp size: 16 / 227 of it
    assert torch.allclose(context_boxes(box, 64, 16.0), dilated, atol=1e-4)
    assert torch.equal(context_boxes(box, 227, 0.0), box)


def test_warping_a_pixel_aligned_box_copies_its_pixels_and_zeros_outside():
    image = torch.rand(3, 240, 260)
    box = torch.tensor([[40.0, 30.0, 235.0, 225.0]])  # 195 px: 227 px once padded
    dilated = context_boxes(box, 227, 16.0)  # [24, 14, 251, 241]: one row below the image
    crop = warp_regions(image, dilated, 227)[0]  # (3, 227, 227)
    assert torch.allclose(crop[:, :226], image[:, 14:240, 24:251], atol=1e-4)
    assert crop[:, 226].abs().max() < 1e-4  # outside the image: the mean, 0 once normalised
    # the original box is the crop's centre, 16 px from each side
    assert torch.allclose(crop[:, 16:211, 16:211], image[:, 30:225, 40:235], atol=1e-4)


def test_warping_stretches_each_axis_on_its_own():
    image = torch.arange(20.0).repeat(3, 10, 1)  # (3, 10, 20): the value is the column
    crop = warp_regions(image, torch.tensor([[4.0, 0.0, 12.0, 10.0]]), 4)[0]
    # 8 columns into 4: pixel j samples x = 4 + 2j + 1, between columns 4 + 2j and 5 + 2j
    assert torch.allclose(crop[0, 0], torch.tensor([4.5, 6.5, 8.5, 10.5]))
    assert torch.allclose(crop[0, :, 0], torch.full((4,), 4.5))


def test_pool5_of_a_224_warp_is_vgg16s_pooling_of_its_14x14_map():
    model = RCNN(tiny_backbone(), 2)
    features = torch.randn(3, 8, 14, 14)
    assert torch.equal(model.pool5(features), F.max_pool2d(features, 2))


@pytest.mark.parametrize("name", list(MODELS))
def test_model_trains_fits_and_finds_the_objects_of_its_training_scenes(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]()
    dataset = with_proposals(Scenes(SCENES))
    batch = batch_of(model, dataset)
    for i, stage in enumerate(model.stages[: -len(model.fitted_stages)]):  # the SGD stages
        model.set_stage(stage)
        losses = sgd_steps(model, batch, 60 if i == 0 else 20)
        assert sum(losses[-5:]) < (0.5 if i == 0 else 1.0) * sum(losses[:5]), stage
    model.eval()
    for stage in model.fitted_stages:
        model.set_stage(stage)
        model.fit_stage(stage, fit_context(model, dataset, tmp_path))
    assert model.svms.fitted and model.regressors.fitted
    assert (tmp_path / "svm.json").is_file() and (tmp_path / "bbox-regression.json").is_file()
    with torch.no_grad():
        found = model(batch)
    for detections, annotation in zip(found, batch.annotations, strict=True):
        for box, label in zip(annotation.boxes, annotation.labels, strict=True):
            # a detection of its class on the SVM's object side (score > 0) covers it
            hits = detections.boxes[(detections.labels == label) & (detections.scores > 0)]
            assert box_iou(box[None], hits).max().item() > 0.5, (name, label.item())
        assert (detections.scores > 0).sum() <= 2 * len(annotation)  # and little else does
    # the SVMs and regressors are buffers: saved and loaded with the weights
    restored = MODELS[name]()
    restored.load_state_dict(model.state_dict())
    restored.eval()
    with torch.no_grad():
        again = restored(batch)
    assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(found, again, strict=True))


@pytest.mark.parametrize("name", list(MODELS))
def test_fitted_stages_compute_each_regions_features_once(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = MODELS[name]()
    model.config = dataclasses.replace(
        model.config, svm=dataclasses.replace(model.config.svm, initial_negatives=5)
    )
    dataset = with_proposals(Scenes(SCENES))
    calls = []
    region_features = model.region_features
    monkeypatch.setattr(model, "region_features", lambda *a: calls.append(1) or region_features(*a))
    model.eval()
    for stage in model.fitted_stages:
        model.fit_stage(stage, fit_context(model, dataset, tmp_path))
    assert len(calls) == len(dataset)  # one batch of regions per image, for both stages
    rounds = [
        len(c["added_per_round"])
        for c in json.loads((tmp_path / "svm.json").read_text())["per_class"]
    ]
    assert max(rounds) > 1  # mining rescored the cached negatives without recomputing them
    model.fit_stage("svm", fit_context(model, dataset, tmp_path))  # a resumed run: cached
    assert len(calls) == len(dataset)
    with torch.no_grad():
        model.head[-2].weight.mul_(2)  # fc7 changed: the features are computed again
    model.fit_stage("svm", fit_context(model, dataset, tmp_path))
    assert len(calls) == 2 * len(dataset)


def test_sppnet_finetuning_leaves_the_convolutions_unchanged():
    torch.manual_seed(0)
    model = MODELS["sppnet"]()
    batch = batch_of(model, with_proposals(Scenes(SCENES)))
    model.set_stage("finetune")
    trunk = [p.detach().clone() for p in model.trunk.parameters()]
    head = [p.detach().clone() for p in model.head.parameters()]
    sgd_steps(model, batch, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.trunk.parameters(), trunk, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(model.head.parameters(), head, strict=True))
    model.set_stage("pretrain")  # the stand-in for ImageNet pre-training trains them
    sgd_steps(model, batch, 1)
    assert not all(torch.equal(a, b) for a, b in zip(model.trunk.parameters(), trunk, strict=True))


def test_sppnet_multiscale_pools_each_region_at_the_scale_nearest_224_squared():
    torch.manual_seed(0)
    config = SPPNetConfig(scales=(64, 256), scale_target=100, **FEW)
    model = SPPNet(tiny_backbone(), 2, config).eval()
    dataset = with_proposals(Scenes(SCENES[:1]))
    batch = batch_of(model, dataset)
    boxes = [torch.tensor([[10.0, 10.0, 26.0, 26.0], [0.0, 0.0, 120.0, 100.0]])]
    with torch.no_grad():
        pooled, _ = model.region_features(batch, boxes)
        # the 16 px box is 32 px at 256 (image 128 px high): nearer 100 px than 8 px at 64
        for row, scale in ((0, 256), (1, 64)):
            factor = scale / 128
            image = F.interpolate(
                batch.images, scale_factor=factor, mode="bilinear", antialias=True
            )
            single = dataclasses.replace(batch, images=image)
            model.config = dataclasses.replace(config, scales=())
            expected, _ = model.region_features(single, [boxes[0][row : row + 1] * factor])
            model.config = config
            assert torch.allclose(pooled[row], expected[0], atol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_images_without_objects_or_proposals(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    dataset = with_proposals(Scenes([[]]))
    model.train()
    loss = model(batch_of(model, dataset))["cls"]  # every region is background
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    empty = WithProposals(Scenes([[]]), [torch.zeros(0, 4)])
    loss = model(batch_of(model, empty))["cls"]
    assert loss.item() == 0.0
    loss.backward()
    model.eval()
    with torch.no_grad():
        (found,) = model(batch_of(model, empty))
    assert len(found) == 0


@pytest.mark.parametrize("name", list(MODELS))
def test_small_presets_build_and_round_trip_through_the_run_config(name):
    config = preset(name, "small")
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(config)))) == config
    model = build_model(config, 3)
    assert model.config.max_proposals == (500, 500) and model.proposal_mode == "fast"
    if name == "sppnet":
        assert model.stages == ("pretrain", "finetune", "svm", "bbox-regression")
        return
    # a 112 x 112 warp gives the small trunk's 7 x 7 map: pool5 is that map, unpooled
    crops = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        features = model.trunk(crops)
    assert features.shape[-2:] == (7, 7)
    assert torch.equal(model.pool5(features), features)
