"""COCO detection metrics through pycocotools' COCOeval, the reference every paper quotes.

Nothing of COCOeval is re-implemented: this module only translates our records into COCO's
dictionaries, in memory, and reads the 12 numbers of ``COCOeval.summarize()`` back:
AP@[.5:.95] (the mean over IoU 0.50, 0.55, ..., 0.95 of 101-point interpolated AP), AP50,
AP75, AP of small (< 32² pixels), medium and large (> 96²) objects, and the average
recalls AR1, AR10, AR100, AR small, medium and large.

Translation: image ``i`` of the list has COCO id ``image_ids[i]`` (default ``i``); label
``k`` has category id ``category_ids[k - 1]`` (default ``k``), named ``class_names[k - 1]``.
A box (x1, y1, x2, y2) becomes COCO's [x, y, width, height] with width = x2 - x1: both are
continuous pixel coordinates, so nothing is added or subtracted. Ground-truth ``area`` is
the box area (our data has boxes, not masks). ``difficult`` becomes ``iscrowd``: COCOeval
then ignores detections matched to it, as VOC ignores difficult boxes, but it measures
the overlap with a crowd box as intersection / detection area.

Shapes: N images, G ground-truth boxes, D detections, K object classes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from rcnn.boxes import box_area
from rcnn.errors import RcnnError
from rcnn.files import write_json
from rcnn.structures import Annotation, Detections

# The order of COCOeval.stats for boxes; pycocotools writes -1 where a number is undefined.
STAT_NAMES = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar1",
    "ar10",
    "ar100",
    "ar_small",
    "ar_medium",
    "ar_large",
)


@dataclass(frozen=True)
class CocoResult:
    """COCOeval's numbers by name (``STAT_NAMES``), NaN where pycocotools reports -1 (e.g.
    ``ap_small`` when there is no small ground truth); ``summary`` is its printed table."""

    stats: dict[str, float]
    summary: str

    def __getitem__(self, name: str) -> float:
        return self.stats[name]


def coco_ground_truth(
    annotations: Sequence[Annotation],
    image_sizes: Sequence[tuple[int, int]],
    class_names: Sequence[str],
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
) -> dict:
    """A COCO data set dictionary (``images``, ``annotations``, ``categories``) of our ground
    truth; ``image_sizes[i]`` is image i's ``(H, W)``."""
    image_ids = _image_ids(len(annotations), image_ids)
    category_ids = _category_ids(len(class_names), category_ids)
    if len(image_sizes) != len(annotations):
        raise RcnnError(f"got {len(image_sizes)} image sizes for {len(annotations)} images")
    images = [
        {"id": image_id, "height": int(h), "width": int(w)}
        for image_id, (h, w) in zip(image_ids, image_sizes, strict=True)
    ]
    objects = []
    for image_id, ann in zip(image_ids, annotations, strict=True):
        objects += _objects(image_id, ann, category_ids, first_id=len(objects) + 1)
    categories = [{"id": c, "name": n} for c, n in zip(category_ids, class_names, strict=True)]
    return {"images": images, "annotations": objects, "categories": categories}


def coco_results(
    detections: Sequence[Detections],
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """COCO's results format: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.

    ``image_ids[i]`` is image i's id (default i); ``category_ids[k - 1]`` label k's (default k).
    """
    image_ids = _image_ids(len(detections), image_ids)
    results = []
    for image_id, det in zip(image_ids, detections, strict=True):
        labels, scores = det.labels.tolist(), det.scores.tolist()
        for box, label, score in zip(_xywh(det.boxes), labels, scores, strict=True):
            category = label if category_ids is None else category_ids[label - 1]
            results.append(
                {"image_id": image_id, "category_id": category, "bbox": box, "score": score}
            )
    return results


def write_coco_results(
    path: str | os.PathLike,
    detections: Sequence[Detections],
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
) -> None:
    """Write :func:`coco_results` to ``path`` (one compact JSON line, written atomically)."""
    write_json(path, coco_results(detections, image_ids, category_ids), indent=None)


def evaluate_coco(
    detections: Sequence[Detections],
    annotations: Sequence[Annotation],
    image_sizes: Sequence[tuple[int, int]],
    class_names: Sequence[str],
    max_detections: int = 100,
) -> CocoResult:
    """Run COCOeval (bbox) on our records; at most ``max_detections`` per image count.

    pycocotools' progress messages and table are captured, not printed: the table is
    returned as ``summary``.
    """
    if len(detections) != len(annotations):
        raise RcnnError(f"got {len(detections)} Detections for {len(annotations)} images")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ground_truth = _coco_from(coco_ground_truth(annotations, image_sizes, class_names))
        results = coco_results(detections)
        if results:
            found = ground_truth.loadRes(results)
        else:  # loadRes fails on an empty list: no results is a data set without boxes
            found = _coco_from({**ground_truth.dataset, "annotations": []})
        cocoeval = COCOeval(ground_truth, found, iouType="bbox")
        cocoeval.params.maxDets = [1, 10, max_detections]
        cocoeval.evaluate()
        cocoeval.accumulate()
        before = printed.tell()
        cocoeval.summarize()
    stats = {
        name: math.nan if value == -1 else float(value)
        for name, value in zip(STAT_NAMES, cocoeval.stats, strict=True)
    }
    return CocoResult(stats, printed.getvalue()[before:])


def _coco_from(dataset: dict) -> COCO:
    """A pycocotools COCO object over an in-memory data set dictionary."""
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _objects(image_id: int, ann: Annotation, category_ids: list[int], first_id: int) -> list[dict]:
    """COCO annotation dictionaries of one image's G boxes, numbered from ``first_id``.

    COCOeval needs annotation ids > 0 (it marks "not matched" with 0).
    """
    rows = zip(
        _xywh(ann.boxes),
        ann.labels.tolist(),
        box_area(ann.boxes.double()).tolist(),
        ann.difficult.tolist(),
        strict=True,
    )
    return [
        {
            "id": first_id + g,
            "image_id": image_id,
            "category_id": category_ids[label - 1],
            "bbox": box,
            "area": area,
            "iscrowd": int(crowd),
        }
        for g, (box, label, area, crowd) in enumerate(rows)
    ]


def _xywh(boxes: Tensor) -> list[list[float]]:
    """(B, 4) xyxy -> B lists [x, y, width, height] (width = x2 - x1, no + 1)."""
    xywh = boxes.double().clone()
    xywh[:, 2:] -= xywh[:, :2]
    return xywh.tolist()


def _image_ids(num_images: int, image_ids: Sequence[int] | None) -> list[int]:
    """The given ids, one per image, or the default: the image's position in the list."""
    if image_ids is None:
        return list(range(num_images))
    if len(image_ids) != num_images:
        raise RcnnError(f"got {len(image_ids)} image ids for {num_images} images")
    return list(image_ids)


def _category_ids(num_classes: int, category_ids: Sequence[int] | None) -> list[int]:
    """The given ids, one per class, or the default: the label itself (1..K)."""
    if category_ids is None:
        return list(range(1, num_classes + 1))
    if len(category_ids) != num_classes:
        raise RcnnError(f"got {len(category_ids)} category ids for {num_classes} classes")
    return list(category_ids)
