import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rcnn.boxes import (
    box_area,
    box_iou,
    box_iou_reference,
    clip_boxes,
    cxcywh_to_xyxy,
    hflip_boxes,
    remove_small_boxes,
    xyxy_to_cxcywh,
)


def random_boxes(n: int, generator: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


boxes_strategy = st.lists(
    st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(0, 50), st.floats(0, 50)).map(
        lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
    ),
    min_size=0,
    max_size=12,
).map(lambda rows: torch.tensor(rows, dtype=torch.float64).reshape(-1, 4))


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1.0, 50.0 / 150.0, 0.0]]))


def test_box_iou_matches_reference_across_chunks(monkeypatch):
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(37, g), random_boxes(53, g)
    monkeypatch.setattr("rcnn.boxes._IOU_CHUNK_PAIRS", 100)  # forces many row chunks
    torch.testing.assert_close(box_iou(a, b), box_iou_reference(a, b))


def test_box_iou_degenerate_boxes_give_zero_not_nan():
    point = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou(point, point).item() == 0.0


def test_box_iou_empty_and_dtype():
    empty = torch.zeros(0, 4, dtype=torch.float64)
    some = torch.ones(3, 4, dtype=torch.float64)
    assert box_iou(empty, some).shape == (0, 3)
    assert box_iou(some, empty).shape == (3, 0)
    assert box_iou(some, some).dtype == torch.float64


def test_box_iou_rejects_wrong_shape():
    with pytest.raises(ValueError, match="xyxy"):
        box_iou(torch.zeros(3, 5), torch.zeros(2, 4))


@settings(max_examples=60, deadline=None)
@given(boxes_strategy, boxes_strategy)
def test_box_iou_properties(a, b):
    iou = box_iou(a, b)
    torch.testing.assert_close(iou, box_iou(b, a).T)
    assert ((iou >= 0) & (iou <= 1 + 1e-9)).all()
    torch.testing.assert_close(iou, box_iou_reference(a, b))
    positive = box_area(a) > 0
    self_iou = box_iou(a, a).diagonal()
    assert torch.allclose(self_iou[positive], torch.ones_like(self_iou[positive]))


def test_clip_and_remove_small():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 20.0], [10.0, 10.0, 11.0, 30.0]])
    clipped = clip_boxes(boxes, (15, 40))
    torch.testing.assert_close(
        clipped, torch.tensor([[0.0, 0.0, 40.0, 15.0], [10.0, 10.0, 11.0, 15.0]])
    )
    assert remove_small_boxes(clipped, 2.0).tolist() == [0]
    assert remove_small_boxes(torch.zeros(0, 4), 1.0).shape == (0,)


@given(boxes_strategy)
def test_center_form_round_trip(boxes):
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


# Fuzzing with any floats, NaN and infinities included: the ops never raise, keep shapes and
# dtype, and finite boxes still get IoUs in [0, 1].
any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)
any_boxes = st.lists(st.tuples(*[any_float] * 4), max_size=6).map(
    lambda rows: torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)
)


@settings(max_examples=100)
@given(any_boxes, any_boxes, st.tuples(st.integers(0, 100), st.integers(0, 100)))
def test_box_ops_take_any_floats(a, b, image_size):
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b)) and iou.dtype == torch.float32
    finite = torch.isfinite(a).all(1)[:, None] & torch.isfinite(b).all(1)[None, :]
    assert ((iou[finite] >= 0) & (iou[finite] <= 1)).all()
    clipped = clip_boxes(a, image_size)
    height, width = image_size
    x, y = clipped[:, 0::2], clipped[:, 1::2]
    assert clipped.shape == a.shape and not (x < 0).any() and not (x > width).any()
    assert not (y < 0).any() and not (y > height).any()
    assert torch.isnan(clipped).eq(torch.isnan(a)).all()  # NaN is kept, never invented


def test_hflip_boxes_takes_a_width_per_box():
    boxes = torch.tensor([[[1.0, 2.0, 4.0, 6.0]], [[0.0, 0.0, 10.0, 3.0]]])  # (2, 1, 4)
    widths = torch.tensor([10.0, 12.0])[:, None]
    assert hflip_boxes(boxes, widths).tolist() == [[[6, 2, 9, 6]], [[2, 0, 12, 3]]]
    assert torch.equal(hflip_boxes(hflip_boxes(boxes, widths), widths), boxes)
