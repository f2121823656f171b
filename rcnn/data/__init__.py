"""Data: the readers (VOC, COCO, the built-in shapes set), transforms and loading.

``open_dataset(spec, split)`` opens any of them; every reader is a ``DetectionDataset``.
"""

from rcnn.data.coco import COCODataset
from rcnn.data.dataset import DetectionDataset, Sample
from rcnn.data.loader import EpochSampler, collate_samples, make_loader
from rcnn.data.shapes import ShapesConfig, ShapesDataset
from rcnn.data.spec import open_dataset
from rcnn.data.transforms import (
    TrainTransform,
    batch_images,
    hflip,
    normalize,
    resize,
    resize_scale,
)
from rcnn.data.voc import VOCDataset, export_voc

__all__ = [
    "COCODataset",
    "DetectionDataset",
    "EpochSampler",
    "Sample",
    "ShapesConfig",
    "ShapesDataset",
    "TrainTransform",
    "VOCDataset",
    "batch_images",
    "collate_samples",
    "export_voc",
    "hflip",
    "make_loader",
    "normalize",
    "open_dataset",
    "resize",
    "resize_scale",
]
