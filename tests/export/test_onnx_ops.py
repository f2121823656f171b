"""The ONNX translations of the custom ops, run in onnxruntime, against our ops.

One module calls every op with fixed settings; it is exported once and fed many inputs.
"""

import numpy as np
import onnxruntime
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.export import Dim

from rcnn.data.transforms import resize, resize_scale
from rcnn.export import to_onnx
from rcnn.ops import batched_nms, nms, roi_align, roi_pool

INPUTS = ["boxes", "scores", "labels", "features", "rois", "image"]
OUTPUTS = ["nms", "nms_top3", "batched", "pool", "align", "align_aligned", "resized", "scale"]
MIN_SIZE, MAX_SIZE = 64, 100  # the resize's settings


class AllOps(torch.nn.Module):
    """Each custom op once, with settings of its own; see OUTPUTS."""

    def forward(self, boxes, scores, labels, features, rois, image):
        resized, scale = torch.ops.rcnn.resize_for_test(image.permute(2, 0, 1), MIN_SIZE, MAX_SIZE)
        return (
            nms(boxes, scores, 0.5),
            nms(boxes, scores, 0.5, top_k=3),
            batched_nms(boxes, scores, labels, 0.3, score_threshold=2.0),
            roi_pool(features, rois, 7, 1 / 16),
            roi_align(features, rois, (7, 5), 1 / 16, sampling_ratio=2),
            roi_align(features, rois, 6, 1 / 16, sampling_ratio=-1, aligned=True),
            resized,
            scale,
        )


@pytest.fixture(scope="module")
def session():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 9, 9], [5, 5, 20, 20.0]])
    args = (
        boxes,
        torch.tensor([0.9, 0.8, 0.7]),
        torch.tensor([1, 2, 1]),
        torch.rand(2, 4, 10, 12),
        torch.tensor([[0, 0, 0, 50, 60], [1, 10, 10, 100, 90.0]]),
        torch.zeros(30, 40, 3, dtype=torch.uint8),
    )
    b, r = Dim("boxes"), Dim("rois")
    sizes = (
        {0: b},
        {0: b},
        {0: b},
        {2: Dim("map_h"), 3: Dim("map_w")},
        {0: r},
        {0: Dim("height", min=2), 1: Dim("width", min=2)},
    )
    model = to_onnx(AllOps(), args, sizes, INPUTS, OUTPUTS)
    return onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def run(session, **given):
    """onnxruntime on the given inputs (the others small and fixed) -> {output name: array}."""
    feeds = {
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros(0, np.float32),
        "labels": np.zeros(0, np.int64),
        "features": np.zeros((2, 4, 3, 3), np.float32),  # N and C are fixed
        "rois": np.zeros((0, 5), np.float32),
        "image": np.zeros((2, 2, 3), np.uint8),
    }
    feeds.update({name: value.numpy() for name, value in given.items()})
    return dict(zip(OUTPUTS, session.run(None, feeds), strict=True))


# boxes on a coarse grid with a few integer scores: exact IoUs at the thresholds, many ties
boxes_and_scores = st.integers(0, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.tuples(*[st.integers(0, 12)] * 4), min_size=n, max_size=n),
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
        st.lists(st.integers(1, 3), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(boxes_and_scores)
def test_nms_keeps_and_orders_as_ours(session, data):
    corners, scores, labels = data
    boxes = torch.tensor([(x, y, x + w, y + h) for x, y, w, h in corners], dtype=torch.float32)
    boxes, scores = boxes.reshape(-1, 4), torch.tensor(scores, dtype=torch.float32)
    labels = torch.tensor(labels, dtype=torch.int64)
    out = run(session, boxes=boxes, scores=scores, labels=labels)
    assert out["nms"].tolist() == nms(boxes, scores, 0.5).tolist()
    assert out["nms_top3"].tolist() == nms(boxes, scores, 0.5, top_k=3).tolist()
    expected = batched_nms(boxes, scores, labels, 0.3, score_threshold=2.0)
    assert out["batched"].tolist() == expected.tolist()


def test_nms_of_no_boxes(session):
    out = run(session)
    assert [out[name].shape for name in ("nms", "nms_top3", "batched")] == [(0,)] * 3
    assert out["nms"].dtype == np.int64


def random_rois(n, generator, side=800.0):
    """(n, 5) RoIs over 2 images, corners around a 160 x 190 image, sides up to ``side``
    pixels: windows of up to 51 cells at 1/16, where MaxRoiPool's float bins are exact."""
    xy = torch.rand(n, 2, generator=generator) * 260 - 50
    wh = torch.rand(n, 2, generator=generator) ** 3 * side
    batch = torch.randint(0, 2, (n, 1), generator=generator).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", range(3))
def test_roi_pooling_equals_ours(session, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 4, 10, 12, generator=generator)
    rois = random_rois(200, generator)
    out = run(session, features=features, rois=rois)
    assert np.array_equal(out["pool"], roi_pool(features, rois, 7, 1 / 16).numpy())
    aligned = roi_align(features, rois, (7, 5), 1 / 16, sampling_ratio=2).numpy()
    np.testing.assert_allclose(out["align"], aligned, rtol=0, atol=1e-5)
    adaptive = roi_align(features, rois, 6, 1 / 16, sampling_ratio=-1, aligned=True).numpy()
    np.testing.assert_allclose(out["align_aligned"], adaptive, rtol=0, atol=1e-5)


def test_roi_pooling_of_no_rois(session):
    out = run(session, features=torch.rand(2, 4, 5, 6))
    assert out["pool"].shape == (0, 4, 7, 7) and out["align"].shape == (0, 4, 7, 5)


@pytest.mark.parametrize(
    "size",
    [
        (64, 80),  # no change
        (48, 60),  # enlarged
        (200, 150),  # shrunk, antialiased
        (20, 300),  # longer side capped at MAX_SIZE
        (128, 129),  # 129 / 2 = 64.5: Python's round sends it to 64
        (2, 3),
        (701, 523),
    ],
)
def test_resize_is_pytorchs_to_the_grey_level(session, size):
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator())
    scale = resize_scale(size, MIN_SIZE, MAX_SIZE)
    expected, _ = resize(image, torch.zeros(0, 4), scale)
    out = run(session, image=image.permute(1, 2, 0).contiguous())
    assert out["scale"].dtype == np.float64 and out["scale"].item() == scale
    assert out["resized"].shape == tuple(expected.shape)
    assert np.array_equal(out["resized"], expected.numpy())
