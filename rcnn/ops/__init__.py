"""The region ops of the lineage: NMS, RoI pooling, RoIAlign and spatial pyramid pooling.

Each op has a readable ``*_reference`` twin in its module (literal loops, the paper's or the
original kernel's logic) with the same signature; the tests hold the fast path to it.
"""

from rcnn.ops.nms import batched_nms, nms
from rcnn.ops.roi_align import roi_align
from rcnn.ops.roi_pool import project_rois, roi_pool
from rcnn.ops.spp import spp

__all__ = ["batched_nms", "nms", "project_rois", "roi_align", "roi_pool", "spp"]
