"""COCO: an instances JSON file and its image directory (``coco:ANN.json[:IMAGE_DIR]``).

``bbox [x, y, w, h]`` becomes xyxy ``[x, y, x + w, y + h]``; category ids, in increasing
order, become the contiguous labels 1..K, named by ``categories``; ``iscrowd`` (or an
``ignore`` flag) becomes the annotation's difficult flag; images without annotations are kept.
The original ids stay available for pycocotools and the COCO results writer:
``coco_image_id(i)`` and ``category_ids[k - 1]`` (the COCO id of label k).
"""

from __future__ import annotations

import json
import os

from rcnn.data.dataset import FileDataset, ImageRecord, check_box, make_annotation, path_inside
from rcnn.data.images import DEFAULT_MAX_PIXELS
from rcnn.errors import BadSampleError, RcnnError


class _EntryError(Exception):
    """One entry of the JSON file is unusable; the message says which field and why."""


class COCODataset(FileDataset):
    """A COCO-format data set: one annotation file is one split.

    image_dir defaults to the official layout's image folder when the file is
    ``.../annotations/instances_NAME.json`` and ``.../NAME/`` exists, otherwise to the
    folder holding the annotation file. ``split`` only names the data set (the file is the
    split). Annotations are validated here; boxes sticking out by up to 1 pixel are clipped.
    """

    def __init__(
        self,
        annotation_file: str,
        image_dir: str | None = None,
        split: str = "",
        on_bad_sample: str = "error",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(split, (), on_bad_sample, max_pixels)
        self.annotation_file = os.path.abspath(annotation_file)
        self.image_dir = os.path.abspath(image_dir or default_image_dir(self.annotation_file))
        if not os.path.isdir(self.image_dir):
            raise RcnnError(f"coco:{self.annotation_file}: no image directory {self.image_dir}")
        content = _load_json(self.annotation_file)
        self.category_ids, self.class_names = self._categories(content["categories"])
        images = self._images(content["images"])
        boxes = self._boxes(content.get("annotations", []), images)
        self.records = [r for c in images if (r := self._record(c, images[c], boxes[c]))]
        self.coco_image_ids = [int(r.image_id) for r in self.records]
        self.warn_skipped(f"coco:{annotation_file}")

    def coco_image_id(self, i: int) -> int:
        """The COCO ``image_id`` of image ``i`` (``image_id(i)`` is its string form)."""
        return self.coco_image_ids[i]

    def _categories(self, categories: list) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """(COCO category ids in increasing order, their names): label k <-> index k - 1."""
        try:
            pairs = sorted(
                (_field(c, "id", int), _field(c, "name", str)) for c in map(_entry, categories)
            )
        except _EntryError as error:
            raise BadSampleError(self.annotation_file, f"categories: {error}") from None
        ids = tuple(p[0] for p in pairs)
        if len(set(ids)) != len(ids):
            raise BadSampleError(self.annotation_file, "categories: repeated category id")
        return ids, tuple(p[1] for p in pairs)

    def _images(self, images: list) -> dict[int, tuple[str, tuple[int, int]]]:
        """COCO image id -> (file name, (H, W)), in file order; bad entries reported."""
        out: dict[int, tuple[str, tuple[int, int]]] = {}
        for j, item in enumerate(images):
            try:
                entry = _entry(item)
                coco_id = _field(entry, "id", int)
                size = (_field(entry, "height", int), _field(entry, "width", int))
                if coco_id in out:
                    raise _EntryError("repeated id")
                if problem := self.size_problem(size):
                    raise _EntryError(problem)
                out[coco_id] = (_field(entry, "file_name", str), size)
            except _EntryError as error:
                self.bad_sample(self.annotation_file, f"images[{j}]: {error}")
        return out

    def _boxes(self, annotations: list, images: dict) -> dict[int, list]:
        """COCO image id -> [(xyxy box, label, iscrowd), ...] of its valid annotations."""
        label_of = {c: k + 1 for k, c in enumerate(self.category_ids)}
        out: dict[int, list] = {coco_id: [] for coco_id in images}
        for j, item in enumerate(annotations):
            try:
                entry = _entry(item)
                image_id = _field(entry, "image_id", int)
                if image_id not in images:
                    raise _EntryError(f"image_id {image_id} is not in images")
                category = _field(entry, "category_id", int)
                if category not in label_of:
                    raise _EntryError(f"category_id {category} is not in categories")
                box = _xywh_to_xyxy(_field(entry, "bbox", list))
                box = check_box(box, images[image_id][1])
                if isinstance(box, str):
                    raise _EntryError(box)
                crowd = bool(entry.get("iscrowd", 0) or entry.get("ignore", 0))
                out[image_id].append((box, label_of[category], crowd))
            except _EntryError as error:
                has_id = isinstance(item, dict) and "id" in item
                where = f"annotations[{j}]" + (f" (id {item['id']})" if has_id else "")
                self.bad_sample(self.annotation_file, f"{where}: {error}")
        return out

    def _record(self, coco_id: int, image: tuple[str, tuple[int, int]], boxes: list):
        """The record of one image, or None when its file is missing and it is skipped."""
        file_name, size = image
        path = path_inside(self.image_dir, file_name)
        if path is None:
            self.bad_sample(
                self.annotation_file, f"file_name {file_name!r} is outside {self.image_dir}"
            )
            return None
        if not os.path.isfile(path):
            self.bad_sample(path, "image file not found")
            return None
        # boxes: [(xyxy, label, crowd), ...] -> three columns
        columns = [[b[c] for b in boxes] for c in range(3)]
        return ImageRecord(str(coco_id), path, size, make_annotation(*columns))


def default_image_dir(annotation_file: str) -> str:
    """``root/annotations/instances_NAME.json`` -> ``root/NAME`` when that folder exists,
    else the folder of the annotation file."""
    folder, name = os.path.split(os.path.abspath(annotation_file))
    stem = os.path.splitext(name)[0]
    if os.path.basename(folder) == "annotations" and "_" in stem:
        candidate = os.path.join(os.path.dirname(folder), stem.split("_", 1)[1])
        if os.path.isdir(candidate):
            return candidate
    return folder


def _load_json(path: str) -> dict:
    """The parsed file, with its top-level ``images`` and ``categories`` lists present."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise RcnnError(f"coco:{path}: no such annotation file") from None
    except (ValueError, RecursionError) as error:  # also bad UTF-8, over-long or deep values
        raise BadSampleError(path, f"not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise BadSampleError(path, "expected a JSON object with images, annotations, categories")
    for key in ("images", "categories"):
        if not isinstance(content.get(key), list):
            raise BadSampleError(path, f"missing key {key!r} (a list)")
    if not isinstance(content.get("annotations", []), list):
        raise BadSampleError(path, "'annotations' must be a list")
    return content


def _entry(item) -> dict:
    """An entry of a top-level list, which must be a JSON object."""
    if not isinstance(item, dict):
        raise _EntryError(f"is {type(item).__name__}, not an object")
    return item


def _field(entry: dict, key: str, kind: type):
    """``entry[key]``, which must exist and be of ``kind`` (bools are not ints)."""
    if key not in entry:
        raise _EntryError(f"missing key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _EntryError(f"{key!r} is {value!r}, expected {kind.__name__}")
    return value


def _xywh_to_xyxy(bbox: list) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` -> ``(x1, y1, x2, y2)``."""
    if len(bbox) != 4 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in bbox
    ):
        raise _EntryError(f"'bbox' is {bbox!r}, expected [x, y, width, height] numbers")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except OverflowError:  # JSON integers have no limit; floats do
        raise _EntryError(f"'bbox' is {bbox!r}, a number too large for a pixel") from None
    return x, y, x + w, y + h
