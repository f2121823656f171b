"""The custom ops of an exported detector, written as standard ONNX operators (opset 18).

Each function receives the op's inputs as graph values and its other arguments as Python
values, and builds the op's result with ONNX operators whose semantics were checked against
ours; tests/export/ hold them to it through onnxruntime.

* ``rcnn::nms`` -> NonMaxSuppression. Both suppress a box whose IoU with a kept box is
  *strictly greater* than the threshold, from the same float32 formula. NonMaxSuppression
  leaves the order of equal scores open, where ours visits them by index; so the boxes are
  first sorted by decreasing score (TopK, which puts equal values in index order) and
  NonMaxSuppression is given their ranks instead of their scores: distinct, in our order
  (float32 ranks: exact up to 2^24 boxes).
* ``rcnn::roi_pool`` -> MaxRoiPool: the same RoI projection (C's rounding, half away from zero)
  and bins; onnxruntime computes the bin edges in float32, which moves the last bin's end by
  one cell on windows of 57 cells or more (see ``rcnn.ops.roi_pool``).
* ``rcnn::roi_align`` -> RoiAlign: ``aligned=False`` is coordinate_transformation_mode
  ``output_half_pixel`` (RoIs at least 1 x 1 cell), ``aligned=True`` is ``half_pixel``; an
  adaptive sampling ratio is 0 in ONNX. The sums run in another order: they agree to float32
  rounding.
* ``rcnn::resize_for_test``: not ONNX's Resize. PyTorch resizes uint8 images in fixed point,
  along the rows first with the result rounded to grey levels, then along the columns, and
  onnxruntime's Resize quantises its weights differently: a pixel in a few hundred (one in
  ten when shrinking) came out a grey level or two apart, enough to reorder near-equal
  proposals. So PyTorch's kernel is written out: its weights computed as it computes them,
  in float64, then integer sums, rounding and clamping (Gather, MatMul): exact. The
  output size is computed in float64 as ``resize_scale`` computes it (ONNX's Round, like
  Python's round, sends halves to even).
* ``aten::sort.stable`` (the proposal layer's order) -> TopK over the whole axis, which puts
  equal values in index order: a stable sort, both ways.

Shapes: as in ``rcnn.ops`` and ``rcnn.export.pipeline``.
"""

from __future__ import annotations

import torch
from onnx import TensorProto
from onnxscript import opset18 as op

import rcnn.export.pipeline  # noqa: F401 (registers rcnn::resize_for_test)

FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE
INT32, INT64, UINT8 = TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8


def translation_table() -> dict:
    """The custom ops -> their ONNX functions, for ``torch.onnx.export``."""
    return {
        torch.ops.rcnn.nms.default: nms,
        torch.ops.rcnn.roi_pool.default: roi_pool,
        torch.ops.rcnn.roi_align.default: roi_align,
        torch.ops.rcnn.resize_for_test.default: resize_for_test,
        torch.ops.aten.sort.stable: sort_stable,
    }


def nms(boxes, scores, labels, iou_threshold: float, top_k, score_threshold):
    """boxes (B, 4), scores (B,), labels (B,) int64 >= 0 or None -> kept indices (D,), by
    decreasing score, ties by index: ``rcnn.ops.nms`` / ``batched_nms``."""
    count = op.Shape(scores)  # (1,) = [B]
    # 1. our visiting order, and ranks B, B-1, ..., 1 along it (0: fails score_threshold)
    values, order = op.TopK(scores, count, axis=0, largest=1, sorted=1)
    rank = op.Cast(op.Sub(count, op.Range(_int(0), op.Squeeze(count), _int(1))), to=FLOAT)
    if score_threshold is not None:
        passes = op.Greater(values, _float(score_threshold))
        rank = op.Where(passes, rank, _float(0.0))
    # 2. one NonMaxSuppression class per label: (1, K, B), zero where the label differs
    if labels is None:
        ranks = op.Unsqueeze(rank, _ints(0, 1))
    else:
        ranks = op.Unsqueeze(_by_label(rank, op.Gather(labels, order)), _ints(0))
    limit = op.Squeeze(count) if top_k is None else _int(top_k)
    sorted_boxes = op.Unsqueeze(op.Gather(boxes, order, axis=0), _ints(0))  # (1, B, 4)
    selected = op.NonMaxSuppression(sorted_boxes, ranks, limit, _float(iou_threshold), _float(0.0))
    # 3. selected rows [0, class, position] -> positions in rank order -> indices
    position = op.Gather(selected, _int(2), axis=1)  # (D,)
    position, _ = op.TopK(position, op.Shape(position), axis=0, largest=0, sorted=1)
    kept = op.Gather(order, position)
    return kept if top_k is None else op.Slice(kept, _ints(0), _ints(top_k))


