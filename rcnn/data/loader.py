"""Loading: parallel, streaming, and repeatable to the sample, so a resumed run sees the same data.

The order of an epoch is a function of ``(seed, epoch)`` alone (``EpochSampler``), and the
random choices of the transform for one sample a function of ``(seed, epoch, index)`` alone
(``TransformedDataset``): neither depends on the number of workers, on which worker loads the
sample, or on where a run was stopped. A trainer does::

    loader = make_loader(dataset, batch_size, transform=TrainTransform(...), seed=seed)
    for epoch in range(first_epoch, epochs):
        loader.sampler.set_epoch(epoch, start=samples_done if epoch == first_epoch else 0)
        for samples in loader:  # a list of Samples
            ...
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rcnn.data.dataset import DetectionDataset, Sample
from rcnn.errors import BadSampleError

Transform = Callable[[Sample, torch.Generator], Sample]


class EpochSampler(Sampler):
    """The keys ``(epoch, index)`` of one epoch, in an order fixed by ``(seed, epoch)``.

    shuffle: a fresh permutation of ``range(size)`` each epoch (else the plain order).
    ``set_epoch(e, start=p)`` selects epoch ``e`` and skips its first ``p`` samples: resuming
    after ``p`` samples gives exactly the rest of the order an unbroken run would have seen.

    Sharded over ``num_shards`` processes (distributed training), shard ``shard`` gets every
    ``num_shards``-th key of the order from ``start`` on, starting at its own number; the
    order is first extended by its own beginning to a multiple of ``num_shards`` so that all
    shards have as many keys (and batches). ``start`` counts keys of the whole order.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        shard: int = 0,
        num_shards: int = 1,
        groups: Sequence[int] | None = None,
        group_size: int = 1,
    ):
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
        if groups is not None and len(groups) != size:
            raise ValueError(f"{len(groups)} groups for {size} samples")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.shard, self.num_shards = shard, num_shards
        self.groups, self.group_size = groups, group_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.size:
            raise ValueError(f"start must be in [0, {self.size}], got {start}")
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        """The data set indices of ``epoch``, in the order they are visited."""
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.groups is None or self.group_size <= 1:
            return order
        return group_runs(order, self.groups, self.group_size)

    def shard_order(self, epoch: int) -> list[int]:
        """This shard's indices of ``epoch`` after ``start``: all of them in one process."""
        order = self.order(epoch)
        if self.num_shards == 1 or self.start >= self.size:
            return order[self.start :]
        padded = -(-self.size // self.num_shards) * self.num_shards  # a multiple of num_shards
        order = [order[i % self.size] for i in range(padded)]
        return order[self.start + self.shard :: self.num_shards]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, index) for index in self.shard_order(epoch)])

    def __len__(self) -> int:
        if self.num_shards == 1:
            return self.size - self.start
        return len(self.shard_order(self.epoch))


def group_runs(order: list[int], groups: Sequence[int], size: int) -> list[int]:
    """``order`` rearranged into runs of ``size`` indices of one group each (Detectron's
    aspect-ratio grouping): walking the order, each index waits in its group's run, and a run
    that fills is emitted. The runs come out in the order they fill; indices left in unfilled
    runs follow at the end, in their original order."""
    runs: dict[int, list[int]] = {}
    grouped: list[int] = []
    for index in order:
        run = runs.setdefault(groups[index], [])
        run.append(index)
        if len(run) == size:
            grouped += run
            run.clear()
    left = {index for run in runs.values() for index in run}
    return grouped + [index for index in order if index in left]


@dataclass(frozen=True)
class SkippedSample:
    """What a loader hands on in place of a sample that could not be loaded."""

    path: str
    problem: str


class Batch(list):
    """A batch: the list of its Samples; ``skipped`` holds ``(path, problem)`` of the samples
    left out of it because they could not be loaded (a list, so workers can send it)."""

    skipped: list[tuple[str, str]]


class TransformedDataset(Dataset):
    """``dataset[index]`` passed through ``transform``, looked up by ``(epoch, index)`` keys.

    The transform gets a ``torch.Generator`` seeded from ``(seed, epoch, index)``, so its
    random choices repeat exactly. A BadSampleError while decoding is raised, or, with
    ``skip_bad`` (default: the data set's ``on_bad_sample == "skip"``), warned about and the
    sample replaced by a SkippedSample (``collate_samples`` leaves it out of the batch).
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        transform: Transform | None = None,
        seed: int = 0,
        skip_bad: bool | None = None,
    ):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.skip_bad = dataset.on_bad_sample == "skip" if skip_bad is None else skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Sample | SkippedSample:
        epoch, index = key
        try:
            sample = self.dataset[index]
        except BadSampleError as error:
            if not self.skip_bad:
                raise
            warnings.warn(f"skipped a bad sample: {error}", stacklevel=2)
            return SkippedSample(error.path, error.problem)
        if self.transform is None:
            return sample
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch, index))
        return self.transform(sample, generator)


def collate_samples(batch: list[Sample | SkippedSample]) -> Batch:
    """A batch is the list of its Samples (images differ in size; the model batches them),
    with the skipped ones noted in ``batch.skipped``."""
    samples = Batch(s for s in batch if isinstance(s, Sample))
    samples.skipped = [(s.path, s.problem) for s in batch if isinstance(s, SkippedSample)]
    return samples


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's generators in a worker from torch's per-worker seed, for
    transforms that draw from them instead of the generator they are given."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(
    dataset: DetectionDataset,
    batch_size: int = 1,
    transform: Transform | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    skip_bad: bool | None = None,
    group_by_aspect: bool = False,
) -> DataLoader:
    """A DataLoader of Batches (lists of Samples) over ``dataset`` with an ``EpochSampler``
    (``loader.sampler``) over shard ``shard = (number, of)``, all of it by default. Workers
    stay alive between epochs and load ahead while the model works; the last, smaller batch
    of an epoch is kept. ``skip_bad``: see TransformedDataset. ``group_by_aspect``: every
    batch (of all shards together) holds only landscape or only portrait images where it can,
    so that a batch padded to its largest image wastes little (a mixed batch of 320x427
    images is padded to 427x427, a third more pixels for the convolutions)."""
    groups = None
    if group_by_aspect and shuffle:
        groups = [int(h > w) for h, w in map(dataset.image_size, range(len(dataset)))]
    return DataLoader(
        TransformedDataset(dataset, transform, seed, skip_bad),
        batch_size=batch_size,
        sampler=EpochSampler(
            len(dataset), seed, shuffle, *shard, groups=groups, group_size=batch_size * shard[1]
        ),
        collate_fn=collate_samples,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def _mix(*numbers: int) -> int:
    """A well-mixed 64-bit seed from a few non-negative integers."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, np.uint64)[0])
