"""``rcnn bench models``: each detector's inference and training time per image, beside its
backbone's trunk alone on the same input, so that the detector's own overhead (RPN, proposal
layer, RoI head, NMS) shows; and the peak memory of a short training run on shapes.

The input is a shapes test image resized to the stated size (an untrained detector still
proposes, pools and suppresses as many boxes as a trained one: the counts are the config's).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import resource

import torch

from rcnn.bench import Timing, time_ms
from rcnn.data.dataset import Sample
from rcnn.data.shapes import ShapesDataset
from rcnn.data.transforms import TrainTransform, make_batch
from rcnn.models.build import RunConfig, build_model, preset
from rcnn.optim import make_optimizer

# (model, backbone, image size (H, W)): the small backbone at its preset's test size, VGG16 at
# the papers' 600 x 1000
CASES = [("faster-rcnn", "small", (384, 512)), ("faster-rcnn", "vgg16", (600, 1000))]
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


def bench_model(model_name: str, backbone: str, size: tuple[int, int]) -> list[Timing]:
    """Inference and training ms per image of the detector and of its trunk alone."""
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
    for detector, trunk in ((rows[0], rows[1]), (rows[2], rows[3])):
        overhead = 100 * (detector.ms - trunk.ms) / trunk.ms
        rows[rows.index(detector)] = dataclasses.replace(
            detector, target=f"overhead {overhead:.0f}% (< 15%)"
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
    """Peak resident memory (MiB) of a process that trains the preset on shapes for a few
    dozen iterations, the data loader's workers included."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_train_briefly, args=(model_name, backbone))
    process.start()
    process.join()
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _train_briefly(model_name: str, backbone: str) -> None:
    import tempfile

    from rcnn.train import Trainer

    config = preset(model_name, backbone)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    dataset = ShapesDataset("train", size=MEMORY_ITERATIONS * config.train.images_per_batch)
    model = build_model(config, len(dataset.class_names))
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(model, dataset, config, run_dir, model.pixel_stats).run()


def bench_models() -> list[Timing]:
    rows = [row for case in CASES for row in bench_model(*case)]
    memory = peak_training_memory_mb()
    rows.append(
        Timing(
            "faster-rcnn/small training, peak memory (MiB)",
            f"{MEMORY_ITERATIONS} iterations on shapes",
            memory,
            "< 4096 MiB",
        )
    )
    return rows
