"""Truncated SVD of fc6/fc7 (Fast R-CNN section 3.1) on a trained run: where detection time goes.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/svd_speed.py RUN SPEC R6,R7 [IMAGES]``
(e.g. ``runs/fast voc:data/shapes 64,32 50``). For the first IMAGES images (default 50) of
SPEC's test split, with their cached selective-search proposals for the models that take them,
it times the model with and without the compressed layers: the whole forward (the detector's
seconds per image, proposals excluded), the trunk, the head (RoI pooling, the per-region layers
and the two sibling layers), the per-region layers (the backbone's head: fc6, fc7 and, for
small, its 1x1 reduction before them) and fc6 + fc7 alone. CPU milliseconds per image
(``time.process_time``: steadier than wall time on a shared machine; use one thread), the
fastest of three passes over the images. mAP with and without SVD: ``rcnn eval RUN --data
SPEC [--svd-rank R6,R7]``.

Or ``... benchmarks/svd_speed.py --backbone NAME R6,R7 [ROIS]`` (e.g. ``--backbone vgg16
1024,256 2000``, the paper's setting): an untrained backbone's per-region layers alone, on
ROIS (default 2,000) random pooled windows, with the time the factorisation itself takes.
Speed only: an untrained layer's singular values say nothing about accuracy.
"""

from __future__ import annotations

import copy
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from rcnn.backbones import build_backbone
from rcnn.classic.proposal_cache import DEFAULT_CACHE_DIR, proposals_for
from rcnn.data.dataset import WithProposals
from rcnn.data.transforms import make_batch
from rcnn.detector import Detector
from rcnn.runs import open_for_run, test_split
from rcnn.structures import ImageBatch
from rcnn.svd import compress_fc_layers, parse_ranks

PASSES = 3


def test_batches(detector: Detector, spec: str, count: int) -> list[ImageBatch]:
    """The first ``count`` test images as one-image batches, as ``rcnn eval`` feeds them."""
    dataset = open_for_run(spec, test_split(spec), detector.class_names)
    if detector.proposal_mode is not None:
        proposals = proposals_for(dataset, detector.proposal_mode, DEFAULT_CACHE_DIR)
        dataset = WithProposals(dataset, proposals)
    mean, std = detector.pixel_stats
    size_divisible = detector.config.input.size_divisible
    samples = (detector.transform(dataset[i]) for i in range(min(count, len(dataset))))
    return [make_batch([s], mean, std, size_divisible) for s in samples]


def timed(parts: dict[str, nn.Module], seconds: dict[str, float]) -> list:
    """Hooks that add each part's CPU seconds per call to ``seconds``; returns their handles."""
    handles = []
    for name, module in parts.items():
        started = {}

        def before(module, args, name=name, started=started) -> None:
            started[name] = time.process_time()

        def after(module, args, output, name=name, started=started) -> None:
            seconds[name] += time.process_time() - started[name]

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    return handles


@torch.no_grad()
def part_ms(model: nn.Module, batches: list[ImageBatch]) -> dict[str, float]:
    """{part: CPU ms per image}, each part's fastest of PASSES passes over ``batches``."""
    fc_layers = {name: model.head.representation.get_submodule(name) for name in ("fc6", "fc7")}
    parts = {"forward": model, "trunk": model.trunk, "head": model.head}
    parts |= {"per-region": model.head.representation, **fc_layers}
    best: dict[str, float] = {}
    for _ in range(PASSES):
        seconds: dict[str, float] = defaultdict(float)
        handles = timed(parts, seconds)
        for batch in batches:
            model(batch)
        for handle in handles:
            handle.remove()
        for name, total in seconds.items():
            best[name] = min(best.get(name, float("inf")), 1e3 * total / len(batches))
    best["fc6+fc7"] = best.pop("fc6") + best.pop("fc7")
    return best


def main(run: str, spec: str, ranks_text: str, count: str = "50") -> None:
    ranks = parse_ranks(ranks_text)
    detector = Detector.load(Path(run))
    batches = test_batches(detector, spec, int(count))
    rois = sum(b.proposals[0].shape[0] for b in batches if b.proposals) / len(batches)
    compressed = copy.deepcopy(detector.model)
    for line in compress_fc_layers(compressed, ranks):
        print(f"truncated SVD: {line}")
    print(f"{len(batches)} images, {rois:.0f} RoIs per image, {torch.get_num_threads()} threads")
    plain, svd = part_ms(detector.model, batches), part_ms(compressed, batches)
    columns = ("forward", "trunk", "head", "per-region", "fc6+fc7")
    print(f"{'CPU ms/image':<14}" + "".join(f"{c:>11}" for c in columns))
    for name, times in (("plain", plain), (f"svd {ranks_text}", svd)):
        print(f"{name:<14}" + "".join(f"{times[c]:>11.1f}" for c in columns))
    share = plain["head"] / plain["forward"]
    speedup = plain["forward"] / svd["forward"]
    print(f"head share {share:.0%} (plain), forward {speedup:.2f}x faster with SVD")


@torch.no_grad()
def backbone_head(name: str, ranks_text: str, rois: str = "2000") -> None:
    """CPU ms of backbone ``name``'s per-region layers on ``rois`` pooled windows, plain and
    compressed (fastest of PASSES), and the CPU seconds the factorisation takes."""
    torch.manual_seed(0)
    backbone = build_backbone(name)
    head = backbone.head.eval()
    p = backbone.pool_size
    pooled = torch.randn(int(rois), backbone.out_channels, p, p)
    started = time.process_time()
    compressed = copy.deepcopy(head)
    for line in compress_fc_layers(compressed, parse_ranks(ranks_text)):
        print(f"truncated SVD: {line}")
    print(f"factorisation: {time.process_time() - started:.1f} CPU s, {rois} RoIs")
    for label, module in (("plain", head), (f"svd {ranks_text}", compressed)):
        fastest = float("inf")
        for _ in range(PASSES):
            started = time.process_time()
            module(pooled)
            fastest = min(fastest, time.process_time() - started)
        print(f"{name} per-region layers, {label}: {1e3 * fastest:.0f} CPU ms")


if __name__ == "__main__":
    if sys.argv[1] == "--backbone":
        backbone_head(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
