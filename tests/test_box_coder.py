import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rcnn.box_coder import BBOX_XFORM_CLIP, BoxCoder

box = st.tuples(
    st.floats(-100, 100), st.floats(-100, 100), st.floats(1, 200), st.floats(1, 200)
).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
boxes = st.lists(box, min_size=1, max_size=10).map(lambda r: torch.tensor(r, dtype=torch.float64))


def test_encode_known_values():
    proposal = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[5.0, 0.0, 15.0, 40.0]])  # centre moves +5 in x, +10 in y, height doubles
    t = BoxCoder().encode(proposal, gt)
    torch.testing.assert_close(t, torch.tensor([[0.5, 0.5, 0.0, math.log(2.0)]]))
    normalised = BoxCoder.fast_rcnn().encode(proposal, gt)
    torch.testing.assert_close(normalised, t / torch.tensor([0.1, 0.1, 0.2, 0.2]))


@settings(max_examples=80, deadline=None)
@given(boxes, boxes, st.sampled_from([BoxCoder(), BoxCoder.fast_rcnn()]))
def test_decode_inverts_encode(references, targets, coder):
    n = min(len(references), len(targets))
    references, targets = references[:n], targets[:n]
    ratio = (targets[:, 2:] - targets[:, :2]) / (references[:, 2:] - references[:, :2])
    assume(bool((ratio.log().abs() < BBOX_XFORM_CLIP).all()))  # beyond it the clamp acts, by design
    torch.testing.assert_close(coder.decode(coder.encode(references, targets), references), targets)


def test_decode_class_specific_deltas_and_clamp():
    reference = torch.tensor([[0.0, 0.0, 16.0, 16.0], [10.0, 10.0, 20.0, 30.0]])
    deltas = torch.zeros(2, 3 * 4)
    deltas[1, 4:8] = torch.tensor([0.0, 0.0, 100.0, 0.0])  # class 1: absurd width
    decoded = BoxCoder().decode(deltas, reference)
    assert decoded.shape == (2, 12)
    torch.testing.assert_close(decoded[:, :4], reference)
    width = decoded[1, 6] - decoded[1, 4]
    torch.testing.assert_close(width, torch.tensor(10.0 * math.exp(BBOX_XFORM_CLIP)))


def test_empty():
    coder = BoxCoder.fast_rcnn()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)


@settings(max_examples=100)
@given(
    boxes,
    st.lists(st.tuples(*[st.floats(allow_nan=True, allow_infinity=True)] * 4), min_size=10),
    st.sampled_from([BoxCoder(), BoxCoder.fast_rcnn()]),
)
def test_decode_takes_any_deltas(references, rows, coder):
    deltas = torch.tensor(rows[: len(references)], dtype=torch.float64)
    decoded = coder.decode(deltas, references)
    assert decoded.shape == deltas.shape and decoded.dtype == torch.float64
    # the clamp keeps every width and height finite or NaN, never negative or infinite
    widths, heights = decoded[:, 2] - decoded[:, 0], decoded[:, 3] - decoded[:, 1]
    sane = torch.isfinite(deltas).all(1) & (deltas.abs() < 1e6).all(1)
    assert torch.isfinite(decoded[sane]).all()
    assert (widths[sane] >= 0).all() and (heights[sane] >= 0).all()
    encoded = coder.encode(references[sane], decoded[sane])  # encode what decode made
    assert encoded.shape == decoded[sane].shape
