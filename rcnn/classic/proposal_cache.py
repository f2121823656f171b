"""Selective search proposals of a whole data set: computed once, in parallel, cached on disk.

R-CNN, SPPNet and Fast R-CNN train and test on proposals computed beforehand (R-CNN: about
2,000 per image, "fast" mode). ``proposals_for`` returns them for every image of a data set,
computing only those not in the cache, over a pool of processes with a progress bar.

Cache layout: ``CACHE_DIR/selective-search-{mode}-{key}/{index:06d}.npz``, one compressed
file per image holding its boxes (P, 4) float32, its image id and the seconds selective
search took on it. ``key`` digests the settings, the seed, ``CACHE_VERSION`` and the data
set's ordered image ids, so a cache made with other settings or for other images is never
read. Each file is written atomically (a temporary file, then a rename), so an interrupted
run leaves only whole files, and the next run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rcnn.classic.selective_search import SelectiveSearchConfig, selective_search
from rcnn.files import atomic_write
from rcnn.pool import process_pool

# Bump when selective search's output for the same settings changes, to retire old caches.
CACHE_VERSION = 1
# Where the commands keep proposals, shared by every run on the same images.
DEFAULT_CACHE_DIR = (
    Path(os.environ.get("RCNN_CACHE", Path.home() / ".cache" / "rcnn")) / "proposals"
)


class ImageDataset(Protocol):
    """What proposals need of a ``DetectionDataset``: its images and their ids."""

    def __len__(self) -> int: ...

    def image_id(self, i: int) -> str: ...

    def load_image(self, i: int) -> Tensor:  # uint8 (3, H, W) RGB
        ...


class ProposalList(list):
    """The proposals of each image of a data set: a list of (P_i, 4) float32 xyxy tensors,
    best first, with ``seconds``: what selective search took on each image, in one process
    (for cached images, what it took when they were computed)."""

    def __init__(self, boxes: list[Tensor], seconds: list[float]):
        super().__init__(boxes)
        self.seconds = seconds


def proposals_for(
    dataset: ImageDataset,
    mode: str = "fast",
    cache_dir: str | Path | None = None,
    *,
    config: SelectiveSearchConfig | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> ProposalList:
    """Selective search boxes of every image of ``dataset``, computing those not cached.

    mode: "fast" or "quality" (or pass ``config``); cache_dir: where to keep them (None: no
    cache); seed: of the ranking; workers: processes over the images (None: one per CPU core).
    """
    config = config if config is not None else SelectiveSearchConfig.for_mode(mode)
    ids = [str(dataset.image_id(i)) for i in range(len(dataset))]
    directory = (
        None if cache_dir is None else _cache_directory(Path(cache_dir), mode, config, seed, ids)
    )
    results = {} if directory is None else _read_cache(directory, ids)
    missing = [i for i in range(len(ids)) if i not in results]
    for index, (boxes, seconds) in _compute(dataset, missing, config, seed, workers, progress):
        results[index] = (boxes, seconds)
        if directory is not None:
            _save(directory / f"{index:06d}.npz", boxes, seconds, ids[index])
    return ProposalList(
        [torch.from_numpy(results[i][0]) for i in range(len(ids))],
        [results[i][1] for i in range(len(ids))],
    )


def _cache_directory(
    cache_dir: Path, mode: str, config: SelectiveSearchConfig, seed: int, ids: list[str]
) -> Path:
    """The folder of this data set's proposals under these settings, created with a
    settings.json that says what they are."""
    settings = {"version": CACHE_VERSION, "config": asdict(config), "seed": seed}
    digest = hashlib.sha256(json.dumps({**settings, "image_ids": ids}).encode()).hexdigest()
    directory = cache_dir / f"selective-search-{mode}-{digest[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "settings.json").exists():
        text = json.dumps({**settings, "images": len(ids)}, indent=1).encode()
        atomic_write(directory / "settings.json", lambda file: file.write(text))
    return directory


def _read_cache(directory: Path, ids: list[str]) -> dict[int, tuple[np.ndarray, float]]:
    """The cached (boxes, seconds) by image index; unreadable or foreign files are skipped."""
    results = {}
    for index, image_id in enumerate(ids):
        path = directory / f"{index:06d}.npz"
        if not path.exists():
            continue
        try:
            with np.load(path) as saved:
                if str(saved["image_id"]) == image_id and saved["boxes"].shape[1:] == (4,):
                    results[index] = (saved["boxes"].astype(np.float32), float(saved["seconds"]))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue  # computed again, and the file replaced
    return results


def _save(path: Path, boxes: np.ndarray, seconds: float, image_id: str) -> None:
    atomic_write(
        path,
        lambda file: np.savez_compressed(file, boxes=boxes, seconds=seconds, image_id=image_id),
    )


def _compute(
    dataset: ImageDataset,
    indices: list[int],
    config: SelectiveSearchConfig,
    seed: int,
    workers: int | None,
    progress: bool,
) -> Iterator[tuple[int, tuple[np.ndarray, float]]]:
    """(index, (boxes, seconds)) of each image in ``indices``, as they finish."""
    workers = min(workers or os.cpu_count() or 1, len(indices))
    bar = tqdm(total=len(indices), desc="selective search", unit="image", disable=not progress)
    with bar:
        if workers <= 1:
            for index in indices:
                yield index, _proposals_of_image(dataset, index, config, seed)
                bar.update()
            return
        # the workers get the data set once, when they start, and load their images themselves
        pool = process_pool(workers, _start_worker, (dataset, config, seed))
        try:
            futures = {pool.submit(_worker_proposals, index): index for index in indices}
            for future in as_completed(futures):
                yield futures[future], future.result()
                bar.update()
        finally:
            pool.shutdown(cancel_futures=True)  # on an interruption, start nothing more


def _proposals_of_image(
    dataset: ImageDataset, index: int, config: SelectiveSearchConfig, seed: int
) -> tuple[np.ndarray, float]:
    """(boxes (P, 4) float32, seconds of selective search alone) of one image."""
    image = dataset.load_image(index)
    start = time.perf_counter()
    boxes = selective_search(image, config=config, seed=seed)
    return boxes.numpy(), time.perf_counter() - start


# What a worker process of ``_compute`` works on, set once when it starts.
_worker_job: tuple[ImageDataset, SelectiveSearchConfig, int] | None = None


def _start_worker(dataset: ImageDataset, config: SelectiveSearchConfig, seed: int) -> None:
    global _worker_job
    _worker_job = (dataset, config, seed)


def _worker_proposals(index: int) -> tuple[np.ndarray, float]:
    assert _worker_job is not None, "_start_worker runs first in each worker"
    dataset, config, seed = _worker_job
    return _proposals_of_image(dataset, index, config, seed)
