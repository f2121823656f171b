"""Benchmarks: one timing helper and one table printer, shared by every ``rcnn bench`` figure.

A figure is the median of several timed runs after warm-up runs, in milliseconds, taken with
the thread count that the table's header states, so that two tables can be compared.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

import torch


@dataclass(frozen=True)
class Timing:
    """One row of the table: what ran, on which input sizes, its median time and target."""

    name: str
    sizes: str
    ms: float
    target: str = ""


def time_ms(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def print_table(title: str, rows: Iterable[Timing], file: TextIO = sys.stdout) -> None:
    """Print ``rows`` as one aligned table headed by ``title``, torch's version and threads."""
    header = ("op", "input sizes", "ms", "target")
    cells = [(r.name, r.sizes, f"{r.ms:.1f}", r.target) for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    print(
        f"{title} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        "median of repeats after warm-up)",
        file=file,
    )
    for k, row in enumerate([header, *cells]):
        line = "  ".join(
            cell.rjust(width) if i == 2 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        print(line.rstrip(), file=file)
        if k == 0:
            print("  ".join("-" * width for width in widths), file=file)
