"""Fast R-CNN's RoI max pooling layer (Fast R-CNN §2.1), with the original quantisation.

1. Project the RoI onto the feature map: multiply its corners by ``spatial_scale`` (1/16 for
   VGG16's conv5) and round to whole cells (``project_rois``). Caffe's C ``round`` sends
   halves away from zero; the window is cells ``start..end`` inclusive, at least one cell.
2. Cut the ``roi_h x roi_w`` window into ``h x w`` bins of about ``roi_h/h x roi_w/w`` cells:
   bin ``i`` covers rows ``[floor(i * roi_h / h), ceil((i + 1) * roi_h / h))`` of the window,
   clipped to the map (the same floor/ceil bins as adaptive max pooling). Neighbouring bins
   share a cell where the division is not exact.
3. Max-pool each bin (an empty bin, wholly outside the map, gives 0); the gradient of each
   output goes to its argmax.

The bin edges are computed in exact integer arithmetic. Caffe's and torchvision's kernels
compute ``ceil((i + 1) * (roi_h / h))`` in floating point, which lands one cell further on
rare sizes (e.g. roi_h = 57, h = 7 in float32: 7 * (57 / 7) rounds to 57.000004), so their
last bin can take in one more row or column than the paper's rule gives.

Under ``torch.export`` the op is one node, ``rcnn::roi_pool``, which ``rcnn.export`` writes as
ONNX's MaxRoiPool: onnxruntime rounds the corners the same way but computes the bin edges in
floating point as Caffe does, so the two agree exactly on windows of up to 56 cells a side.

Shapes: features ``(N, C, H, W)``, rois ``(R, 5)`` ``[batch_index, x1, y1, x2, y2]`` in image
pixels, output ``(R, C, h, w)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rcnn.ops._pooling import check_rois, max_over_bins, pair, pooled_shape, round_half_away


def project_rois(boxes: Tensor, spatial_scale: float) -> Tensor:
    """Fast R-CNN's RoI projection: ``boxes (..., 4)`` image xyxy -> ``(..., 4)`` int64 cells.

    Each corner is scaled by ``spatial_scale`` and rounded half away from zero; the result
    ``[x1, y1, x2, y2]`` names the first and last cell of the window (both included). The
    seed's example: an RoI centred at (340, 450), 128 wide and 320 high, on a 1/16 map,
    becomes cells x 17..25 and y 18..38: centre (21, 28), 8 x 20 cells apart.
    """
    return round_half_away(boxes.detach() * spatial_scale).long()


def roi_pool(
    features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float
) -> Tensor:
    """RoI max pooling of ``features (N, C, H, W)`` over ``rois (R, 5)`` -> ``(R, C, h, w)``."""
    if torch.compiler.is_exporting():
        return torch.ops.rcnn.roi_pool(features, rois, list(pair(output_size)), spatial_scale)
    image_index = check_rois(features, rois)
    h, w = pair(output_size)
    cells = project_rois(rois[:, 1:], spatial_scale)  # (R, 4) [x1, y1, x2, y2]
    height, width = features.shape[-2:]
    rows = _roi_bins(cells[:, 1], cells[:, 3], h, height)
    cols = _roi_bins(cells[:, 0], cells[:, 2], w, width)
    return max_over_bins(features, image_index, rows, cols)


@torch.library.custom_op("rcnn::roi_pool", mutates_args=())
def _roi_pool_op(
    features: Tensor, rois: Tensor, output_size: list[int], spatial_scale: float
) -> Tensor:
    """``roi_pool`` as one node of an exported graph (inference only: no gradient)."""
    return roi_pool(features, rois, tuple(output_size), spatial_scale)


@_roi_pool_op.register_fake
def _(features, rois, output_size, spatial_scale):
    return features.new_empty(pooled_shape(features, rois, output_size))


def _roi_bins(start: Tensor, end: Tensor, bins: int, limit: int) -> Tensor:
    """Bins of the windows ``start..end (R,)`` (inclusive) along one axis -> ``(R, bins, 2)``.

    Bin ``i`` is ``[floor(i * size / bins), ceil((i + 1) * size / bins))`` past ``start``,
    ``size = max(end - start + 1, 1)``, clipped to ``[0, limit]``.
    """
    size = (end - start + 1).clamp(min=1)[:, None]  # (R, 1)
    i = torch.arange(bins, device=start.device)
    low = start[:, None] + torch.div(i * size, bins, rounding_mode="floor")
    high = start[:, None] - torch.div(-(i + 1) * size, bins, rounding_mode="floor")  # ceil
    return torch.stack([low, high], dim=-1).clamp(0, limit)


def roi_pool_reference(
    features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float
) -> Tensor:
    """Caffe's ROIPoolingLayer forward, bin by bin, in plain loops. Slow."""
    check_rois(features, rois)
    h, w = pair(output_size)
    height, width = features.shape[-2:]
    out = features.new_zeros((rois.shape[0], features.shape[1], h, w))
    for r, roi in enumerate(rois.tolist()):
        x1, y1, x2, y2 = project_rois(rois[r, 1:], spatial_scale).tolist()
        roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        for i in range(h):
            top = min(max(y1 + (i * roi_h) // h, 0), height)
            bottom = min(max(y1 - (-(i + 1) * roi_h) // h, 0), height)
            for j in range(w):
                left = min(max(x1 + (j * roi_w) // w, 0), width)
                right = min(max(x1 - (-(j + 1) * roi_w) // w, 0), width)
                if bottom > top and right > left:  # the first maximum in row-major order
                    window = features[int(roi[0]), :, top:bottom, left:right].flatten(1)
                    first = (window == window.amax(dim=1, keepdim=True)).int().argmax(dim=1)
                    out[r, :, i, j] = window.gather(1, first[:, None])[:, 0]
    return out
