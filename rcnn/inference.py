"""Running a detector over a data set split: parallel loading, timing, results in order."""

from __future__ import annotations

import time

from tqdm import tqdm

from rcnn.data.dataset import DetectionDataset
from rcnn.data.loader import make_loader
from rcnn.detector import Detector
from rcnn.structures import Detections


def detect_dataset(
    detector: Detector, dataset: DetectionDataset, workers: int = 2, progress: bool = True
) -> tuple[dict[int, Detections], float]:
    """Detections for every image that loads (index -> Detections, original pixels) and the
    detector's seconds per image (resize/normalise/model/post-processing; decoding excluded)."""
    loader = make_loader(dataset, 1, detector.transform, shuffle=False, num_workers=workers)
    results: dict[int, Detections] = {}
    seconds = 0.0
    for samples in tqdm(
        loader, desc="detect", disable=not progress, leave=False, dynamic_ncols=True
    ):
        if not samples:
            continue
        started = time.perf_counter()
        (detections,) = detector.detect_samples(samples)
        seconds += time.perf_counter() - started
        results[samples[0].index] = detections
    return results, seconds / max(1, len(results))
