"""RoIAlign (Mask R-CNN §3): RoI pooling without quantisation, by bilinear sampling.

Exactly torchvision's kernel:

1. Scale the RoI by ``spatial_scale``; ``aligned=True`` also shifts it by -0.5 so that a
   pixel's centre lands on a cell's centre. In the legacy mode (``aligned=False``) the
   RoI's width and height are raised to at least 1; ``aligned=True`` leaves them as they are.
2. Cut it into ``h x w`` bins of ``roi_h / h x roi_w / w`` (no rounding) and put a
   ``gh x gw`` grid of sample points in each bin: ``gh = sampling_ratio`` when it is
   positive, else ``ceil(roi_h / h)`` per RoI.
3. Read each sample bilinearly: a sample with ``y < -1`` or ``y > H`` (likewise x) reads 0;
   otherwise ``y <= 0`` reads row 0 and ``y >= H - 1`` reads row ``H - 1``.
4. A bin's output is the mean of its samples (the zeros of step 3 included).

Two fast paths. On the CPU, for float32 and bfloat16 maps (computed in float32), when no
gradient of the boxes is wanted (test time; approximate joint training, which needs only the
map's gradient), the C kernel (``_roi_align.c``) walks each RoI's bins and samples, rows and
columns of taps worked out once per RoI, and spreads each bin's gradient back over the same
taps. Otherwise the PyTorch path turns steps 2-4 into one sparse weighted sum: every output
value is
``sum_k w_k * F[cell_k]`` over the 4 bilinear taps of each of its samples, with
``w_k = bilinear weight / samples``. ``embedding_bag`` computes that sum for all RoIs at
once, on a channels-last copy of the map. The weights are differentiable functions of the
RoI, so autograd also gives d(out)/d(rois), which Faster R-CNN's non-approximate joint
training needs.

Under ``torch.export`` the op is one node, ``rcnn::roi_align``, which ``rcnn.export`` writes as
ONNX's RoiAlign (coordinate_transformation_mode ``output_half_pixel`` is ``aligned=False``,
``half_pixel`` is ``aligned=True``).

Shapes: features ``(N, C, H, W)``, rois ``(R, 5)`` ``[batch_index, x1, y1, x2, y2]`` in image
pixels, output ``(R, C, h, w)``. ``E`` taps in all, ``B = R * h * w`` bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rcnn.ops._pooling import check_rois, pair, pooled_shape

try:  # the C kernel, built at install where a C compiler was found (setup.py)
    from rcnn.ops._roi_align import roi_align_backward as _native_backward
    from rcnn.ops._roi_align import roi_align_forward as _native_forward
except ImportError:
    _native_forward = _native_backward = None
# the map types the kernel serves: it computes in float32, so a bfloat16 map (a convolution's
# output under bfloat16 autocast) is read as float32 and pooled back to bfloat16
_NATIVE = (torch.float32, torch.bfloat16)

# Taps handled together when the gradient of the weights is computed; bounds the memory of
# that step to about 2 * _TAP_CHUNK * C values.
_TAP_CHUNK = 1 << 14


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of ``features (N, C, H, W)`` over ``rois (R, 5)`` -> ``(R, C, h, w)``."""
    if torch.compiler.is_exporting():
        size = list(pair(output_size))
        return torch.ops.rcnn.roi_align(
            features, rois, size, spatial_scale, sampling_ratio, aligned
        )
    image_index = check_rois(features, rois)
    h, w = pair(output_size)
    if _native_forward is not None and _native_applies(features, rois):
        return _NativeRoIAlign.apply(features, rois, (h, w), spatial_scale, sampling_ratio, aligned)
    n, c, height, width = features.shape
    cells, weights, offsets = _taps(
        rois, image_index, (height, width), (h, w), spatial_scale, sampling_ratio, aligned
    )
    # (N, C, H, W) -> (N, H, W, C) -> (N*H*W, C): one row of C values per cell
    table = features.permute(0, 2, 3, 1).contiguous().view(n * height * width, c)
    index = _index_dtype(table.shape[0])
    out = _WeightedSum.apply(table, cells.to(index), weights.to(features.dtype), offsets.to(index))
    # (R*h*w, C) -> (R, h, w, C) -> (R, C, h, w)
    return out.view(-1, h, w, c).permute(0, 3, 1, 2).contiguous()


def _native_applies(features: Tensor, rois: Tensor) -> bool:
    """Whether the C kernel serves this call: on the CPU, float32 or bfloat16, and with no
    gradient wanted of the boxes (a gradient of the map it computes itself)."""
    box_gradient = torch.is_grad_enabled() and rois.requires_grad
    return not box_gradient and features.device.type == "cpu" and features.dtype in _NATIVE


