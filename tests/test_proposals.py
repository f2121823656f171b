import importlib

import torch
from hypothesis import given
from hypothesis import strategies as st

from rcnn.box_coder import BoxCoder
from rcnn.boxes import box_iou, clip_boxes
from rcnn.proposals import ProposalConfig, propose, top_n

nms_reference = importlib.import_module("rcnn.ops.nms").nms_reference


@given(st.lists(st.integers(0, 4), max_size=60), st.integers(0, 70))
def test_top_n_is_a_stable_sorts_first_n(values, n):
    scores = torch.tensor(values, dtype=torch.float32)  # few distinct values: many ties
    expected = torch.sort(scores, descending=True, stable=True).indices[:n]
    assert torch.equal(top_n(scores, n), expected)


def anchors_on_a_grid(size: int = 16, cells: int = 10) -> torch.Tensor:
    """(cells * cells, 4) squares of ``size`` px every 8 px: neighbours overlap (IoU 1/3)."""
    y, x = torch.meshgrid(torch.arange(cells) * 8.0, torch.arange(cells) * 8.0, indexing="ij")
    corners = torch.stack((x, y), -1).reshape(-1, 2)
    return torch.cat((corners, corners + size), 1)


def test_propose_follows_the_papers_steps():
    generator = torch.Generator().manual_seed(0)
    anchors = anchors_on_a_grid()
    deltas = torch.randn(anchors.shape[0], 4, generator=generator) * 0.3
    objectness = torch.randn(anchors.shape[0], generator=generator)
    config = ProposalConfig(pre_nms_top_n=(40, 40), post_nms_top_n=(12, 12), nms_threshold=0.5)
    boxes, scores = propose(anchors, objectness, deltas, (70, 60), 0.5, config, training=True)
    # decode, clip to the image, drop sides under 16 x 0.5 px, the 40 best, NMS, the 12 best
    decoded = clip_boxes(BoxCoder().decode(deltas, anchors), (70, 60))
    sides = decoded[:, 2:] - decoded[:, :2]
    big = torch.nonzero((sides >= 8).all(1)).flatten()
    best = big[torch.sort(objectness[big], descending=True, stable=True).indices[:40]]
    kept = best[nms_reference(decoded[best], objectness[best], 0.5)][:12]
    torch.testing.assert_close(boxes, decoded[kept])
    torch.testing.assert_close(scores, objectness[kept])
    assert len(boxes) == 12 and (scores[:-1] >= scores[1:]).all()
    assert (boxes[:, 0::2] <= 60).all() and (boxes[:, 1::2] <= 70).all() and (boxes >= 0).all()
    overlaps = box_iou(boxes, boxes).triu(diagonal=1)
    assert (overlaps <= 0.5).all()


def test_propose_without_anchors_or_with_all_boxes_too_small():
    config = ProposalConfig()
    none = propose(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 4), (60, 60), 1.0, config, False
    )
    assert none[0].shape == (0, 4) and none[1].shape == (0,)
    anchors = anchors_on_a_grid(size=4)  # 4 px boxes, under the 16 px minimum
    small = propose(anchors, torch.zeros(100), torch.zeros(100, 4), (90, 90), 1.0, config, False)
    assert small[0].shape == (0, 4)
