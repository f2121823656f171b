import torch

from rcnn.anchor_targets import AnchorTargetConfig, anchor_targets
from rcnn.anchors import AnchorConfig, AnchorGenerator
from rcnn.box_coder import BoxCoder
from rcnn.boxes import box_iou


def seed(value=0):
    return torch.Generator().manual_seed(value)


def test_hand_built_case():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0: positive
            [1.0, 0.0, 11.0, 10.0],  # IoU 0.82: positive
            [5.0, 0.0, 15.0, 10.0],  # IoU 1/3: ignored
            [50.0, 50.0, 60.0, 60.0],  # IoU 0: negative
            [25.0, 20.0, 41.0, 40.0],  # best anchor of gt 1 (IoU 0.4): positive
            [-5.0, 0.0, 5.0, 10.0],  # crosses the border: ignored
        ]
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    labels, targets = anchor_targets(anchors, gt, (100, 100), generator=seed())
    assert labels.tolist() == [1, 1, -1, 0, 1, -1]
    torch.testing.assert_close(targets[4], BoxCoder().encode(anchors[4:5], gt[1:2])[0])
    assert (targets[labels != 1] == 0).all()


def test_sample_sizes_on_a_paper_sized_image():
    anchors = AnchorGenerator(AnchorConfig())((38, 50))  # 800x600 at stride 16: 17,100 anchors
    gt = torch.tensor([[100.0, 100.0, 300.0, 260.0], [400.0, 200.0, 700.0, 560.0]])
    labels, _ = anchor_targets(anchors, gt, (600, 800), generator=seed())
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    assert positives + negatives == 256 and 0 < positives <= 128
    # no anchor crossing the border is ever used
    crossing = (
        (anchors[:, 0] < 0) | (anchors[:, 1] < 0) | (anchors[:, 2] > 800) | (anchors[:, 3] > 600)
    )
    assert (labels[crossing] == -1).all()
    # positives overlap a ground-truth box by >= 0.7 or are some box's best anchor
    iou = box_iou(gt, anchors)
    best_per_gt = iou[:, ~crossing].max(dim=1).values
    pos = labels == 1
    assert (
        (iou[:, pos].max(dim=0).values >= 0.7) | (iou[:, pos] == best_per_gt[:, None]).any(0)
    ).all()
    assert (iou[:, labels == 0].max(dim=0).values <= 0.3).all()


def test_many_positives_are_capped_at_half():
    anchors = AnchorGenerator(AnchorConfig(scales=(2.0,), ratios=(1.0,)))((20, 20))  # 32px boxes
    gt = anchors[::3].clone()  # a ground-truth box on every third anchor
    labels, _ = anchor_targets(anchors, gt, (320, 320), generator=seed())
    assert int((labels == 1).sum()) == 128 and int((labels == 0).sum()) <= 128


def test_no_ground_truth_gives_only_negatives():
    anchors = AnchorGenerator(AnchorConfig())((10, 10))
    labels, targets = anchor_targets(anchors, torch.zeros(0, 4), (160, 160), generator=seed())
    assert int((labels == 1).sum()) == 0 and int((labels == 0).sum()) > 0
    assert (targets == 0).all()


def test_seeded_sampling_repeats():
    anchors = AnchorGenerator(AnchorConfig())((38, 50))
    gt = torch.tensor([[100.0, 100.0, 300.0, 260.0]])
    a, _ = anchor_targets(anchors, gt, (600, 800), AnchorTargetConfig(), generator=seed(5))
    b, _ = anchor_targets(anchors, gt, (600, 800), AnchorTargetConfig(), generator=seed(5))
    assert torch.equal(a, b)
