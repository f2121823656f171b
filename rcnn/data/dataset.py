"""The data set interface every reader implements, and what the readers share.

A data set is a list of images with their ground truth. ``annotation(i)`` is cheap (no image
decoding: evaluation reads all of them); ``load_image(i)`` decodes one image on demand.
Shapes follow ``rcnn.boxes``: images are uint8 ``(3, H, W)`` RGB, boxes ``(G, 4)`` float32
xyxy pixels, labels ``(G,)`` int64 in ``[1, K]`` with ``class_names[k - 1]`` naming label k.

Bad input (issue #6): annotation problems are found when a data set is opened and raise
``BadSampleError(path, problem)``; with ``on_bad_sample="skip"`` the reader drops the bad
entry (object or image) instead, records ``(path, problem)`` in ``dataset.skipped`` and warns
once with the count.
"""

from __future__ import annotations

import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils.data import Dataset

from rcnn.data.images import DEFAULT_MAX_PIXELS, decode_image
from rcnn.errors import BadSampleError, RcnnError
from rcnn.structures import Annotation

BAD_SAMPLE_POLICIES = ("error", "skip")

# Boxes may stick out of the image by at most this many pixels and are then clipped to it;
# VOC has many such boxes (xmin = 0 in its 1-based pixels is x1 = -1 here, xmax = width + 1).
OUTSIDE_TOLERANCE = 1.0


@dataclass(frozen=True)
class Sample:
    """One image and its ground truth, as a data set or a transform hands it on.

    image (3, H, W) uint8 RGB (or float after a float transform); annotation in the pixel
    coordinates of ``image``; index: position in the data set; scale: how much ``image`` was
    resized from the file's image (boxes / scale gives the original coordinates); flipped:
    whether it was mirrored left-right; proposals: region proposals (P, 4) for the models
    that take them from outside (R-CNN, SPPNet, Fast R-CNN), in the same pixels as ``image``.
    """

    image: Tensor
    annotation: Annotation
    index: int
    scale: float = 1.0
    flipped: bool = False
    proposals: Tensor | None = None


class DetectionDataset(Dataset, ABC):
    """Base class of the readers: K class names, one split, images with their ground truth."""

    class_names: tuple[str, ...]
    split: str

    def __init__(self, split: str, class_names: Sequence[str], on_bad_sample: str = "error"):
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise RcnnError(
                f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}"
            )
        self.split = split
        self.class_names = tuple(class_names)
        self.on_bad_sample = on_bad_sample
        self.skipped: list[tuple[str, str]] = []

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image_id(self, i: int) -> str:
        """A stable id of image ``i`` (VOC file id, COCO image id, shapes split and index)."""

    @abstractmethod
    def image_path(self, i: int) -> str:
        """Absolute path of image ``i`` (``shapes:{split}/{i:06d}`` for generated images)."""

    @abstractmethod
    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of image ``i``, without decoding it where the annotation says it."""

    @abstractmethod
    def annotation(self, i: int) -> Annotation:
        """Ground truth of image ``i``; cheap, never decodes the image."""

    @abstractmethod
    def load_image(self, i: int) -> Tensor:
        """Image ``i`` decoded: uint8 ``(3, H, W)`` RGB."""

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (labels run 1..K; 0 is background)."""
        return len(self.class_names)

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a data set of {len(self)} images")
        return Sample(self.load_image(i), self.annotation(i), i)

    def bad_sample(self, path: str, problem: str) -> None:
        """Raise ``BadSampleError`` or, with ``on_bad_sample="skip"``, record it."""
        if self.on_bad_sample == "error":
            raise BadSampleError(path, problem)
        self.skipped.append((path, problem))

    def warn_skipped(self, source: str) -> None:
        """One warning for everything ``bad_sample`` skipped while ``source`` was read."""
        if self.skipped:
            path, problem = self.skipped[0]
            warnings.warn(
                f"{source}: skipped {len(self.skipped)} bad entries (first: {path}: {problem}); "
                "see dataset.skipped",
                stacklevel=3,
            )


@dataclass(frozen=True)
class ImageRecord:
    """What a file-based reader knows of one image once the data set is open."""

    image_id: str
    path: str
    size: tuple[int, int]
    annotation: Annotation


