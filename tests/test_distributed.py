"""Distributed data parallel training: sharded epochs, and two gloo processes on the CPU
training the same weights as one process with the same total batch."""

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rcnn import distributed
from rcnn.data.loader import EpochSampler
from rcnn.data.shapes import ShapesDataset
from rcnn.detector import Detector
from rcnn.errors import RcnnError
from rcnn.inference import detect_dataset, gather_detections
from rcnn.models.build import InputConfig, RunConfig
from rcnn.models.faster_rcnn import FasterRCNN
from rcnn.optim import TrainConfig
from rcnn.train import CHECKPOINT, Trainer, per_rank_batch
from tests.test_faster_rcnn import CONFIG
from tests.tiny import tiny_backbone

WORLD = 2
IMAGES = 6  # 4 + 2 per epoch: the last, smaller batch is shared out too


@given(
    size=st.integers(1, 40),
    shards=st.integers(1, 4),
    per_shard=st.integers(1, 3),
    done=st.integers(0, 12),
    seed=st.integers(0, 5),
)
def test_shards_deal_out_each_batch_of_the_one_process_order(size, shards, per_shard, done, seed):
    """Step k's shard batches together are the one-process batch k, also when resumed after
    ``done`` batches; the order is padded with its own beginning to a multiple of the shards."""
    batch = shards * per_shard
    start = min(done * batch, size)
    order = EpochSampler(size, seed).order(3)
    padded = [order[i % size] for i in range(-(-size // shards) * shards)]
    rest = padded[start:] if start < size else []
    parts = []
    for shard in range(shards):
        sampler = EpochSampler(size, seed, True, shard, shards)
        sampler.set_epoch(3, start)
        keys = list(sampler)
        assert len(keys) == len(sampler) and {e for e, _ in keys} <= {3}
        parts.append([index for _, index in keys])
    assert len({len(p) for p in parts}) == 1  # as many keys, so as many steps, on every shard
    steps = -(-len(parts[0]) // per_shard)
    assert steps == -(-(size - start) // batch)  # the one-process number of steps
    for k in range(steps):
        together = [i for p in parts for i in p[k * per_shard : (k + 1) * per_shard]]
        assert sorted(together) == sorted(rest[k * batch : (k + 1) * batch])


def test_a_batch_that_does_not_divide_among_the_processes_is_refused():
    with pytest.raises(RcnnError, match=r"images_per_batch \(3\) must be a multiple .* \(2\)"):
        per_rank_batch(3, distributed.World(rank=0, size=2))


class ObjectCounter(nn.Module):
    """Counts the objects of each class in an image: a loss that is a mean over the images
    with no random sampling and nothing that depends on the other images of a batch (one
    convolution sees the same zeros past an image's edge whether it is padded or not). So
    the mean of two ranks' losses over 2 images each is the one-process loss over all 4,
    unlike Faster R-CNN's, whose normalisers (anchors and RoIs sampled in the whole batch,
    feature locations of the padded batch) and random target sampling differ per rank."""

    stages = ("joint",)
    pixel_stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    def __init__(self, num_classes: int):
        super().__init__()
        self.trunk = nn.Conv2d(3, 8, 3, padding=1)
        self.count = nn.Linear(8, num_classes + 1)

    def set_stage(self, stage: str) -> None:
        pass

    def forward(self, batch):
        images = batch.images.to(self.trunk.weight.dtype)
        features = torch.relu(self.trunk(images))  # (N, C, H, W)
        pooled = torch.stack(  # each image's own pixels only: (N, C)
            [
                f[:, :h, :w].mean((1, 2))
                for f, (h, w) in zip(features, batch.image_sizes, strict=True)
            ]
        )
        counts = torch.stack(
            [a.labels.bincount(minlength=self.count.out_features) for a in batch.annotations]
        ).to(images.dtype)  # (N, K+1)
        return {"count": ((self.count(pooled) - counts) ** 2).mean()}


RUN = RunConfig(
    backbone="tiny",
    input=InputConfig(min_sizes=(96, 128), max_size=160, test_size=128),
    train=TrainConfig(
        epochs=2, images_per_batch=4, learning_rate=0.01, warmup_iterations=2, workers=0
    ),
    faster_rcnn=CONFIG,
)


def train(model, run_dir, world=None, config=RUN):
    dataset = ShapesDataset("train", size=IMAGES)
    trainer = Trainer(model, dataset, config, run_dir, model.pixel_stats, world=world)
    trainer.run()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def detect_sharded_and_alone(model, world):
    """Rank 0's gathered detections of 5 test images (each rank detected its share), and
    what rank 0 alone detects on all of them, as {index: (boxes, scores)} (None on rank 1)."""
    detector = Detector(model, RUN, [f"class{k}" for k in range(8)], model.pixel_stats)
    dataset = ShapesDataset("test", size=5)
    shard = detect_dataset(detector, dataset, 0, False, (world.rank, world.size))
    gathered = gather_detections(shard, world)
    if gathered is None:
        return None, None
    alone = detect_dataset(detector, dataset, 0, False)
    return tuple(
        {i: (d.boxes, d.scores) for i, d in found.detections.items()} for found in (gathered, alone)
    )


def counter():
    """In float64: the comparison with one process is then exact to rounding far below any
    difference a wrong gradient average or a wrong shard would make."""
    torch.manual_seed(0)
    return ObjectCounter(8).double()


def faster_rcnn():
    torch.manual_seed(0)
    return FasterRCNN(tiny_backbone(), 8, CONFIG)


def worker(rank: int, port: int, out: str) -> None:
    """One of two torchrun-like processes: the environment torchrun would set, then training."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    world = distributed.setup()
    try:
        counted = train(counter(), f"{out}/counter{rank}", world)
        one_epoch = dataclasses.replace(RUN, train=dataclasses.replace(RUN.train, epochs=1))
        model = faster_rcnn()
        detector = train(model, f"{out}/faster{rank}", world, one_epoch)
        gathered, alone = detect_sharded_and_alone(model, world)
        results = {"counter": counted, "faster": detector, "gathered": gathered, "alone": alone}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_what_one_process_does_with_the_same_total_batch(tmp_path):
    mp.spawn(worker, (free_port(), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for kind in ("counter", "faster"):  # DDP keeps the replicas identical, bit for bit
        for name, value in ranks[0][kind].items():
            assert torch.equal(value, ranks[1][kind][name]), (kind, name)
    # evaluation: each rank detects its share, rank 0 gets them all, as if it had done them
    gathered, alone = ranks[0]["gathered"], ranks[0]["alone"]
    assert sorted(gathered) == sorted(alone) == list(range(5))
    assert sum(len(boxes) for boxes, _ in alone.values()) > 0  # something to compare
    for index, (boxes, scores) in alone.items():
        assert torch.equal(gathered[index][0], boxes) and torch.equal(gathered[index][1], scores)
    # only rank 0 writes checkpoints (the ranks were given run directories of their own)
    assert (tmp_path / "faster0" / CHECKPOINT).is_file()
    assert not (tmp_path / "faster1" / CHECKPOINT).exists()
    # 4 SGD steps with momentum on 4 images per step. The ranks' averaged gradient differs from
    # the one-process one by rounding alone: the convolution of differently padded batches and
    # the all-reduce add in other orders. In float32 that reached 1.5e-6 on a conv bias (its
    # gradient sums ~50,000 terms that mostly cancel) against a change of 8e-3 in training; in
    # float64 the same rounding is ~1e-15 relative, so 1e-10 is far above it and far below
    # what a wrong average (x2) or a wrong shard (other images) would make.
    alone = train(counter(), tmp_path / "alone")
    initial = counter().state_dict()
    for name, value in alone.items():
        torch.testing.assert_close(ranks[0]["counter"][name], value, rtol=1e-10, atol=1e-10)
        assert (value - initial[name]).abs().max() > 1e-3  # it did train
