"""Worker processes for CPU-bound work in Python: selective search over images (R-CNN's and
SPPNet's proposals), and drawing or decoding the training images a run holds in memory."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import torch


def process_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
) -> ProcessPoolExecutor:
    """A pool of ``workers`` single-threaded processes, forked where the platform can fork.

    Forked workers start in milliseconds with the parent's modules already imported, and
    receive ``initargs`` (e.g. a data set) without pickling them.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_start_worker,
        initargs=(initializer, initargs),
    )


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    # One thread per worker, as DataLoader's workers do: the workers already share the cores,
    # and a forked child must not enter OpenMP, whose thread team stayed in the parent (it
    # would wait for it forever).
    torch.set_num_threads(1)
    if initializer is not None:
        initializer(*initargs)
