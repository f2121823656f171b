"""rcnn: the region-based detector lineage (R-CNN, SPPNet, Fast R-CNN, Faster R-CNN)."""

__version__ = "0.1.0"
