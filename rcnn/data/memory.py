"""Training images held in memory: each image is decoded (or, for ``shapes``, drawn) once,
before the first step, instead of once per epoch in the loader's workers.

The images are loaded by worker processes, a chunk at a time, and come back pickled: drawing a
shapes image is mostly Python, which threads run one at a time under the GIL (the demo's 4,000
images: 29-31 s on 2 threads, 21-23 s on 2 processes on the AVX2 host). The workers are
``rcnn.pool``'s: forked where the platform can fork, inheriting the data set, single-threaded;
spawned elsewhere, the data set pickled to them. With one process or one chunk the images
load in this process.

On a 2-core machine the workers' decoding competes with training for the same cores: the
demo's Faster R-CNN made 16% more steps in the same minutes with the shapes set in memory
(README). ``train.cache_images`` turns it on; the images must fit: an estimate from the
annotated image sizes is checked against the memory available before anything is loaded.
"""

from __future__ import annotations

import io
import os
import pickle

import torch

from rcnn.data.dataset import DatasetView, DetectionDataset, Sample
from rcnn.errors import BadSampleError, RcnnError
from rcnn.pool import process_pool
from rcnn.structures import Annotation

# At most this share of the memory available now may hold the images.
MEMORY_SHARE = 0.5


class InMemory(DatasetView):
    """``dataset`` with every Sample loaded once, by ``processes`` processes, and kept.

    A sample that cannot be loaded keeps its BadSampleError, raised again whenever it is
    asked for, so a loader skips it (or stops) as it would have without the cache.
    """

    def __init__(self, dataset: DetectionDataset, processes: int = 1):
        super().__init__(dataset)
        _check_memory(dataset)
        self.samples = _load_all(dataset, processes)

    def annotation(self, i: int) -> Annotation:
        return self[i].annotation

    def load_image(self, i: int):
        return self[i].image

    def __getitem__(self, i: int) -> Sample:
        sample = self.samples[i]
        if isinstance(sample, BadSampleError):
            raise BadSampleError(sample.path, sample.problem)
        return sample


CHUNK = 64  # images a process loads and sends back at a time

_worker_dataset: DetectionDataset | None = None  # the data set a loader process reads


def _load_all(dataset: DetectionDataset, processes: int) -> list[Sample | BadSampleError]:
    """Every sample of ``dataset`` (or its error), in order."""
    indices = range(len(dataset))
    if processes < 2 or len(dataset) <= CHUNK:
        return [_load(dataset, i) for i in indices]
    chunks = [indices[start : start + CHUNK] for start in indices[::CHUNK]]
    with process_pool(processes, _adopt, (dataset,)) as pool:
        return [sample for blob in pool.map(_load_chunk, chunks) for sample in pickle.loads(blob)]


def _adopt(dataset: DetectionDataset) -> None:
    global _worker_dataset
    _worker_dataset = dataset


def _load_chunk(indices: range) -> bytes:
    """In a loader process: the chunk's samples, pickled by value (not as shared-memory
    handles, which would hold one file descriptor per image)."""
    assert _worker_dataset is not None
    buffer = io.BytesIO()
    _ArrayPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(
        [_load(_worker_dataset, i) for i in indices]
    )
    return buffer.getvalue()


class _ArrayPickler(pickle.Pickler):
    """Pickles CPU tensors as NumPy arrays, their bytes as they are: a tensor's own pickling
    writes a torch.save archive for each (2 ms an image)."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.requires_grad:
            try:
                return torch.from_numpy, (obj.numpy(),)
            except TypeError:  # a type NumPy lacks (bfloat16)
                pass
        return NotImplemented


def _load(dataset: DetectionDataset, i: int) -> Sample | BadSampleError:
    try:
        return dataset[i]
    except BadSampleError as error:
        return error


def _check_memory(dataset: DetectionDataset) -> None:
    """Refuse, before loading anything, images that would not fit in memory."""
    needed = sum(3 * h * w for h, w in map(dataset.image_size, range(len(dataset))))
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > MEMORY_SHARE * available:
        raise RcnnError(
            f"{dataset.split}: holding its {len(dataset)} images in memory needs "
            f"{needed / 2**30:.1f} GiB, over half of the {available / 2**30:.1f} GiB available; "
            "train without train.cache_images"
        )
