"""rcnn: the region-based detector lineage (R-CNN, SPPNet, Fast R-CNN, Faster R-CNN)."""

__version__ = "0.1.0"

__all__ = ["Detector"]


def __getattr__(name: str):
    """``from rcnn import Detector``, imported on first use so that ``import rcnn`` stays light."""
    if name == "Detector":
        from rcnn.detector import Detector

        return Detector
    raise AttributeError(f"module 'rcnn' has no attribute {name!r}")