class _NativeRoIAlign(torch.autograd.Function):
    """``roi_align`` by the C kernel (``_roi_align.c``): the same bins, samples and taps, each
    bin's sum over its samples accumulated channel by channel and written straight into the
    ``(R, C, h, w)`` output; backward spreads each bin's gradient over the same taps."""

    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        n, c, height, width = features.shape
        h, w = output_size
        boxes = rois.detach().to(torch.float32).contiguous()
        ctx.geometry = (c, height, width, h, w, spatial_scale, sampling_ratio, aligned)
        ctx.map_shape, ctx.map_dtype = (n, height, width, c), features.dtype
        ctx.save_for_backward(boxes)
        # (N, C, H, W) -> (N, H, W, C) -> (N*H*W, C): one row of C values per cell
        table = features.detach().permute(0, 2, 3, 1).contiguous().view(n * height * width, c)
        table = table.to(torch.float32)
        out = torch.empty((rois.shape[0], c, h, w))
        _native_forward(table.numpy(), boxes.numpy(), *ctx.geometry, out.numpy())
        return out.to(features.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (boxes,) = ctx.saved_tensors
        n, height, width, c = ctx.map_shape
        grad_table = torch.zeros((n * height * width, c))
        pooled = grad_out.to(torch.float32).contiguous()
        _native_backward(grad_table.numpy(), boxes.numpy(), *ctx.geometry, pooled.numpy())
        # (N*H*W, C) -> (N, H, W, C) -> (N, C, H, W), channels-last in memory
        grad_features = grad_table.view(n, height, width, c).permute(0, 3, 1, 2)
        return grad_features.to(ctx.map_dtype), None, None, None, None, None


@torch.library.custom_op("rcnn::roi_align", mutates_args=())
def _roi_align_op(
    features: Tensor,
    rois: Tensor,
    output_size: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """``roi_align`` as one node of an exported graph (inference only: no gradient)."""
    return roi_align(features, rois, tuple(output_size), spatial_scale, sampling_ratio, aligned)


@_roi_align_op.register_fake
def _(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    return features.new_empty(pooled_shape(features, rois, output_size))


def _taps(rois, image_index, map_size, output_size, spatial_scale, sampling_ratio, aligned):
    """Every bin's bilinear taps: ``cells (E,)``, ``weights (E,)`` and bin offsets ``(B,)``.

    A bin's taps are contiguous, starting at its offset; ``weights`` carry autograd to rois.
    Sampling a regular grid bilinearly is separable: a bin's samples are its ``gh`` sample
    rows times its ``gw`` sample columns, and each sample's 4 taps are its 2 row taps times
    its 2 column taps. So each axis is worked out on its own, ``(R, bins, 2 * g)``, and a
    bin's ``4 * gh * gw`` taps are the outer product of its row and column taps. With an
    adaptive grid (``sampling_ratio <= 0``) the RoIs' grids differ: each axis is padded to
    the largest and the padding's taps dropped.
    """
    h, w = output_size
    height, width = map_size
    # 1. the RoI on the map, as [x, y] pairs
    start = rois[:, 1:3] * spatial_scale - (0.5 if aligned else 0.0)
    size = rois[:, 3:5] * spatial_scale - (0.5 if aligned else 0.0) - start
    if not aligned:
        size = size.clamp(min=1.0)
    bins = torch.tensor([w, h], dtype=size.dtype, device=size.device)
    # 2. the sample grid of each RoI: (R, 2) [gw, gh], and the largest of each axis
    if sampling_ratio > 0:
        grid = torch.full_like(start, sampling_ratio, dtype=torch.int64)
        largest = (sampling_ratio, sampling_ratio)
    else:
        grid = torch.ceil(size.detach() / bins).long().clamp(min=0)
        largest = tuple(grid.amax(0).tolist()) if len(grid) else (0, 0)
    # 3. each axis' taps: cells along it and bilinear weights, (R, bins, 2 * g)
    rows, row_weights = _axis_taps(start[:, 1], size[:, 1], h, grid[:, 1], largest[1], height)
    cols, col_weights = _axis_taps(start[:, 0], size[:, 0], w, grid[:, 0], largest[0], width)
    # 4. the mean over a bin's samples is folded into the weights
    per_bin = grid[:, 0] * grid[:, 1]  # (R,)
    mean = 1 / per_bin.clamp(min=1).to(size.dtype)
    # the outer products, (R, h, w, 2 * gh, 2 * gw): cell = (image * H + row) * W + column
    rows = (image_index[:, None, None] * height + rows) * width
    cells = rows[:, :, None, :, None] + cols[:, None, :, None, :]
    row_weights = row_weights * mean[:, None, None]
    weights = row_weights[:, :, None, :, None] * col_weights[:, None, :, None, :]
    if sampling_ratio <= 0:  # drop the padding: taps of sample rows/columns past a RoI's grid
        real = _real_taps(grid[:, 1], largest[1])[:, None, None, :, None]
        real = real & _real_taps(grid[:, 0], largest[0])[:, None, None, None, :]
        real = real.expand(cells.shape)
        cells, weights = cells[real], weights[real]
    taps_per_bin = (4 * per_bin).repeat_interleave(h * w)  # (B,)
    offsets = torch.cumsum(taps_per_bin, 0) - taps_per_bin
    return cells.flatten(), weights.flatten(), offsets


def _axis_taps(start: Tensor, size: Tensor, bins: int, grid: Tensor, largest: int, limit: int):
    """One axis of the RoIs' sample grids: each RoI's ``start (R,)``, ``size (R,)``, ``bins``
    bins of ``grid (R,)`` samples each, padded to ``largest``, on a map ``limit`` cells long
    -> cells and weights ``(R, bins, 2 * largest)``: each sample's low and high tap.

    A sample off the map (step 3) weighs 0.
    """
    bin_size = (size / bins)[:, None, None]
    samples = grid.clamp(min=1).to(size.dtype)[:, None, None]
    k = torch.arange(bins, device=size.device)[None, :, None]
    s = torch.arange(largest, device=size.device)[None, None, :]
    coord = start[:, None, None] + k * bin_size + (s + 0.5) * bin_size / samples  # (R, bins, g)
    inside = ((coord >= -1) & (coord <= limit)).to(coord.dtype)
    low, high, fraction = _axis(coord, limit)
    cells = torch.stack([low, high], dim=-1).flatten(-2)
    weights = (torch.stack([1 - fraction, fraction], dim=-1) * inside[..., None]).flatten(-2)
    return cells, weights


def _real_taps(grid: Tensor, largest: int) -> Tensor:
    """``(R, 2 * largest)`` bool: which of an axis' padded taps belong to a RoI's ``grid (R,)``."""
    return torch.arange(2 * largest, device=grid.device)[None, :] // 2 < grid[:, None]


def _axis(coord: Tensor, limit: int) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel's bilinear rule along one axis of ``limit`` cells -> low, high, fraction."""
    coord = coord.clamp(min=0)  # at or before the first cell centre: read cell 0
    low = coord.detach().floor().long()
    last = low >= limit - 1  # at or past the last cell centre: read cell limit - 1
    low = torch.where(last, limit - 1, low)
    high = torch.where(last, limit - 1, low + 1)
    fraction = torch.where(last, torch.zeros_like(coord), coord - low)
    return low, high, fraction


class _WeightedSum(torch.autograd.Function):
    """``out[b] = sum over bag b's taps of weights[k] * table[cells[k]]`` -> ``(B, C)``."""

    @staticmethod
    def forward(ctx, table, cells, weights, offsets):
        ctx.save_for_backward(table, cells, weights, offsets)
        if cells.numel() == 0:
            return table.new_zeros((offsets.numel(), table.shape[1]))
        return F.embedding_bag(cells, table, offsets, mode="sum", per_sample_weights=weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        table, cells, weights, offsets = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # embedding_bag is ~15x slower on a strided table
        bag = _bag_of_each_tap(offsets, cells.numel())
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:  # the transpose: each cell sums its taps' bags
            order = torch.sort(cells, stable=True).indices
            counts = torch.bincount(cells, minlength=table.shape[0])
            starts = torch.cumsum(counts, 0) - counts
            grad_table = F.embedding_bag(
                bag[order], grad_out, starts, mode="sum", per_sample_weights=weights[order]
            )
        if ctx.needs_input_grad[2]:  # d out / d weight_k = table[cell_k] . grad_out[bag_k]
            grad_weights = torch.cat(
                [
                    (table[cells[k : k + _TAP_CHUNK]] * grad_out[bag[k : k + _TAP_CHUNK]]).sum(1)
                    for k in range(0, cells.numel(), _TAP_CHUNK)
                ]
                or [weights.new_zeros(0)]
            )
        return grad_table, None, grad_weights, None


def _index_dtype(cells: int) -> torch.dtype:
    """int32 for indices into a table of ``cells`` rows where they fit: the backward pass
    sorts the taps by cell, and int32 keys sort 1.7x faster than int64 here."""
    return torch.int32 if cells < 2**31 else torch.int64


def _bag_of_each_tap(offsets: Tensor, taps: int) -> Tensor:
    """``(E,)`` the bag of each tap, from the bags' start ``offsets (B,)``."""
    sizes = torch.diff(offsets, append=offsets.new_tensor([taps]))
    return torch.repeat_interleave(torch.arange(len(offsets), device=offsets.device), sizes)


def roi_align_reference(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """torchvision's ``roi_align_forward_kernel``, loop for loop, in Python floats. Slow."""
    check_rois(features, rois)
    h, w = pair(output_size)
    out = features.new_zeros((rois.shape[0], features.shape[1], h, w))
    offset = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1 = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        roi_w, roi_h = x2 * spatial_scale - offset - x1, y2 * spatial_scale - offset - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / h, roi_w / w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / w)
        count = max(grid_h * grid_w, 1)
        for i in range(h):
            for j in range(w):
                total = features.new_zeros(features.shape[1])
                for iy in range(grid_h):
                    y = y1 + i * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + j * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += _bilinear_reference(features[int(b)], y, x)
                out[r, :, i, j] = total / count
    return out


def _bilinear_reference(plane: Tensor, y: float, x: float) -> Tensor:
    """The kernel's ``bilinear_interpolate`` at ``(y, x)`` of ``plane (C, H, W)`` -> ``(C,)``."""
    height, width = plane.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return plane.new_zeros(plane.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * plane[:, y_low, x_low]
        + hy * lx * plane[:, y_low, x_high]
        + ly * hx * plane[:, y_high, x_low]
        + ly * lx * plane[:, y_high, x_high]
    )
