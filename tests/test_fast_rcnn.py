import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import rcnn.inference
import rcnn.runs
from rcnn.boxes import box_iou, to_rois
from rcnn.cli import main
from rcnn.models.build import RunConfig, build_model, preset
from rcnn.models.fast_rcnn import FastRCNN, FastRCNNConfig
from rcnn.structures import Detections
from rcnn.svd import compress_fc_layers
from tests.test_faster_rcnn import batch_of, scene, train_steps
from tests.tiny import tiny_backbone

OBJECTS = [([20, 30, 70, 90], 1), ([90, 20, 140, 70], 2)]


def with_proposals(sample, count=300, seed=0):
    """``sample`` with hand-made proposals: jittered copies of its boxes (foreground and
    near misses) and random boxes anywhere in the image (mostly background)."""
    generator = torch.Generator().manual_seed(seed)
    h, w = sample.image.shape[-2:]
    boxes = sample.annotation.boxes
    parts = []
    if len(boxes):
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (G, 4): w, h, w, h
        noise = torch.randn(len(boxes), count // 2 // len(boxes), 4, generator=generator)
        parts.append((boxes[:, None] + 0.15 * size[:, None] * noise).reshape(-1, 4))
    corners = torch.rand(count - sum(len(p) for p in parts), 2, 2, generator=generator)
    corners = corners * torch.tensor([w, h], dtype=torch.float32)
    parts.append(torch.cat((corners.min(1).values, corners.max(1).values), dim=1))
    proposals = torch.cat(parts)
    proposals[:, 0::2] = proposals[:, 0::2].clamp(0, w)
    proposals[:, 1::2] = proposals[:, 1::2].clamp(0, h)
    return dataclasses.replace(sample, proposals=proposals)


@pytest.fixture(scope="module")
def trained():
    """A Fast R-CNN (tiny backbone) trained on one image until it knows it, and that image's
    batch with proposals."""
    torch.manual_seed(0)
    model = FastRCNN(tiny_backbone(), 2)
    batch = batch_of(model, [with_proposals(scene(OBJECTS))])
    history = train_steps(model, batch, 120)
    return model.eval(), batch, history


def test_overfits_one_image_and_finds_its_objects(trained):
    model, batch, history = trained
    assert sum(history[-10:]) / 10 < 0.3 * sum(history[:10]) / 10
    with torch.no_grad():
        (found,) = model(batch)
    for box, label in OBJECTS:
        same_class = found.labels == label
        assert same_class.any(), f"class {label} not found"
        best = box_iou(torch.tensor([box], dtype=torch.float32), found.boxes[same_class]).max()
        assert best > 0.6, f"class {label}: best IoU {best:.2f}"
        assert found.scores[same_class].max() > 0.8


def test_compressed_detections_are_close_and_full_rank_ones_equal(trained):
    model, batch, _ = trained
    rois = to_rois(batch.proposals)
    with torch.no_grad():
        (reference,) = model(batch)
        features = model.trunk(batch.images)
        logits = model.head(features, rois)[0]
        results, errors = {}, {}
        for ranks in [(64, 64), (32, 32), (8, 8)]:
            compressed = copy.deepcopy(model)
            compress_fc_layers(compressed, ranks)
            assert isinstance(compressed.head.representation.fc6, nn.Sequential)
            results[ranks] = compressed(batch)[0]
            errors[ranks] = (compressed.head(features, rois)[0] - logits).abs().mean()
    assert errors[(64, 64)] < 1e-4 < errors[(32, 32)] < errors[(8, 8)]
    full = results[(64, 64)]
    torch.testing.assert_close(full.boxes, reference.boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(full.scores, reference.scores, rtol=1e-4, atol=1e-4)
    confident = reference.scores > 0.5
    assert confident.sum() >= 2
    found = results[(32, 32)]  # half of each layer's singular values
    for box, score, label in zip(
        reference.boxes[confident],
        reference.scores[confident],
        reference.labels[confident],
        strict=True,
    ):
        same = found.labels == label
        iou = box_iou(box[None], found.boxes[same])[0]
        best = iou.argmax()
        assert iou[best] > 0.8 and abs(found.scores[same][best] - score) < 0.1


def test_hierarchical_sampling_two_images_of_64_rois_a_quarter_foreground():
    torch.manual_seed(0)
    model = FastRCNN(tiny_backbone(), 2).train()
    samples = [
        with_proposals(scene(OBJECTS), 400, seed=1),
        with_proposals(scene([([40, 40, 100, 110], 2)], size=(144, 128)), 400, seed=2),
    ]
    batch = batch_of(model, samples)
    seen = []
    model.head.register_forward_pre_hook(lambda head, args: seen.append(args[1]))
    model(batch)
    (rois,) = seen  # (R, 5): [batch_index, x1, y1, x2, y2]
    gt_boxes, _ = batch.training_targets()
    for image, gt in enumerate(gt_boxes):
        mine = rois[rois[:, 0] == image, 1:]
        assert mine.shape[0] == 64
        foreground = (box_iou(mine, gt).max(dim=1).values >= 0.5).sum()
        assert foreground == 16  # 25% of 64: there are more foreground candidates than that


def test_image_without_objects_trains_on_background_only():
    torch.manual_seed(0)
    model = FastRCNN(tiny_backbone(), 2).train()
    losses = model(batch_of(model, [with_proposals(scene([]))]))
    assert losses["fast_rcnn_box"].item() == 0.0
    assert torch.isfinite(losses["fast_rcnn_cls"]) and losses["fast_rcnn_cls"] > 0
    sum(losses.values()).backward()
    assert model.trunk[0].weight.grad.abs().sum() > 0  # RoI pooling passes gradients back


def test_no_proposals_gives_no_detections_and_none_is_an_error():
    model = FastRCNN(tiny_backbone(), 2).eval()
    sample = scene(OBJECTS)
    empty = dataclasses.replace(sample, proposals=torch.zeros(0, 4))
    with torch.no_grad():
        (found,) = model(batch_of(model, [empty]))
        assert isinstance(found, Detections) and len(found) == 0
        with pytest.raises(ValueError, match="proposals"):
            model(batch_of(model, [sample]))


def test_preset_and_build_give_the_papers_mini_batch():
    config = preset("fast-rcnn", "small")
    assert config.train.images_per_batch == 2
    assert config.fast_rcnn.roi_targets.batch_size_per_image == 64
    assert config.fast_rcnn.roi_targets.foreground_fraction == 0.25
    assert preset("fast-rcnn", "vgg16").train.images_per_batch == 2
    model = build_model(RunConfig(model="fast-rcnn", backbone="small"), 8)
    assert isinstance(model, FastRCNN) and model.proposal_mode == "fast"
    assert model.stages == ("multi-task",)
    with pytest.raises(ValueError, match="stage"):
        model.set_stage("rpn")


def test_roi_align_variant_trains():
    torch.manual_seed(0)
    model = FastRCNN(tiny_backbone(), 2, FastRCNNConfig(roi_op="align"))
    history = train_steps(model, batch_of(model, [with_proposals(scene(OBJECTS))]), 3)
    assert all(torch.isfinite(torch.tensor(history)))


def test_train_eval_detect_end_to_end_with_cached_proposals(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setattr(rcnn.runs, "DEFAULT_CACHE_DIR", cache)
    monkeypatch.setattr(rcnn.inference, "DEFAULT_CACHE_DIR", cache)
    data, run = tmp_path / "shapes", tmp_path / "run"
    assert main(["data", "shapes", "--out", str(data), "--train", "3", "--test", "2"]) == 0
    spec = f"voc:{data}"
    small = ["input.min_sizes=[160]", "input.test_size=160", "input.max_size=256"]
    settings = [arg for item in [*small, "train.workers=0"] for arg in ("--set", item)]
    train = ["train", "--model", "fast-rcnn", "--data", spec, "--out", str(run), "--epochs", "1"]
    assert main([*train, *settings]) == 0
    assert len(list(cache.glob("*/*.npz"))) == 5  # each image's proposals, computed once
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["proposals_per_image"] > 50 and metrics["proposal_seconds_per_image"] > 0
    assert main(["eval", str(run), "--data", spec, "--svd-rank", "16,8"]) == 0
    compressed = json.loads((run / "metrics_svd_16_8.json").read_text())
    assert compressed["svd_rank"] == [16, 8] and compressed["images"] == 2
    assert main(["eval", str(run), "--data", spec, "--flip"]) == 0
    flipped = json.loads((run / "metrics_flip.json").read_text())
    assert flipped["flip"] is True and flipped["images"] == 2
    assert json.loads((run / "metrics.json").read_text()) == metrics  # the run's own stay
    capsys.readouterr()
    detect = ["detect", str(run), spec, "--json", "--svd-rank", "16,8", "--score-thresh", "0"]
    assert main(detect) == 0
    printed = capsys.readouterr()
    records = [json.loads(line) for line in printed.out.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["test_000000.jpg", "test_000001.jpg"]
    assert "truncated SVD: fc6 256x1568: rank 16" in printed.err