def _by_label(rank, labels):
    """rank (B,), labels (B,) -> (K, B): row k holds the ranks of the label-k boxes, else 0."""
    classes = op.Add(op.ReduceMax(op.Concat(labels, _ints(0), axis=0), keepdims=0), _int(1))
    column = op.Unsqueeze(op.Range(_int(0), classes, _int(1)), _ints(1))  # (K, 1)
    mine = op.Equal(column, op.Unsqueeze(labels, _ints(0)))  # (K, 1) == (1, B) -> (K, B)
    return op.Where(mine, op.Unsqueeze(rank, _ints(0)), _float(0.0))


def roi_pool(features, rois, output_size: list[int], spatial_scale: float):
    """features (N, C, H, W), rois (R, 5) -> (R, C, h, w): ``rcnn.ops.roi_pool``."""
    return op.MaxRoiPool(features, rois, pooled_shape=output_size, spatial_scale=spatial_scale)


def roi_align(
    features,
    rois,
    output_size: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
):
    """features (N, C, H, W), rois (R, 5) -> (R, C, h, w): ``rcnn.ops.roi_align``."""
    corners = op.Slice(rois, _ints(1), _ints(5), _ints(1))  # (R, 4) x1, y1, x2, y2
    batch_index = op.Cast(op.Gather(rois, _int(0), axis=1), to=INT64)  # (R,)
    return op.RoiAlign(
        features,
        corners,
        batch_index,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=output_size[0],
        output_width=output_size[1],
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
    )


def resize_for_test(image, min_size: int, max_size: int):
    """uint8 (3, H, W) -> (uint8 (3, h, w), float64 scale): ``resize_scale`` and ``resize``."""
    size = op.Cast(op.Shape(image, start=1, end=3), to=DOUBLE)  # [H, W]
    short, long = op.ReduceMin(size, keepdims=0), op.ReduceMax(size, keepdims=0)
    low, high = _double(min_size), _double(max_size)
    # the shorter side to min_size, unless the longer side would then pass max_size
    scale = op.Div(low, short)
    scale = op.Where(op.Greater(op.Round(op.Mul(scale, long)), high), op.Div(high, long), scale)
    new_size = op.Cast(op.Max(op.Round(op.Mul(size, scale)), _double(1)), to=INT64)
    height, width = op.Gather(new_size, _int(0)), op.Gather(new_size, _int(1))
    # PyTorch's uint8 kernel: along the rows first, rounded to grey levels, then the columns;
    # each pass resamples the first axis, whose cells are contiguous blocks to gather
    pixels = op.Transpose(op.Cast(image, to=INT32), perm=[2, 1, 0])  # (3, H, W) -> (W, H, 3)
    pixels = op.Transpose(_resample_first_axis(pixels, width), perm=[1, 0, 2])  # -> (H, w, 3)
    pixels = op.Transpose(_resample_first_axis(pixels, height), perm=[2, 0, 1])  # -> (3, h, w)
    return op.Cast(pixels, to=UINT8), scale


def _resample_first_axis(pixels, length):
    """int32 grey levels (n, A, B) -> (m = length, A, B): one pass of PyTorch's fixed-point
    antialiased bilinear kernel (``J`` taps of ``bits``-bit weights an output cell)."""
    n = op.Shape(pixels, start=0, end=1)  # (1,)
    first, weights, bits = _fixed_point_weights(n, length)  # (m,), (m, J), ()
    taps = op.Range(_int(0), op.Squeeze(op.Shape(weights, start=1)), _int(1))  # (J,)
    cells = op.Add(op.Unsqueeze(first, _ints(1)), taps)  # (m, J)
    cells = op.Min(cells, op.Sub(n, _ints(1)))  # past a window's end: weight 0, any cell will do
    # (n, A, B) -> (m, J, A * B); (m, 1, J) @ (m, J, A * B) -> (m, 1, A * B) -> (m, A, B):
    # sums of integers, exact in any order
    gathered = op.Reshape(op.Gather(pixels, cells, axis=0), _ints(0, 0, -1))
    total = op.MatMul(op.Unsqueeze(weights, _ints(1)), gathered)
    total = op.Reshape(
        total, op.Concat(op.Shape(weights, end=1), op.Shape(pixels, start=1), axis=0)
    )
    # round half up: + 2^(bits - 1), then drop the bits (a floor: the sums are >= 0)
    total = op.Div(op.Add(total, _power_of_two(op.Sub(bits, _int(1)))), _power_of_two(bits))
    return op.Clip(total, _int32(0), _int32(255))


