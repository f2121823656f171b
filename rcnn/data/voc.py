"""PASCAL VOC: the devkit layout, read (``voc:DIR``) and written (``rcnn data shapes``).

Layout: ``Annotations/{id}.xml``, ``JPEGImages/{filename}``, ``ImageSets/Main/{split}.txt``.
The devkit's boxes are 1-based inclusive integer pixels; they are converted here, once, to the
package's continuous xyxy: ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (so a
one-pixel object at column 1 spans [0, 1)). Writing does the inverse, so a round trip of
integer boxes is exact.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

import defusedxml
import defusedxml.ElementTree as SafeET
from PIL import Image
from tqdm import tqdm

from rcnn.data.dataset import (
    DetectionDataset,
    FileDataset,
    ImageRecord,
    check_box,
    make_annotation,
    path_inside,
)
from rcnn.data.images import DEFAULT_MAX_PIXELS, read_image_size
from rcnn.errors import BadSampleError, RcnnError
from rcnn.structures import Annotation

_CORNERS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VOCObject:
    """One ``<object>``: class name, devkit box (xmin, ymin, xmax, ymax), difficult flag."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass(frozen=True)
class VOCFile:
    """One annotation file: image file name, ``(H, W)`` if stated, objects, and the problems
    of the objects that could not be read (one sentence each)."""

    filename: str | None
    size: tuple[int, int] | None
    objects: tuple[VOCObject, ...]
    problems: tuple[str, ...]


def parse_voc_xml(path: str) -> VOCFile:
    """Parse a VOC annotation file safely (defusedxml: no entity expansion, no external
    references). Raises ``BadSampleError`` when the file as a whole is unusable."""
    try:
        root = SafeET.parse(path).getroot()
    except FileNotFoundError:
        raise BadSampleError(path, "annotation file not found") from None
    except defusedxml.DefusedXmlException as error:
        raise BadSampleError(path, f"refused unsafe XML ({type(error).__name__})") from None
    except ET.ParseError as error:
        raise BadSampleError(path, f"malformed XML ({error})") from None
    if root.tag != "annotation":
        raise BadSampleError(path, f"root element is <{root.tag}>, expected <annotation>")
    objects, problems = [], []
    for j, element in enumerate(root.findall("object")):
        parsed = _parse_object(element)
        if isinstance(parsed, str):
            problems.append(f"object {j}: {parsed}")
        else:
            objects.append(parsed)
    filename = root.findtext("filename")
    return VOCFile(
        filename and filename.strip(), _parse_size(root, path), tuple(objects), tuple(problems)
    )


def _parse_object(element: ET.Element) -> VOCObject | str:
    """An ``<object>`` element -> VOCObject, or a sentence saying what is wrong with it."""
    name = (element.findtext("name") or "").strip()
    if not name:
        return "no <name>"
    box = element.find("bndbox")
    if box is None:
        return f"({name}) no <bndbox>"
    corners = []
    for corner in _CORNERS:
        text = box.findtext(corner)
        try:
            corners.append(float(text))
        except (TypeError, ValueError):
            return f"({name}) <{corner}> is {text!r}, not a number"
    difficult = (element.findtext("difficult") or "0").strip()
    if difficult not in ("0", "1"):
        return f"({name}) <difficult> is {difficult!r}, expected 0 or 1"
    return VOCObject(name, tuple(corners), difficult == "1")


def _parse_size(root: ET.Element, path: str) -> tuple[int, int] | None:
    """``(H, W)`` from ``<size>``, or None when absent or zero (then the image header says)."""
    size = root.find("size")
    if size is None:
        return None
    try:
        height, width = int(size.findtext("height")), int(size.findtext("width"))
    except (TypeError, ValueError):
        raise BadSampleError(path, "<size> needs integer <width> and <height>") from None
    return (height, width) if height > 0 and width > 0 else None


def voc_splits(root: str) -> tuple[str, ...]:
    """The splits under ``ImageSets/Main`` (``train.txt`` -> "train"); the devkit's per-class
    lists (``dog_train.txt``) are not splits."""
    folder = os.path.join(root, "ImageSets", "Main")
    names = (
        {f[:-4] for f in os.listdir(folder) if f.endswith(".txt")}
        if os.path.isdir(folder)
        else set()
    )
    per_class = {n for n in names if "_" in n and n.rsplit("_", 1)[1] in names}
    return tuple(sorted(names - per_class))


