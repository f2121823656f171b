"""Selective search on 500 x 375 images: seconds, boxes, recall and MABO, beside OpenCV's.

    python benchmarks/selective_search.py [--images 20] [--modes fast quality] [--threads 2]

The measurement set is synthetic so that its ground truth is exact: photographs and
textures from scikit-image as backgrounds, with 2-5 objects each pasted on them (crops of
other photographs under elliptical or rectangular masks, and filled shapes with a little
noise), 20-250 pixels across. An object's box is that of its visible pixels. OpenCV's
ximgproc selective search runs beside ours when ``opencv-contrib-python-headless`` is
installed (it is not a dependency of the project).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage import data, draw, transform

from rcnn.boxes import box_iou
from rcnn.classic.selective_search import selective_search

WIDTH, HEIGHT = 500, 375
BACKGROUNDS = ("grass", "gravel", "brick", "coffee", "rocket", "immunohistochemistry", "chelsea")
OBJECTS = ("astronaut", "chelsea", "coffee", "rocket", "colorwheel", "hubble_deep_field")


def _photo(name: str) -> np.ndarray:
    """A scikit-image picture as uint8 (H, W, 3); grey ones get a random-looking tint."""
    image = getattr(data, name)()
    if image.ndim == 2:
        tint = np.array([0.9, 0.8, 0.6]) if name == "brick" else np.array([0.6, 0.8, 0.5])
        image = (image[..., None] * tint).astype(np.uint8)
    return image[..., :3]


def _resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return (transform.resize(image, (height, width), anti_aliasing=True) * 255).astype(np.uint8)


def _object(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (h, w, 3) uint8, mask (h, w) bool) of one object."""
    if rng.random() < 0.5:  # a crop of a photograph under an ellipse or a rectangle
        photo = _photo(OBJECTS[rng.integers(len(OBJECTS))])
        top = rng.integers(0, photo.shape[0] // 3)
        left = rng.integers(0, photo.shape[1] // 3)
        pixels = _resized(
            photo[top : top + photo.shape[0] // 2, left : left + photo.shape[1] // 2], height, width
        )
        mask = np.ones((height, width), bool)
        if rng.random() < 0.5:
            mask[:] = False
            mask[draw.ellipse(height / 2, width / 2, height / 2, width / 2, (height, width))] = True
        return pixels, mask
    colour = rng.integers(0, 256, 3)
    pixels = np.clip(colour + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), bool)
    if rng.random() < 0.5:
        mask[draw.ellipse(height / 2, width / 2, height / 2, width / 2, (height, width))] = True
    else:
        rows = np.array([0, height - 1, height - 1, rng.integers(0, height)])
        cols = np.array([rng.integers(0, width), 0, width - 1, rng.integers(0, width)])
        mask[draw.polygon(rows, cols, (height, width))] = True
    return pixels, mask


def make_image(rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
    """One image (375, 500, 3) uint8 and its object boxes (G, 4)."""
    background = _photo(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    image = _resized(background, HEIGHT, WIDTH)
    owner = np.full((HEIGHT, WIDTH), -1)
    for index in range(rng.integers(2, 6)):
        size = np.exp(rng.uniform(np.log(20), np.log(250), 2)).astype(int)
        height, width = min(size[0], HEIGHT - 1), min(size[1], WIDTH - 1)
        top, left = rng.integers(0, HEIGHT - height), rng.integers(0, WIDTH - width)
        pixels, mask = _object(rng, height, width)
        window = (slice(top, top + height), slice(left, left + width))
        image[window][mask] = pixels[mask]
        owner[window][mask] = index
    boxes = []
    for index in range(owner.max() + 1):
        rows, cols = np.nonzero(owner == index)
        if len(rows) >= 100:  # hidden objects do not count
            boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def opencv_selective_search(image: np.ndarray, mode: str) -> torch.Tensor:
    """OpenCV ximgproc's selective search, (P, 4) xyxy."""
    import cv2

    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # RGB -> BGR
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = torch.tensor(search.process(), dtype=torch.float32).reshape(-1, 4)  # x, y, w, h
    return torch.cat([rects[:, :2], rects[:, :2] + rects[:, 2:]], dim=1)


def _timed(method, image, repeat: int) -> tuple[torch.Tensor, float]:
    """The method's boxes for the image and its fastest time of ``repeat`` runs."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        boxes = method(image)
        seconds.append(time.perf_counter() - start)
    return boxes, min(seconds)


def measure(methods: dict, images, truths, repeat: int, top: int | None) -> dict[str, dict]:
    """Per method: seconds and boxes per image, recall at 0.5 / 0.7, average recall over IoU
    0.5:0.05:0.95 and MABO; with ``top``, also of each method's best ``top`` boxes alone.
    The methods take turns on each image, so that other work on the machine slows them
    alike; each image's time is the fastest of ``repeat`` runs."""
    names = [*methods, *(f"{name}, best {top}" for name in methods if top)]
    runs = {name: ([], [], []) for name in names}  # best IoU per object, boxes, seconds
    for image, truth in zip(images, truths, strict=True):
        for name, method in methods.items():
            boxes, seconds = _timed(method, image, repeat)
            for row, kept in ((name, boxes), (f"{name}, best {top}", boxes[:top])):
                if row in runs:
                    runs[row][0].append(box_iou(truth, kept).max(dim=1).values)
                    runs[row][1].append(len(kept))
                    runs[row][2].append(seconds)
    thresholds = torch.arange(0.5, 0.951, 0.05)
    results = {}
    for name, (best, counts, seconds) in runs.items():
        best = torch.cat(best)
        results[name] = {
            "seconds_per_image": float(np.mean(seconds)),
            "boxes_per_image": float(np.mean(counts)),
            "recall50": float((best >= 0.5).float().mean()),
            "recall70": float((best >= 0.7).float().mean()),
            "average_recall": float((best[:, None] >= thresholds).float().mean()),
            "mabo": float(best.mean()),
        }
    return results


def _methods(modes: list[str], threads: int) -> dict:
    """Ours on one thread and on ``threads``, and OpenCV's (on ``threads``) when installed."""
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        cv2 = None
    methods = {}
    for mode in modes:
        methods[f"ours {mode}, 1 thread"] = lambda im, m=mode: selective_search(im, m, threads=1)
        if threads > 1:
            methods[f"ours {mode}, {threads} threads"] = lambda im, m=mode: selective_search(
                im, m, threads=threads
            )
        if cv2 is not None:
            methods[f"opencv {mode}"] = lambda im, m=mode: opencv_selective_search(im, m)
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["fast", "quality"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per image; the fastest counts")
    parser.add_argument("--top", type=int, default=None, help="also score the best N boxes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    images, truths = zip(*(make_image(rng) for _ in range(args.images)), strict=True)
    print(f"{args.images} images {WIDTH}x{HEIGHT}, {sum(len(t) for t in truths)} objects")
    results = measure(_methods(args.modes, args.threads), images, truths, args.repeat, args.top)
    for name, result in results.items():
        print(
            f"{name:38s} {result['seconds_per_image']:6.2f} s/image "
            f"{result['boxes_per_image']:7.0f} boxes  recall@0.5 {result['recall50']:.3f}  "
            f"@0.7 {result['recall70']:.3f}  "
            f"AR {result['average_recall']:.3f}  MABO {result['mabo']:.3f}"
        )


if __name__ == "__main__":
    main()
