"""``rcnn bench models``: each detector's inference and training time per image, beside its
backbone's trunk alone on the same input, so that the detector's own overhead (RPN, proposal
layer, RoI head, NMS) shows; and the peak memory of a short training run on shapes.

The input is a shapes test image resized to the stated size (an untrained detector still
proposes, pools and suppresses as many boxes as a trained one: the counts are the config's).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
from pathlib import Path

import torch

from rcnn.bench import Timing, time_ms
from rcnn.data.dataset import Sample
from rcnn.data.shapes import ShapesDataset
from rcnn.data.transforms import TrainTransform, make_batch
from rcnn.models.build import RunConfig, build_model, preset
from rcnn.optim import make_optimizer
from rcnn.svd import compress_fc_layers

# (model, backbone, image size (H, W), fc6/fc7 SVD ranks): the small backbone at its preset's
# test size; VGG16 at the papers' 600 x 1000, also with Fast R-CNN's truncated SVD at the ranks
# its paper used (1024, 256), the test-time cut of the head's cost
CASES = [
    ("faster-rcnn", "small", (384, 512), None),
    ("faster-rcnn", "vgg16", (600, 1000), (1024, 256)),
]
MEMORY_ITERATIONS = 40


def shapes_sample(config: RunConfig, size: tuple[int, int]) -> Sample:
    """A shapes test image resized to ``size`` = (H, W), with its annotation."""
    sample = ShapesDataset("test", size=1)[0]
    height, width = sample.image.shape[-2:]
    transform = TrainTransform((min(size),), max(size), 0.0)
    resized = transform(sample)
    if tuple(resized.image.shape[-2:]) != size:  # the aspect differs: fill the stated size
        image = torch.nn.functional.interpolate(resized.image[None].float(), size=size)[0]
        boxes = sample.annotation.boxes * sample.annotation.boxes.new_tensor(
            [size[1] / width, size[0] / height] * 2
        )
        resized = Sample(image, dataclasses.replace(sample.annotation, boxes=boxes), 0)
    return resized


def bench_model(
    model_name: str, backbone: str, size: tuple[int, int], svd_ranks: tuple[int, int] | None
) -> list[Timing]:
    """Inference and training ms per image of the detector and of its trunk alone, and with
    ``svd_ranks`` the inference of the detector with fc6/fc7 compressed."""
    config = preset(model_name, backbone)
    model = build_model(config, len(ShapesDataset("test", size=1).class_names))
    batch = make_batch(
        [shapes_sample(config, size)], *model.pixel_stats, config.input.size_divisible
    )
    sizes = f"1 x {size[0]}x{size[1]}"
    rows = [
        Timing(f"{model_name}/{backbone} inference", sizes, _inference_ms(model, batch), ""),
        Timing(f"  {backbone} trunk alone", sizes, _trunk_inference_ms(model, batch)),
        Timing(f"{model_name}/{backbone} training step", sizes, _training_ms(model, config, batch)),
        Timing(f"  {backbone} trunk alone, fwd+bwd", sizes, _trunk_training_ms(model, batch)),
    ]
    if svd_ranks is not None:
        compress_fc_layers(model, svd_ranks)
        name = f"{model_name}/{backbone} inference, fc6/fc7 SVD {svd_ranks[0]},{svd_ranks[1]}"
        rows.append(Timing(name, sizes, _inference_ms(model, batch)))
    # (detector row, trunk row it is compared with)
    pairs = [(0, 1), (2, 3)] + ([(4, 1)] if svd_ranks is not None else [])
    for detector, trunk in pairs:
        overhead = 100 * (rows[detector].ms - rows[trunk].ms) / rows[trunk].ms
        rows[detector] = dataclasses.replace(
            rows[detector], target=f"overhead {overhead:.0f}% (< 15%)"
        )
    return rows


def _inference_ms(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return time_ms(lambda: model(batch), warmup=1, repeats=5)


def _trunk_inference_ms(model, batch) -> float:
    with torch.no_grad():
        return time_ms(lambda: model.trunk(batch.images), warmup=1, repeats=5)


def _training_ms(model, config: RunConfig, batch) -> float:
    model.train()
    optimizer = make_optimizer(model, config.train)

    def step():
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return time_ms(step, warmup=1, repeats=5)


def _trunk_training_ms(model, batch) -> float:
    def step():
        model.zero_grad()
        model.trunk(batch.images).sum().backward()

    return time_ms(step, warmup=1, repeats=5)


def peak_training_memory_mb(model_name: str = "faster-rcnn", backbone: str = "small") -> float:
    """Peak memory (MiB) of a fresh process that trains the preset on shapes for a few dozen
    iterations, its data loader's workers included: the largest sum of their proportional set
    sizes (PSS: a page shared by n processes counts 1/n in each), sampled every 20 ms.

    Measured inside the child and sent back: the parent's ``RUSAGE_CHILDREN`` will not do, as
    Linux carries a process's peak RSS across ``exec``, so a spawned child would report the
    parent's size at the fork (a benchmark that has just run VGG16: ~3.5 GB)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_train_briefly, args=(model_name, backbone, send))
    process.start()
    send.close()
    try:
        peak = receive.recv()
    except EOFError:
        peak = None
    process.join()
    if peak is None or process.exitcode != 0:
        raise RuntimeError(f"the memory run exited with status {process.exitcode}")
    return peak


def _train_briefly(model_name: str, backbone: str, send) -> None:
    import tempfile

    from rcnn.train import Trainer

    config = preset(model_name, backbone)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    dataset = ShapesDataset("train", size=MEMORY_ITERATIONS * config.train.images_per_batch)
    model = build_model(config, len(dataset.class_names))
    with _PeakMemory() as peak, tempfile.TemporaryDirectory() as run_dir:
        Trainer(model, dataset, config, run_dir, model.pixel_stats).run()
    send.send(peak.mb)


class _PeakMemory:
    """The largest PSS sum (MiB) of this process and its descendants while the block ran."""

    def __enter__(self) -> _PeakMemory:
        self.mb, self._done = _tree_pss_mb(os.getpid()), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.mb = max(self.mb, _tree_pss_mb(os.getpid()))

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def _tree_pss_mb(pid: int) -> float:
    """PSS (MiB) of process ``pid`` and its descendants, from /proc (0 for one that ended)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            kb = next(int(line.split()[1]) for line in file if line.startswith("Pss:"))
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, StopIteration):
        return 0.0
    return kb / 1024 + sum(_tree_pss_mb(int(child)) for child in children)


def bench_models() -> list[Timing]:
    rows = [row for case in CASES for row in bench_model(*case)]
    if Path("/proc/self/smaps_rollup").exists():  # Linux: the memory row needs its /proc
        rows.append(
            Timing(
                "faster-rcnn/small training, peak memory (MiB)",
                f"{MEMORY_ITERATIONS} iterations on shapes",
                peak_training_memory_mb(),
                "< 4096 MiB",
            )
        )
    return rows