def read_split(root: str, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/{split}.txt`` (first word of each line)."""
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt")) as lines:
        return [line.split()[0] for line in lines if line.strip()]


class VOCDataset(FileDataset):
    """A VOC devkit directory (``voc:DIR``), one split of it.

    root: the directory holding Annotations/, JPEGImages/, ImageSets/Main/. class_names:
    when None, the sorted names found in the annotations of every split present, so that
    train and test agree on the labels; when given, an object of another class is a bad
    sample. All annotations of the split are parsed and validated here; images are decoded
    on demand. Boxes sticking out of the image by up to 1 pixel are clipped.
    """

    def __init__(
        self,
        root: str,
        split: str,
        class_names: Sequence[str] | None = None,
        on_bad_sample: str = "error",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(split, class_names or (), on_bad_sample, max_pixels)
        self.root = os.path.abspath(root)
        splits = self._check_layout(split)
        files = self._parse_splits(splits if class_names is None else (split,))
        if class_names is None:
            names = {o.name for f in files.values() if f is not None for o in f.objects}
            self.class_names = tuple(sorted(names))
        self.records = [r for i in read_split(self.root, split) if (r := self._record(i, files[i]))]
        self.warn_skipped(f"voc:{root} ({split})")

    def _check_layout(self, split: str) -> tuple[str, ...]:
        """The splits present; RcnnError for a missing directory or an unknown split."""
        if not os.path.isdir(self.root):
            raise RcnnError(f"voc:{self.root}: no such directory")
        splits = voc_splits(self.root)
        if split not in splits:
            listed = ", ".join(splits) or f"none (no {os.path.join('ImageSets', 'Main', '*.txt')})"
            raise RcnnError(f"voc:{self.root}: no split {split!r}; splits present: {listed}")
        return splits

    def _parse_splits(self, splits: Sequence[str]) -> dict[str, VOCFile | None]:
        """Parse the annotation file of every image id in ``splits`` once (None: skipped)."""
        files: dict[str, VOCFile | None] = {}
        for split in splits:
            for image_id in read_split(self.root, split):
                if image_id not in files:
                    files[image_id] = self._parse(image_id)
        return files

    def _parse(self, image_id: str) -> VOCFile | None:
        path = os.path.join(self.root, "Annotations", f"{image_id}.xml")
        try:
            return parse_voc_xml(path)
        except BadSampleError as error:
            self.bad_sample(error.path, error.problem)
            return None

    def _record(self, image_id: str, parsed: VOCFile | None) -> ImageRecord | None:
        """The validated record of one image, or None when it is skipped as bad."""
        if parsed is None:
            return None
        xml = os.path.join(self.root, "Annotations", f"{image_id}.xml")
        folder = os.path.join(self.root, "JPEGImages")
        path = path_inside(folder, parsed.filename or f"{image_id}.jpg")
        if path is None:
            self.bad_sample(xml, f"<filename> {parsed.filename!r} is outside {folder}")
            return None
        try:
            size = parsed.size or read_image_size(path, self.max_pixels)
        except BadSampleError as error:
            self.bad_sample(error.path, error.problem)
            return None
        if not os.path.isfile(path):
            self.bad_sample(path, "image file not found")
            return None
        if problem := self.size_problem(size):
            self.bad_sample(xml, f"<size>: {problem}")
            return None
        for problem in parsed.problems:
            self.bad_sample(xml, problem)
        return ImageRecord(image_id, path, size, self._annotation(xml, parsed.objects, size))

    def _annotation(self, xml: str, objects: Sequence[VOCObject], size: tuple[int, int]):
        """Validated ground truth of one file: devkit boxes converted, bad objects reported."""
        label_of = {name: k + 1 for k, name in enumerate(self.class_names)}
        boxes, labels, difficult = [], [], []
        for j, obj in enumerate(objects):
            if obj.name not in label_of:
                self.bad_sample(xml, f"object {j}: unknown class {obj.name!r}")
                continue
            xmin, ymin, xmax, ymax = obj.box
            box = check_box((xmin - 1, ymin - 1, xmax, ymax), size)
            if isinstance(box, str):
                self.bad_sample(xml, f"object {j} ({obj.name}): {box}")
                continue
            boxes.append(box)
            labels.append(label_of[obj.name])
            difficult.append(obj.difficult)
        return make_annotation(boxes, labels, difficult)


def write_voc_annotation(
    path: str, filename: str, image_size: tuple[int, int], annotation: Annotation, class_names
) -> None:
    """Write one annotation file; boxes go back to the devkit's 1-based inclusive pixels."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in zip(
        ("width", "height", "depth"), (image_size[1], image_size[0], 3), strict=True
    ):
        ET.SubElement(size, tag).text = str(value)
    rows = zip(
        annotation.boxes.tolist(),
        annotation.labels.tolist(),
        annotation.difficult.tolist(),
        strict=True,
    )
    for (x1, y1, x2, y2), label, difficult in rows:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[label - 1]
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        box = ET.SubElement(obj, "bndbox")
        for tag, value in zip(_CORNERS, (x1 + 1, y1 + 1, x2, y2), strict=True):
            ET.SubElement(box, tag).text = _number(value)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="unicode")


def export_voc(dataset: DetectionDataset, root: str, progress: bool = True) -> None:
    """Write every image of ``dataset`` into the VOC layout under ``root``: JPEG (quality 95,
    no chroma subsampling), annotation XML, and ``ImageSets/Main/{dataset.split}.txt``."""
    for folder in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    ids = []
    for i in tqdm(range(len(dataset)), desc=dataset.split, disable=not progress):
        sample, image_id = dataset[i], dataset.image_id(i)
        filename = f"{image_id}.jpg"
        # (3, H, W) -> (H, W, 3) for Pillow
        pixels = sample.image.permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(
            os.path.join(root, "JPEGImages", filename), quality=95, subsampling=0
        )
        xml = os.path.join(root, "Annotations", f"{image_id}.xml")
        write_voc_annotation(
            xml, filename, tuple(pixels.shape[:2]), sample.annotation, dataset.class_names
        )
        ids.append(image_id)
    with open(os.path.join(root, "ImageSets", "Main", f"{dataset.split}.txt"), "w") as out:
        out.writelines(f"{image_id}\n" for image_id in ids)


def _number(value: float) -> str:
    """Integers as integers (what VOC tools expect), other values exactly."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
