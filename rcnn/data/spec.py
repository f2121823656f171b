"""Data set SPECs, the strings users name data with (``--data SPEC``).

- ``shapes``: the built-in synthetic set, generated on the fly, no files;
  ``shapes:train=400,test=100`` sets the number of images of the splits it names;
- ``voc:DIR``: a VOC devkit directory (Annotations/, JPEGImages/, ImageSets/Main/);
- ``coco:ANNOTATIONS.json[:IMAGE_DIR]``: a COCO instances file and its images. IMAGE_DIR
  defaults to ``ROOT/NAME`` for ``ROOT/annotations/instances_NAME.json`` when that folder
  exists, else to the folder holding the JSON file.
"""

from __future__ import annotations

from rcnn.data.coco import COCODataset
from rcnn.data.dataset import DetectionDataset
from rcnn.data.shapes import SPLIT_STREAMS, ShapesDataset
from rcnn.data.voc import VOCDataset
from rcnn.errors import RcnnError

SPEC_FORMS = "shapes[:SPLIT=N,...], voc:DIR or coco:ANNOTATIONS.json[:IMAGE_DIR]"


def open_dataset(spec: str, split: str, **options) -> DetectionDataset:
    """Open one split of the data set named by ``spec``.

    options go to the reader: ``on_bad_sample`` ("error" | "skip") for all; ``max_pixels``
    for VOC and COCO; ``class_names`` for VOC; ``size``, ``seed``, ``config`` for shapes.
    Raises RcnnError for an unknown scheme, a missing directory or file, or an unknown split.
    """
    scheme, _, rest = spec.partition(":")
    if scheme == "shapes":
        sizes = _shapes_sizes(spec, rest)
        return ShapesDataset(split, **({"size": sizes[split]} if split in sizes else {}) | options)
    if scheme == "voc" and rest:
        return VOCDataset(rest, split, **options)
    if scheme == "coco" and rest:
        annotation_file, image_dir = _split_coco(rest)
        return COCODataset(annotation_file, image_dir, split, **options)
    raise RcnnError(f"unknown data set {spec!r}: expected {SPEC_FORMS}")


def _split_coco(rest: str) -> tuple[str, str | None]:
    """``ANN.json[:IMAGE_DIR]`` -> (ANN.json, IMAGE_DIR or None); splits after ``.json:`` so
    that other colons in the paths stay."""
    head, sep, tail = rest.partition(".json:")
    if sep:
        return head + ".json", tail or None
    return rest, None


def _shapes_sizes(spec: str, rest: str) -> dict[str, int]:
    """``train=400,test=100`` -> {"train": 400, "test": 100}; "" -> {}."""
    sizes = {}
    for item in filter(None, rest.split(",")):
        split, _, count = item.partition("=")
        if split not in SPLIT_STREAMS or not count.isdigit():
            raise RcnnError(
                f"{spec!r}: expected shapes:SPLIT=N,... with SPLIT one of "
                f"{', '.join(SPLIT_STREAMS)} and N a number of images"
            )
        sizes[split] = int(count)
    return sizes
