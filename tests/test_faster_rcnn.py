import dataclasses

import pytest
import torch

from rcnn.anchors import AnchorConfig
from rcnn.boxes import box_iou, hflip_boxes, to_rois
from rcnn.data.dataset import Sample
from rcnn.data.transforms import hflip, make_batch
from rcnn.models.faster_rcnn import STAGES, FasterRCNN, FasterRCNNConfig
from rcnn.postprocess import DetectionConfig, select_detections
from rcnn.proposals import ProposalConfig
from rcnn.rpn import RPNConfig
from rcnn.structures import Annotation
from tests.tiny import tiny_backbone

CONFIG = FasterRCNNConfig(
    rpn=RPNConfig(
        anchors=AnchorConfig(scales=(2.0, 4.0, 8.0)),
        proposals=ProposalConfig(pre_nms_top_n=(600, 300), post_nms_top_n=(100, 50), min_size=2.0),
    )
)


def scene(objects: list[tuple[list[float], int]], size=(128, 160)) -> Sample:
    """A dark image with bright filled rectangles (label 1) and crosses of two bars (label 2)."""
    image = torch.full((3, *size), 30, dtype=torch.uint8)
    for (x1, y1, x2, y2), label in objects:
        x1, y1, x2, y2 = map(int, (x1, y1, x2, y2))
        if label == 1:
            image[:, y1:y2, x1:x2] = torch.tensor([220, 60, 60])[:, None, None]
        else:
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            image[:, y1:y2, cx - 3 : cx + 3] = 200
            image[:, cy - 3 : cy + 3, x1:x2] = 200
    boxes = torch.tensor([box for box, _ in objects], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([label for _, label in objects], dtype=torch.int64)
    return Sample(image, Annotation(boxes, labels, torch.zeros(len(objects), dtype=torch.bool)), 0)


def batch_of(model, samples):
    return make_batch(samples, *model.pixel_stats, 16)


def train_steps(model, batch, steps, lr=0.02):
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9
    )
    model.train()
    history = []
    for _ in range(steps):
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    return history


def test_overfits_one_image_and_finds_its_objects():
    torch.manual_seed(0)
    model = FasterRCNN(tiny_backbone(), 2, CONFIG)
    sample = scene([([20, 30, 70, 90], 1), ([90, 20, 140, 70], 2)])
    batch = batch_of(model, [sample])
    history = train_steps(model, batch, 150)
    assert sum(history[-10:]) / 10 < 0.3 * sum(history[:10]) / 10
    model.eval()
    with torch.no_grad():
        (found,) = model(batch)
    for box, label in zip(sample.annotation.boxes, sample.annotation.labels, strict=True):
        same_class = found.labels == label
        assert same_class.any()
        best = box_iou(box[None], found.boxes[same_class]).max()
        assert best > 0.6, f"class {label}: best IoU {best:.2f}"


def test_flip_testing_averages_each_proposal_over_the_image_and_its_mirror():
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, detection=DetectionConfig(flip=True))
    model = FasterRCNN(tiny_backbone(), 2, config).eval()
    samples = [scene([([20, 30, 70, 90], 1)], (128, 100)), scene([([90, 20, 140, 70], 2)])]
    batch = batch_of(model, samples)
    with torch.no_grad():
        found = model(batch)
        proposals, _ = model.rpn(model.trunk(batch.images), batch.image_sizes, batch.scales)
        for i, ((h, w), boxes) in enumerate(zip(batch.image_sizes, proposals, strict=True)):
            # the reference: each view through the trunk alone, mirrored as training mirrors
            # (before padding: GroupNorm sees the padding too)
            mirror, mirror_boxes = hflip(batch.images[i, :, :h, :w], boxes)
            padded_mirror = torch.zeros_like(batch.images[i])
            padded_mirror[:, :h, :w] = mirror
            views = [(batch.images[i], boxes), (padded_mirror, mirror_boxes)]
            scored = [model.head.score(model.trunk(v[None]), to_rois([b])) for v, b in views]
            (p0, b0), (p1, b1) = scored
            probabilities, refined = (p0 + p1) / 2, (b0 + hflip_boxes(b1, w)) / 2
            expected = select_detections(
                refined[:, 1:], probabilities[:, 1:], (h, w), config.detection
            )
            assert len(found[i].boxes) == len(expected.boxes) > 0
            torch.testing.assert_close(found[i].scores, expected.scores)
            torch.testing.assert_close(found[i].boxes, expected.boxes)
            assert torch.equal(found[i].labels, expected.labels)


