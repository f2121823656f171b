"""Running a detector over a data set split: proposals, parallel loading, timing."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from tqdm import tqdm

from rcnn import distributed
from rcnn.classic.proposal_cache import DEFAULT_CACHE_DIR, proposals_for
from rcnn.data.dataset import DetectionDataset, WithProposals
from rcnn.data.loader import make_loader
from rcnn.detector import Detector
from rcnn.structures import Detections


@dataclass(frozen=True)
class DatasetDetections:
    """Detections by image index (original pixels), the detector's seconds per image
    (resize, normalise, model, post-processing; decoding and proposals excluded), and the
    proposals' seconds per image and count per image when selective search made them."""

    detections: dict[int, Detections]
    seconds_per_image: float
    proposal_seconds_per_image: float = 0.0
    proposals_per_image: float = 0.0


def detect_dataset(
    detector: Detector,
    dataset: DetectionDataset,
    workers: int = 2,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> DatasetDetections:
    """Run ``detector`` over every image of ``dataset`` that loads, or over shard
    ``(number, of)`` of them (every ``of``-th image; the bar shows on shard 0). The models that
    take proposals from outside get selective search's, computed once and cached."""
    proposal_seconds = proposal_count = 0.0
    if detector.proposal_mode is not None:
        proposals = proposals_for(
            dataset, detector.proposal_mode, DEFAULT_CACHE_DIR, progress=progress
        )
        proposal_seconds = sum(proposals.seconds) / max(1, len(proposals))
        proposal_count = sum(len(p) for p in proposals) / max(1, len(proposals))
        dataset = WithProposals(dataset, proposals)
    loader = make_loader(dataset, 1, detector.transform, False, 0, workers, shard)
    results: dict[int, Detections] = {}
    seconds = 0.0
    for samples in tqdm(
        loader, desc="detect", disable=not progress or shard[0] > 0, leave=False, dynamic_ncols=True
    ):
        if not samples:
            continue
        started = time.perf_counter()
        (detections,) = detector.detect_samples(samples)
        seconds += time.perf_counter() - started
        results[samples[0].index] = detections
    return DatasetDetections(
        results, seconds / max(1, len(results)), proposal_seconds, proposal_count
    )


def gather_detections(
    found: DatasetDetections, world: distributed.World
) -> DatasetDetections | None:
    """The ranks' shards of detections together on rank 0, timings averaged over all their
    images; None on the other ranks. ``found`` itself in one process."""
    if not world.is_distributed:
        return found
    on_cpu = {
        i: Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu())
        for i, d in found.detections.items()
    }
    shards = distributed.gather(replace(found, detections=on_cpu), world)
    if not world.is_main:
        return None
    weights = [len(shard.detections) for shard in shards]
    timings = [
        sum(w * value for w, value in zip(weights, values, strict=True)) / max(1, sum(weights))
        for values in zip(
            *(
                (s.seconds_per_image, s.proposal_seconds_per_image, s.proposals_per_image)
                for s in shards
            ),
            strict=True,
        )
    ]
    detections = {i: d for shard in shards for i, d in shard.detections.items()}
    return DatasetDetections(detections, *timings)
