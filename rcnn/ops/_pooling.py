"""What the RoI ops share: checking RoIs, C's rounding, and the "max over given bins" core.

Fast R-CNN's RoI pooling and SPPNet's spatial pyramid pooling are the same operation with
different bins: cut a window of the feature map into rectangles and keep each rectangle's
maximum. ``max_over_bins`` does that for any bins; ``roi_pool`` and ``spp`` only say where the
bins lie. A bin is a row interval ``[y0, y1)`` times a column interval ``[x0, x1)`` of one
image's map, already clipped to the map; an empty interval makes an empty bin, whose output is
0 and which passes no gradient.

Shapes: features ``(N, C, H, W)``; ``U`` pooled units (RoIs, or RoI-level pairs) with
``h x w`` bins each; row bins ``(U, h, 2)`` and column bins ``(U, w, 2)``, int64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_rois(features: Tensor, rois: Tensor) -> Tensor:
    """Check ``features (N, C, H, W)`` and ``rois (R, 5)``; return the image indices ``(R,)``."""
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"rois must be (R, 5) [batch_index, x1, y1, x2, y2], got shape {tuple(rois.shape)}"
        )
    image_index = rois[:, 0].detach().long()
    if image_index.numel() and not (0 <= image_index.min() <= image_index.max() < len(features)):
        raise ValueError(
            f"rois' batch_index must lie in [0, {len(features) - 1}] for {len(features)} "
            f"images, got values from {int(image_index.min())} to {int(image_index.max())}"
        )
    return image_index


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """``output_size`` as ``(h, w)``: an int ``s`` means ``(s, s)``."""
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"output_size must be positive, got {size}")
    return int(h), int(w)


def pooled_shape(features: Tensor, rois: Tensor, output_size: list[int]) -> tuple:
    """The shape ``(R, C, h, w)`` of pooling ``features (N, C, H, W)`` over ``rois (R, 5)``."""
    return (rois.shape[0], features.shape[1], *output_size)


def round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: halves go away from zero (2.5 -> 3, -2.5 -> -3), unlike ``torch.round``."""
    whole = x.trunc()
    return whole + torch.where((x - whole).abs() >= 0.5, x.sign(), torch.zeros_like(x))