def test_image_without_objects_trains_and_has_no_box_loss():
    torch.manual_seed(0)
    model = FasterRCNN(tiny_backbone(), 2, CONFIG)
    batch = batch_of(model, [scene([])])
    model.train()
    losses = model(batch)
    assert losses["rpn_box"].item() == 0.0 and losses["fast_rcnn_box"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize("scheme", list(STAGES))
def test_every_scheme_runs_each_stage(scheme):
    torch.manual_seed(0)
    model = FasterRCNN(tiny_backbone(), 2, dataclasses.replace(CONFIG, scheme=scheme))
    samples = [scene([([20, 30, 70, 90], 1)]), scene([([40, 40, 100, 110], 2)], size=(144, 128))]
    batch = batch_of(model, samples)
    for stage in model.stages:
        model.set_stage(stage)
        history = train_steps(model, batch, 3)
        assert all(torch.isfinite(torch.tensor(history)))
    model.eval()
    with torch.no_grad():
        detections = model(batch)
    for found, (h, w) in zip(detections, batch.image_sizes, strict=True):
        assert len(found) <= 100
        assert (found.boxes[:, 2] <= w).all() and (found.boxes[:, 3] <= h).all()


def test_alternating_stages_freeze_and_separate_the_trunks():
    torch.manual_seed(0)
    model = FasterRCNN(tiny_backbone(), 2, dataclasses.replace(CONFIG, scheme="alternating"))
    batch = batch_of(model, [scene([([20, 30, 70, 90], 1)])])
    initial = [p.detach().clone() for p in model.trunk.parameters()]
    model.set_stage("rpn")
    assert not any(p.requires_grad for p in model.head.parameters())
    train_steps(model, batch, 2)
    trained = [p.detach().clone() for p in model.trunk.parameters()]
    model.set_stage("detector")  # step 2: the detector's trunk starts afresh; step 1's proposes
    assert all(torch.equal(a, b) for a, b in zip(model.trunk.parameters(), initial, strict=True))
    assert all(
        torch.equal(a, b) for a, b in zip(model.proposal_trunk.parameters(), trained, strict=True)
    )
    assert not any(p.requires_grad for p in model.proposal_trunk.parameters())
    assert not any(p.requires_grad for p in model.rpn.parameters())
    model.set_stage("rpn-finetune")  # step 3: shared trunk frozen, only the RPN trains
    assert model.proposal_trunk is None
    assert not any(p.requires_grad for p in model.trunk.parameters())
    assert all(p.requires_grad for p in model.rpn.parameters())
    model.set_stage("detector-finetune")  # step 4: only the head trains
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(p.requires_grad for p in (*model.trunk.parameters(), *model.rpn.parameters()))


def test_non_approximate_joint_training_moves_the_rpn_through_the_boxes():
    def rpn_delta_gradient(scheme):
        torch.manual_seed(0)
        model = FasterRCNN(tiny_backbone(), 2, dataclasses.replace(CONFIG, scheme=scheme))
        model.train()
        losses = model(batch_of(model, [scene([([20, 30, 70, 90], 1), ([90, 20, 140, 70], 2)])]))
        (losses["fast_rcnn_cls"] + losses["fast_rcnn_box"]).backward()  # the detector's loss only
        return model.rpn.head.deltas.weight.grad

    assert rpn_delta_gradient("approximate-joint") is None  # proposals are constants
    gradient = rpn_delta_gradient("non-approximate-joint")
    assert gradient is not None and gradient.abs().sum() > 0
