"""``rcnn proposals IMAGE_OR_SPEC``: selective search on one image, or over a data set split.

For an image file: the proposals' count and seconds, and with ``--out`` a picture of the best
ones. For a data set SPEC (``shapes``, ``voc:DIR``, ``coco:...``): the proposals of every
image of the split (cached in ``--out`` when given), and with ``--recall`` how well they cover
the ground truth: ``{"method", "mode", "images", "boxes_per_image", "seconds_per_image",
"recall50", "recall70", "average_recall", "mabo"}``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from rcnn.classic.proposal_cache import proposals_for
from rcnn.classic.selective_search import selective_search
from rcnn.data.images import decode_image
from rcnn.data.spec import open_dataset
from rcnn.errors import RcnnError
from rcnn.evaluation.recall import evaluate_proposals

DRAWN_PROPOSALS = 50  # the best this many are drawn; more would hide the image
PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
RECALL_KEYS = ("recall50", "recall70", "average_recall", "mabo")


def run_proposals(
    source: str,
    *,
    split: str | None,
    method: str,
    mode: str,
    recall: bool,
    as_json: bool,
    out: str | None,
) -> int:
    """The ``proposals`` command; returns the exit status."""
    workers = os.cpu_count() or 1
    if Path(source).is_file():
        if recall:
            raise RcnnError(f"{source}: --recall needs a data set (shapes, voc:DIR, coco:...)")
        return _image_proposals(Path(source), method, mode, as_json, out, workers)
    dataset = open_dataset(source, split or "test")
    summary = dataset_summary(dataset, method, mode, recall, cache_dir=out, workers=workers)
    if as_json:
        print(json.dumps(summary))
        return 0
    print(
        f"{source} {split or 'test'}: {summary['images']} images, {mode} mode, "
        f"{summary['boxes_per_image']:.0f} proposals and {summary['seconds_per_image']:.2f} s "
        "per image"
    )
    if recall:
        print(", ".join(f"{key} {summary[key]:.3f}" for key in RECALL_KEYS))
    return 0


def dataset_summary(
    dataset, method: str, mode: str, recall: bool, cache_dir: str | None, workers: int
) -> dict:
    """Count and seconds per image of the proposals of a data set, and their recall and MABO
    against its annotations when ``recall`` (``rcnn.evaluation.recall.evaluate_proposals``)."""
    boxes = proposals_for(dataset, mode, cache_dir, workers=workers)
    summary = {
        "method": method,
        "mode": mode,
        "images": len(boxes),
        "boxes_per_image": float(np.mean([len(b) for b in boxes])) if boxes else 0.0,
        "seconds_per_image": float(np.mean(boxes.seconds)) if boxes else 0.0,
    }
    if recall:
        annotations = [dataset.annotation(i) for i in range(len(dataset))]
        measured = evaluate_proposals(list(boxes), annotations, len(dataset.class_names))
        summary.update({key: float(getattr(measured, key)) for key in RECALL_KEYS})
    return summary


def _image_proposals(
    path: Path, method: str, mode: str, as_json: bool, out: str | None, workers: int
) -> int:
    image = decode_image(path)
    start = time.perf_counter()
    boxes = selective_search(image, mode, threads=workers)
    seconds = time.perf_counter() - start
    picture = None
    if out is not None:
        picture = Path(out) / f"{path.stem}_proposals.png"
        picture.parent.mkdir(parents=True, exist_ok=True)
        draw_proposals(image, boxes[:DRAWN_PROPOSALS]).save(picture)
    if as_json:
        height, width = image.shape[-2:]
        record = {"image": str(path), "width": width, "height": height, "method": method}
        record.update(mode=mode, seconds=seconds, boxes=boxes.tolist())
        print(json.dumps(record))
    else:
        drawn = (
            f"; the best {min(len(boxes), DRAWN_PROPOSALS)} drawn in {picture}" if picture else ""
        )
        print(f"{path}: {len(boxes)} proposals ({mode} mode) in {seconds:.2f} s{drawn}")
    return 0


def draw_proposals(image: Tensor, boxes: Tensor) -> Image.Image:
    """The uint8 (3, H, W) image with boxes (P, 4) drawn on it, in a palette by rank."""
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    canvas = ImageDraw.Draw(picture)
    for rank, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        # Pillow's rectangles include their last pixel; ours end before x2 and y2
        canvas.rectangle((x1, y1, x2 - 1, y2 - 1), outline=PALETTE[rank % len(PALETTE)], width=2)
    return picture
