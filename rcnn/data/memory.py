"""Training images held in memory: each image is decoded (or, for ``shapes``, drawn) once,
before the first step, instead of once per epoch in the loader's workers.

The images are loaded on threads of this process (Pillow and NumPy release the GIL while they
decode and draw), so they land in its own memory, which the loader's workers then share.

On a 2-core machine the workers' decoding competes with training for the same cores: the
demo's Faster R-CNN made 16% more steps in the same minutes with the shapes set in memory
(README). ``train.cache_images`` turns it on; the images must fit: an estimate from the
annotated image sizes is checked against the memory available before anything is loaded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from rcnn.data.dataset import DatasetView, DetectionDataset, Sample
from rcnn.errors import BadSampleError, RcnnError
from rcnn.structures import Annotation

# At most this share of the memory available now may hold the images.
MEMORY_SHARE = 0.5


class InMemory(DatasetView):
    """``dataset`` with every Sample loaded once, on ``threads`` threads, and kept.

    A sample that cannot be loaded keeps its BadSampleError, raised again whenever it is
    asked for, so a loader skips it (or stops) as it would have without the cache.
    """

    def __init__(self, dataset: DetectionDataset, threads: int = 1):
        super().__init__(dataset)
        _check_memory(dataset)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            self.samples: list[Sample | BadSampleError] = list(
                pool.map(self._load, range(len(dataset)))
            )

    def annotation(self, i: int) -> Annotation:
        return self[i].annotation

    def load_image(self, i: int):
        return self[i].image

    def __getitem__(self, i: int) -> Sample:
        sample = self.samples[i]
        if isinstance(sample, BadSampleError):
            raise BadSampleError(sample.path, sample.problem)
        return sample

    def _load(self, i: int) -> Sample | BadSampleError:
        try:
            return self.dataset[i]
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