def _fixed_point_weights(n, length):
    """PyTorch's weights for resizing an axis of ``n (1,)`` cells to ``length``: each output
    cell's first input cell (m,), its J weights as integers (m, J) and their ``bits``.

    As ``_compute_weights_aa`` and ``_compute_index_ranges_int16_weights`` compute them, in
    float64, operation for operation: a triangle filter widened by the scale when shrinking,
    normalised to sum 1 (summed in order), then times 2^bits and rounded half up.
    """
    scale = op.Div(op.Cast(op.Squeeze(n), to=DOUBLE), op.Cast(length, to=DOUBLE))  # in / out
    shrinking = op.GreaterOrEqual(scale, _double(1))
    support = op.Where(shrinking, scale, _double(1))
    stretch = op.Where(shrinking, op.Div(_double(1), scale), _double(1))
    reach = op.Add(op.Mul(op.Cast(op.Ceil(support), to=INT64), _int(2)), _int(1))  # J
    # 1. each output cell's centre in input cells, and its window of input cells
    index = op.Cast(op.Range(_int(0), length, _int(1)), to=DOUBLE)
    centre = op.Mul(scale, op.Add(index, _double(0.5)))  # (m,)
    first = op.Max(op.Cast(op.Add(op.Sub(centre, support), _double(0.5)), to=INT64), _int(0))
    end = op.Min(op.Cast(op.Add(op.Add(centre, support), _double(0.5)), to=INT64), op.Squeeze(n))
    count = op.Clip(op.Sub(end, first), _int(0), reach)  # (m,)
    # 2. the triangle filter at each window cell: (m, J)
    taps = op.Range(_int(0), reach, _int(1))  # (J,)
    cell = op.Cast(op.Add(op.Unsqueeze(first, _ints(1)), taps), to=DOUBLE)
    distance = op.Mul(op.Add(op.Sub(cell, op.Unsqueeze(centre, _ints(1))), _double(0.5)), stretch)
    weights = op.Relu(op.Sub(_double(1), op.Abs(distance)))
    weights = op.Where(op.Less(taps, op.Unsqueeze(count, _ints(1))), weights, _double(0))
    # 3. normalised by their sum, added up in window order
    total = op.Gather(op.CumSum(weights, _int(1)), op.Sub(reach, _int(1)), axis=1)  # (m,)
    divided = op.Div(weights, op.Unsqueeze(total, _ints(1)))
    weights = op.Where(op.Unsqueeze(op.Equal(total, _double(0)), _ints(1)), weights, divided)
    # 4. bits: the first b in 0..21 with round(max weight * 2^(b + 1)) >= 2^15, else 22
    powers = op.Pow(_double(2), op.Cast(op.Range(_int(1), _int(23), _int(1)), to=DOUBLE))
    largest = op.Mul(op.ReduceMax(weights, keepdims=0), powers)  # (22,)
    overflows = op.GreaterOrEqual(op.Floor(op.Add(largest, _double(0.5))), _double(2**15))
    flags = op.Concat(op.Cast(overflows, to=INT32), _int32s(1), axis=0)  # a last 1: 22 if none
    bits = op.ArgMax(flags, axis=0, keepdims=0)  # the first 1
    scaled = op.Mul(weights, op.Pow(_double(2), op.Cast(bits, to=DOUBLE)))
    return first, op.Cast(op.Floor(op.Add(scaled, _double(0.5))), to=INT32), bits


def _power_of_two(exponent):
    """2^exponent as int32, for an int64 exponent in 0..22."""
    return op.Cast(op.Pow(_double(2), op.Cast(exponent, to=DOUBLE)), to=INT32)


def sort_stable(values, stable=None, dim: int = -1, descending: bool = False):
    """values sorted along ``dim``, equal ones in index order -> (sorted values, indices)."""
    length = op.Reshape(op.Gather(op.Shape(values), _int(dim)), _ints(1))
    return op.TopK(values, length, axis=dim, largest=int(descending), sorted=1)


def _int(value: int):
    return op.Constant(value_int=value)


def _ints(*values: int):
    return op.Constant(value_ints=list(values))


def _float(value: float):
    return op.Constant(value_float=value)


def _double(value: float):
    return op.Cast(op.Constant(value_float=value), to=DOUBLE)  # exact: small integers, halves


def _int32(value: int):
    return op.Cast(op.Constant(value_int=value), to=INT32)


def _int32s(*values: int):
    return op.Cast(op.Constant(value_ints=list(values)), to=INT32)