class FileDataset(DetectionDataset):
    """A data set of image files with parsed annotations (the VOC and COCO readers).

    Subclasses parse and validate their annotations into ``self.records`` when opened;
    images are decoded on demand, at most ``max_pixels`` pixels each, and must have the size
    the annotation states.
    """

    def __init__(
        self,
        split: str,
        class_names: Sequence[str],
        on_bad_sample: str = "error",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(split, class_names, on_bad_sample)
        self.max_pixels = max_pixels
        self.records: list[ImageRecord] = []

    def __len__(self) -> int:
        return len(self.records)

    def image_id(self, i: int) -> str:
        return self.records[i].image_id

    def image_path(self, i: int) -> str:
        return self.records[i].path

    def image_size(self, i: int) -> tuple[int, int]:
        return self.records[i].size

    def annotation(self, i: int) -> Annotation:
        return self.records[i].annotation

    def size_problem(self, size: tuple[int, int]) -> str | None:
        """Why an annotation's stated image size ``(H, W)`` cannot be right, or None."""
        height, width = size
        if height <= 0 or width <= 0:
            return f"image size {height}x{width} (HxW) is not positive"
        if height * width > self.max_pixels:
            return (
                f"image size {height}x{width} (HxW) is over the limit of {self.max_pixels} pixels"
            )
        return None

    def load_image(self, i: int) -> Tensor:
        record = self.records[i]
        image = decode_image(record.path, self.max_pixels)
        size = (image.shape[1], image.shape[2])
        if size != record.size:
            raise BadSampleError(
                record.path,
                f"image is {size[0]}x{size[1]} (HxW) but its annotation says "
                f"{record.size[0]}x{record.size[1]}",
            )
        return image


def check_box(box: Sequence[float], image_size: tuple[int, int]) -> tuple[float, ...] | str:
    """Validate one xyxy pixel box against an image of ``image_size = (H, W)``.

    Returns the box clipped to the image (it may stick out by up to ``OUTSIDE_TOLERANCE``
    pixels) or, when it is unusable, a sentence saying why.
    """
    x1, y1, x2, y2 = box
    height, width = image_size
    tol = OUTSIDE_TOLERANCE
    if any(math.isnan(v) or math.isinf(v) for v in box):
        return f"box {_fmt(box)} has a coordinate that is not a finite number"
    if x2 < x1 or y2 < y1:
        return f"box {_fmt(box)} has x2 < x1 or y2 < y1"
    if min(x1, y1) < -tol:
        return f"box {_fmt(box)} has a negative coordinate"
    if x2 > width + tol or y2 > height + tol or x1 >= width or y1 >= height:
        return f"box {_fmt(box)} is outside the {height}x{width} (HxW) image"
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return f"box {_fmt(box)} has zero area"
    return clipped


def make_annotation(boxes: list, labels: list[int], difficult: list[bool]) -> Annotation:
    """Annotation from Python lists: boxes [[x1, y1, x2, y2], ...], labels, difficult flags."""
    return Annotation(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(difficult, dtype=torch.bool),
    )


def path_inside(folder: str, name: str) -> str | None:
    """``folder/name`` for a relative ``name`` that stays inside ``folder``, else None: an
    annotation file must not point the reader at any other file on the machine."""
    if not name or os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
        return None
    return os.path.join(folder, name)


def _fmt(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


class DatasetView(DetectionDataset):
    """A data set seen through a wrapper: everything is ``dataset``'s unless overridden."""

    def __init__(self, dataset: DetectionDataset):
        super().__init__(dataset.split, dataset.class_names, dataset.on_bad_sample)
        self.dataset = dataset
        self.skipped = dataset.skipped

    def __len__(self) -> int:
        return len(self.dataset)

    def image_id(self, i: int) -> str:
        return self.dataset.image_id(i)

    def image_path(self, i: int) -> str:
        return self.dataset.image_path(i)

    def image_size(self, i: int) -> tuple[int, int]:
        return self.dataset.image_size(i)

    def annotation(self, i: int) -> Annotation:
        return self.dataset.annotation(i)

    def load_image(self, i: int) -> Tensor:
        return self.dataset.load_image(i)

    def __getitem__(self, i: int) -> Sample:
        return self.dataset[i]


class WithProposals(DatasetView):
    """``dataset`` whose Samples also carry region proposals computed outside the network
    (R-CNN, SPPNet and Fast R-CNN take selective search's): ``proposals[i]`` is image i's
    ``(P_i, 4)`` boxes in its original pixels. Everything else is ``dataset``'s."""

    def __init__(self, dataset: DetectionDataset, proposals: Sequence[Tensor]):
        if len(proposals) != len(dataset):
            raise ValueError(f"{len(proposals)} proposal sets for {len(dataset)} images")
        super().__init__(dataset)
        self.proposals = proposals

    def __getitem__(self, i: int) -> Sample:
        return replace(self.dataset[i], proposals=self.proposals[i])
