import importlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcnn.boxes import box_iou
from rcnn.ops import batched_nms, nms
from tests.ops.kernels import on_both_paths

nms_module = importlib.import_module("rcnn.ops.nms")
nms_reference = nms_module.nms_reference
batched_nms_reference = nms_module.batched_nms_reference


path = on_both_paths(nms_module, "_native_greedy", "the greedy step")


def test_the_c_kernel_is_built(path):
    if path == "torch":
        pytest.skip("a test of the C kernel")
    # setup.py builds it where a C compiler is found, as on every machine CI runs on; without
    # it the library falls back to the PyTorch path, which every test here also runs
    from rcnn.ops import _greedy_nms

    assert nms_module._native_greedy is _greedy_nms.greedy_nms


def random_boxes(n, generator, size=100.0, dtype=torch.float32):
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * size
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * size / 3
    return torch.cat([xy, xy + wh], dim=1)


# boxes on a coarse grid with integer scores: many exact IoU values and many score ties
boxes_and_scores = st.integers(0, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.tuples(*[st.integers(0, 12)] * 4), min_size=n, max_size=n),
        st.lists(st.integers(0, 5), min_size=n, max_size=n),
        st.lists(st.integers(0, 2), min_size=n, max_size=n),
    )
)


def as_tensors(data):
    corners, scores, labels = data
    boxes = torch.tensor([(x, y, x + w, y + h) for x, y, w, h in corners], dtype=torch.float32)
    return boxes.reshape(-1, 4), torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)


def test_known_answer():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(3, 0) = 90/100, IoU(3, 1) = 81/109, IoU(0, 1) = 90/110; box 2 overlaps nothing
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    # box 0 would suppress box 1, but box 3 suppresses box 0 first: greedy keeps box 1
    assert nms(boxes, scores, 0.8).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]


def test_threshold_is_strict_and_ties_go_to_the_lower_index():
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10]])
    iou = box_iou(boxes[:1], boxes[1:2]).item()  # 1/3
    scores = torch.tensor([1.0, 1.0, 1.0])
    assert nms(boxes, scores, iou).tolist() == [0, 1]  # IoU equal to the threshold: kept
    assert nms(boxes, scores, iou - 1e-6).tolist() == [0]


@settings(max_examples=150, deadline=None)
@given(boxes_and_scores, st.sampled_from([0.0, 0.3, 0.5, 0.7]))
def test_nms_equals_reference_and_properties(data, threshold):
    boxes, scores, _ = as_tensors(data)
    kept = nms(boxes, scores, threshold)
    assert torch.equal(kept, nms_reference(boxes, scores, threshold))
    assert kept.dtype == torch.int64
    assert len(set(kept.tolist())) == len(kept)  # a subset
    assert (scores[kept][:-1] >= scores[kept][1:]).all()  # sorted by score
    iou = box_iou(boxes[kept], boxes[kept]).triu(diagonal=1)
    assert (iou <= threshold).all()  # no kept pair above the threshold


@settings(max_examples=100, deadline=None)
@given(boxes_and_scores, st.sampled_from([0.0, 0.5]), st.sampled_from([None, 1, 3]))
def test_batched_nms_equals_reference(data, threshold, top_k):
    boxes, scores, labels = as_tensors(data)
    kept = batched_nms(boxes, scores, labels, threshold, top_k=top_k)
    expected = batched_nms_reference(boxes, scores, labels, threshold, top_k=top_k)
    assert torch.equal(kept, expected)


@pytest.mark.parametrize("block", [1, 3, 64])
def test_blocks_do_not_change_the_answer(monkeypatch, block, path):
    if path == "native":
        pytest.skip("the C kernel visits the boxes one at a time, in no blocks")
    g = torch.Generator().manual_seed(block)
    boxes, scores = random_boxes(300, g), torch.rand(300, generator=g)
    labels = torch.randint(0, 4, (300,), generator=g)
    monkeypatch.setattr(nms_module, "_BLOCK", block)
    assert torch.equal(nms(boxes, scores, 0.4), nms_reference(boxes, scores, 0.4))
    expected = batched_nms_reference(boxes, scores, labels, 0.4)
    assert torch.equal(batched_nms(boxes, scores, labels, 0.4), expected)


def test_top_k_and_score_threshold_match_reference():
    g = torch.Generator().manual_seed(0)
    boxes, scores = random_boxes(500, g), torch.rand(500, generator=g)
    for top_k in (1, 10, 1000):
        for threshold in (None, 0.5):
            options = {"top_k": top_k, "score_threshold": threshold}
            kept = nms(boxes, scores, 0.5, **options)
            assert torch.equal(kept, nms_reference(boxes, scores, 0.5, **options))
            assert len(kept) <= top_k
            if threshold is not None:
                assert (scores[kept] > threshold).all()


def test_float64_and_empty_inputs():
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(200, g, dtype=torch.float64)
    scores = torch.rand(200, generator=g, dtype=torch.float64)
    assert torch.equal(nms(boxes, scores, 0.6), nms_reference(boxes, scores, 0.6))
    empty = torch.zeros(0, 4)
    assert nms(empty, torch.zeros(0), 0.5).shape == (0,)
    assert nms(empty, torch.zeros(0), 0.5).dtype == torch.int64
    labels = torch.zeros(0, dtype=torch.int64)
    assert batched_nms(empty, torch.zeros(0), labels, 0.5).shape == (0,)
    assert nms(boxes, scores, 0.5, score_threshold=2.0).shape == (0,)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="labels"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="top_k"):
        nms(torch.zeros(3, 4), torch.zeros(3), 0.5, top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        batched_nms(
            torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0.5, top_k=-1
        )


finite = st.floats(-50, 150, width=32, allow_subnormal=False)
corner = st.one_of(finite, finite, finite, st.sampled_from([float("nan"), float("inf"), -1e38]))
odd_boxes = st.lists(st.tuples(corner, corner, corner, corner), min_size=0, max_size=60)


# ``path`` only says which path the fixture left on; it does not change between inputs
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(odd_boxes, st.sampled_from([-0.5, 0.0, 0.1, 0.5, 0.7, 0.99]), st.sampled_from([None, 2, 10]))
def test_the_two_paths_agree_on_any_boxes(path, corners, threshold, top_k):
    if path == "torch":
        pytest.skip("compares the two paths itself")
    # any corners: degenerate, inverted (x2 < x1), touching, infinite and NaN boxes, continuous
    # IoUs; the C kernel's IoU must round exactly as box_iou does for the two to keep the same
    # boxes
    boxes = torch.tensor(corners, dtype=torch.float32).reshape(-1, 4)
    g = torch.Generator().manual_seed(len(corners))
    scores = torch.rand(len(corners), generator=g)
    labels = torch.randint(0, 3, (len(corners),), generator=g)
    native = nms(boxes, scores, threshold, top_k=top_k)
    native_batched = batched_nms(boxes, scores, labels, threshold, top_k=top_k)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nms_module, "_native_greedy", None)
        assert torch.equal(native, nms(boxes, scores, threshold, top_k=top_k))
        batched = batched_nms(boxes, scores, labels, threshold, top_k=top_k)
        assert torch.equal(native_batched, batched)


def test_nan_boxes_suppress_nothing_on_either_path():
    # a NaN IoU reads as 0 (box_iou's nan_to_num) in both paths
    boxes = torch.tensor([[0.0, 0, 10, 10], [float("nan"), 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
