"""R-CNN's feature cache: the features of every training region, computed once, kept on disk.

R-CNN computes the CNN features of all the regions of the training set once (it wrote about
200 GB of them for VOC 2007); training the SVMs with hard negative mining then scores them
round after round, and the box regressors read them too, without running the network again.
SPPNet does the same with its pooled features.

A cache directory holds:

* ``fc7.f16``: the fc7 features of every region, ``(B, D)`` raw float16 rows, for the SVMs;
* ``pool5.f16``: the pool5 features of the box-regression examples, ``(M, F)`` raw float16
  rows (only regions with IoU >= ``regression_iou`` to a ground-truth box: the others are
  never used, and pool5 is large);
* ``regions.safetensors``, written last and atomically, so that a cache is whole or absent:
  per region its image, box, ground-truth label (k for a ground-truth box of class k, 0 for a
  proposal) and IoU with each class's ground truth; per example its box, the ground-truth box
  it regresses to and that box's class; and in its metadata the ``key`` naming the network and
  settings the features came from, so that another network's cache is never read.

The features are memory-mapped when read: the cache may be larger than memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rcnn import checkpoint
from rcnn.boxes import box_iou
from rcnn.errors import RcnnError

FC7, POOL5, INDEX = "fc7.f16", "pool5.f16", "regions.safetensors"


@dataclass(frozen=True)
class CachedRegions:
    """Every cached region (B of them) and box-regression example (M of them).

    features (B, D) float16 fc7; image_index (B,) int64; boxes (B, 4) float32 in the image's
    resized pixels; labels (B,) int64; class_iou (B, K) float32: IoU with the closest
    ground-truth box of each class (0 without one); pool5 (M, F) float16; example_boxes (M, 4);
    example_targets (M, 4): the ground-truth box of each example; example_labels (M,) in [1, K].
    """

    features: Tensor
    image_index: Tensor
    boxes: Tensor
    labels: Tensor
    class_iou: Tensor
    pool5: Tensor
    example_boxes: Tensor
    example_targets: Tensor
    example_labels: Tensor


class RegionCacheWriter:
    """Writes a cache image by image (``add``), then its index (``finish``)."""

    def __init__(self, directory: Path, key: str, num_classes: int, regression_iou: float):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / INDEX).unlink(missing_ok=True)  # no index: no cache, until finish
        self.key, self.num_classes, self.regression_iou = key, num_classes, regression_iou
        self.fc7 = open(self.directory / FC7, "wb")  # noqa: SIM115 (closed by finish)
        self.pool5 = open(self.directory / POOL5, "wb")  # noqa: SIM115
        self.parts = {name: [empty] for name, empty in _empty_index(num_classes).items()}
        self.sizes = (0, 0)
        self.images = 0

    def add(
        self, regions: Tensor, gt_boxes: Tensor, gt_labels: Tensor, pool5: Tensor, fc7: Tensor
    ) -> None:
        """One image: ``regions (B, 4)``, whose first G rows are its ``gt_boxes (G, 4)`` of
        ``gt_labels (G,)``, and their features ``pool5 (B, F)``, ``fc7 (B, D)``."""
        regions, gt_boxes, gt_labels = regions.cpu(), gt_boxes.cpu(), gt_labels.cpu()
        iou = box_iou(gt_boxes.to(regions.dtype), regions)  # (G, B)
        class_iou = torch.zeros(self.num_classes, regions.shape[0])  # (K, B)
        rows = (gt_labels - 1)[:, None].expand_as(iou)  # (G, B): the class row of each IoU
        class_iou.scatter_reduce_(0, rows, iou.float(), "amax")
        labels = torch.zeros(regions.shape[0], dtype=torch.int64)
        labels[: gt_labels.numel()] = gt_labels
        if gt_boxes.shape[0] > 0:
            best_iou, best = iou.max(dim=0)  # (B,): each region's closest ground-truth box
        else:
            best_iou, best = torch.zeros(regions.shape[0]), torch.zeros(0, dtype=torch.int64)
        examples = torch.nonzero(best_iou >= self.regression_iou).flatten()
        _write(self.fc7, fc7)
        _write(self.pool5, pool5[examples.to(pool5.device)])
        new = {
            "image_index": torch.full((regions.shape[0],), self.images, dtype=torch.int64),
            "boxes": regions.float(),
            "labels": labels,
            "class_iou": class_iou.t(),
            "example_boxes": regions[examples].float(),
            "example_targets": gt_boxes[best[examples]].float(),
            "example_labels": gt_labels[best[examples]],
        }
        for name, value in new.items():
            self.parts[name].append(value)
        self.sizes = (fc7.shape[1], pool5.shape[1])
        self.images += 1

    def finish(self) -> CachedRegions:
        """Close the feature files, write the index, and open the cache for reading."""
        self.fc7.close()
        self.pool5.close()
        tensors = {name: torch.cat(parts) for name, parts in self.parts.items()}
        meta = {"key": self.key, "fc7_size": self.sizes[0], "pool5_size": self.sizes[1]}
        checkpoint.save(self.directory / INDEX, tensors, meta | {"images": self.images})
        cached = read_region_cache(self.directory, self.key)
        assert cached is not None, "a cache just written reads back"
        return cached


def read_region_cache(directory: Path, key: str) -> CachedRegions | None:
    """The cache in ``directory`` if it is whole and was made under ``key``, else None."""
    directory = Path(directory)
    if not (directory / INDEX).is_file():
        return None
    try:
        index, meta = checkpoint.load(directory / INDEX)
    except RcnnError:
        return None
    if meta.get("key") != key or set(index) != set(_empty_index(0)):
        return None
    features = _map(directory / FC7, index["boxes"].shape[0], meta["fc7_size"])
    pool5 = _map(directory / POOL5, index["example_boxes"].shape[0], meta["pool5_size"])
    if features is None or pool5 is None:
        return None
    return CachedRegions(features=features, pool5=pool5, **index)


def _empty_index(num_classes: int) -> dict[str, Tensor]:
    """The index's tensors for no regions (what ``add`` appends to)."""
    no_boxes, no_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    return {
        "image_index": no_labels,
        "boxes": no_boxes,
        "labels": no_labels,
        "class_iou": torch.zeros(0, num_classes),
        "example_boxes": no_boxes,
        "example_targets": no_boxes,
        "example_labels": no_labels,
    }


def _write(file, features: Tensor) -> None:
    """Append ``features (B, C)`` to ``file`` as raw float16 rows."""
    file.write(features.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())


def _map(path: Path, rows: int, columns: int) -> Tensor | None:
    """The ``(rows, columns)`` float16 file at ``path``, memory-mapped (None if its size is
    not that)."""
    if not path.is_file() or path.stat().st_size != rows * columns * 2:
        return None
    if rows * columns == 0:
        return torch.zeros(rows, columns, dtype=torch.float16)
    # copy-on-write mapping: torch wants a writable array; the file is never written
    return torch.from_numpy(np.memmap(path, np.float16, mode="c", shape=(rows, columns)))