def max_over_bins(features: Tensor, image_index: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Max of ``features (N, C, H, W)`` over each bin of each unit -> ``(U, C, h, w)``.

    ``image_index (U,)`` says which image a unit pools; ``rows (U, h, 2)`` and
    ``cols (U, w, 2)`` give its bins' ``[start, end)`` intervals, clipped to the map.
    Where a bin holds several maxima, the first in row-major order wins (as in Caffe).
    The gradient flows back to each output's argmax only.
    """
    return _MaxOverBins.apply(features, image_index, rows, cols)


class _MaxOverBins(torch.autograd.Function):
    """Forward: for each unit, gather its bins side by side into a crop; max-pool the crop.

    A unit whose longest bin is ``kh x kw`` cells gets an ``(h*kh, w*kw)`` crop holding each
    bin in a ``kh x kw`` block, padded by repeating the bin's last row and column (a repeat
    cannot change a maximum and comes after the original in row-major order, so the first
    maximum still wins); then ``max_pool2d`` with kernel = stride = ``(kh, kw)`` is the
    answer, argmax included. Crops are gathered from a channels-last copy of the map one
    unit at a time (small crops stay in cache, which beats one large gather for all units)
    and pooled straight into the unit's slot of a channels-last result: the output is
    ``(U, C, h, w)`` stored as ``(U, h, w, C)``. Each argmax stays an index into its unit's
    crop; backward turns all of them into cells of the map with one ``gather`` and adds the
    gradient there with one ``scatter_add_``.
    """

    @staticmethod
    def forward(ctx, features, image_index, rows, cols):
        n, c, height, width = features.shape
        units, h, w = rows.shape[0], rows.shape[1], cols.shape[1]
        device = features.device
        # (N, C, H, W) -> (N, H, W, C) -> (N*H*W, C), plus a -inf "sentinel" cell for empty bins
        cells = features.permute(0, 2, 3, 1).reshape(n * height * width, c)
        cells = torch.cat([cells, cells.new_full((1, c), float("-inf"))])
        # (U, h, w, C) buffers seen as channels-last (U, C, h, w)
        out = features.new_empty((units, h, w, c)).permute(0, 3, 1, 2)
        local = torch.empty((units, h, w, c), dtype=torch.int64, device=device)
        local = local.permute(0, 3, 1, 2)  # each output's argmax within its unit's crop
        groups = list(_crop_tables(image_index, rows, cols, (n, height, width)))
        # each unit's crop table, padded: row u maps unit u's crop positions to cells
        tables = image_index.new_full((units, max((g[1].shape[1] for g in groups), default=0)), -1)
        for members, group_tables, kernel in groups:
            tables[members, : group_tables.shape[1]] = group_tables
            for unit, table in zip(members.tolist(), group_tables, strict=True):
                # (h*kh * w*kw, C) -> (1, h*kh, w*kw, C) -> channels-last (1, C, h*kh, w*kw)
                crop = cells.index_select(0, table).view(1, h * kernel[0], w * kernel[1], c)
                torch.ops.aten.max_pool2d_with_indices.out(
                    crop.permute(0, 3, 1, 2), kernel, kernel, (0, 0), (1, 1), False,
                    out=out[unit : unit + 1], indices=local[unit : unit + 1],
                )  # fmt: skip
        empty_rows = rows[..., 1] <= rows[..., 0]  # (U, h)
        empty_cols = cols[..., 1] <= cols[..., 0]  # (U, w)
        empty = (empty_rows[:, :, None] | empty_cols[:, None, :])[:, None]  # (U, 1, h, w)
        out.masked_fill_(empty, 0)
        ctx.save_for_backward(local, tables, empty)
        ctx.feature_shape = features.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        local, tables, empty = ctx.saved_tensors
        n, c, height, width = ctx.feature_shape
        # the cell of each output's argmax, (U, h*w*C) as ``local`` is stored
        argmax = tables.gather(1, local.permute(0, 2, 3, 1).reshape(len(tables), -1))
        grad = grad_out.permute(0, 2, 3, 1).reshape(-1, c)  # (U*h*w, C)
        if empty.any():
            # an empty bin passes no gradient whatever its argmax says: over a crop of -inf
            # sentinels the CPU kernel names the bin's first position (a sentinel), CUDA's
            # names position 0 of the crop, a real cell. Masked here, in grad_out's own
            # channels-last order: masking (U, C, h, w) first cost a transposing copy
            grad = grad.masked_fill(empty.reshape(-1, 1), 0)
        # the gradient of ``cells``; its last cell, the sentinel, is dropped
        grad_cells = grad_out.new_zeros((n * height * width + 1, c))
        grad_cells.scatter_add_(0, argmax.reshape(-1, c), grad)
        # (N*H*W, C) -> (N, H, W, C) -> (N, C, H, W)
        grad = grad_cells[: n * height * width].view(n, height, width, c)
        return grad.permute(0, 3, 1, 2).contiguous(), None, None, None


def _crop_tables(image_index: Tensor, rows: Tensor, cols: Tensor, shape: tuple[int, int, int]):
    """Yield ``(members (G,), tables (G, h*kh * w*kw), (kh, kw))`` per group of equal kernels.

    ``tables`` holds, for each crop position of each member, its cell in the
    ``(N*H*W + 1)``-cell table: ``(image * H + y) * W + x``, or the sentinel ``N*H*W``.
    ``shape`` is ``(N, H, W)``.
    """
    n, height, width = shape
    kh = (rows[..., 1] - rows[..., 0]).amax(1).clamp(min=1)  # (U,) longest bins
    kw = (cols[..., 1] - cols[..., 0]).amax(1).clamp(min=1)
    key = kh * (width + 1) + kw
    for value in key.unique().tolist():
        members = torch.nonzero(key == value).flatten()
        kernel = (value // (width + 1), value % (width + 1))
        y = _cells_of_bins(rows[members], kernel[0])  # (G, h, kh), -1 where the bin is empty
        x = _cells_of_bins(cols[members], kernel[1])  # (G, w, kw)
        # (G, h, kh, 1, 1) and (G, 1, 1, w, kw) -> (G, h, kh, w, kw) -> (G, h*kh * w*kw)
        y, x = y[:, :, :, None, None], x[:, None, None, :, :]
        table = (image_index[members].view(-1, 1, 1, 1, 1) * height + y) * width + x
        table = torch.where((y < 0) | (x < 0), n * height * width, table)
        yield members, table.flatten(1), kernel


def _cells_of_bins(bins: Tensor, k: int) -> Tensor:
    """``bins (G, b, 2)`` -> ``(G, b, k)``: each bin's cells, its last cell repeated to ``k``.

    An empty bin gives ``-1`` throughout.
    """
    start, end = bins[..., 0:1], bins[..., 1:2]
    offsets = torch.arange(k, device=bins.device)
    cells = torch.minimum(start + offsets, end - 1)
    return torch.where(end > start, cells, -1)
