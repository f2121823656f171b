import multiprocessing

import pytest
import torch

import rcnn.data.memory as memory
import rcnn.pool as pool
from rcnn.data.loader import make_loader
from rcnn.data.memory import InMemory
from rcnn.data.shapes import ShapesConfig, ShapesDataset
from rcnn.data.voc import VOCDataset
from rcnn.errors import BadSampleError, RcnnError

from .conftest import voc_xml

SMALL = ShapesConfig(short_side=(40, 60), objects=(1, 3), min_object_size=8.0)


class Counting(ShapesDataset):
    """Shapes that count how often an image is drawn, in whichever process draws it."""

    draws = multiprocessing.Value("i", 0)  # shared with the loader processes forked later

    def _generate(self, i):
        with Counting.draws.get_lock():
            Counting.draws.value += 1
        return super()._generate(i)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 2 images, so that a handful of images already goes to loader processes."""
    monkeypatch.setattr(memory, "CHUNK", 2)


@pytest.mark.parametrize("processes", [1, 2])
def test_holds_the_same_samples_and_draws_each_image_once(processes, small_chunks):
    Counting.draws.value = 0
    plain = ShapesDataset("train", size=5, config=SMALL)
    cached = InMemory(Counting("train", size=5, config=SMALL), processes=processes)
    assert Counting.draws.value == 5
    for i in range(5):
        assert torch.equal(cached[i].image, plain[i].image)
        assert torch.equal(cached.annotation(i).boxes, plain.annotation(i).boxes)
        assert torch.equal(cached.load_image(i), plain.load_image(i))
        assert cached.image_id(i) == plain.image_id(i) and cached[i].index == i
    loader = make_loader(cached, batch_size=2)
    for _ in range(2):  # two epochs: nothing drawn again
        assert sorted(s.index for batch in loader for s in batch) == list(range(5))
    assert Counting.draws.value == 5


def test_spawned_processes_load_the_same_samples(small_chunks, monkeypatch):
    # the start method where the platform cannot fork: the data set is pickled over
    spawn = multiprocessing.get_context("spawn")
    monkeypatch.setattr(pool.multiprocessing, "get_context", lambda method=None: spawn)
    plain = ShapesDataset("train", size=5, config=SMALL)
    cached = InMemory(ShapesDataset("train", size=5, config=SMALL), processes=2)
    for i in range(5):
        assert torch.equal(cached[i].image, plain[i].image)
        assert torch.equal(cached.annotation(i).boxes, plain.annotation(i).boxes)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_bad_image_stays_bad_and_is_skipped_by_a_loader(make_voc, processes, monkeypatch):
    monkeypatch.setattr(memory, "CHUNK", 1)  # each image from a process of its own
    root = make_voc({"train": {"a": voc_xml([("dog", (1, 1, 5, 5), False)]), "b": voc_xml([])}})
    with open(f"{root}/JPEGImages/a.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff broken")
    cached = InMemory(VOCDataset(root, "train"), processes=processes)
    for _ in range(2):
        with pytest.raises(BadSampleError, match=r"a.jpg: .*not an image"):
            cached[0]
    assert cached[1].image.shape[0] == 3
    with pytest.warns(UserWarning, match=r"skipped a bad sample: .*a.jpg"):
        (batch,) = list(make_loader(cached, batch_size=2, skip_bad=True))
    assert [s.index for s in batch] == [1] and batch.skipped[0][0].endswith("a.jpg")


def test_refuses_images_that_would_not_fit_before_loading_any(monkeypatch):
    monkeypatch.setattr(memory, "MEMORY_SHARE", 1e-12)
    Counting.draws.value = 0
    with pytest.raises(RcnnError, match=r"train: holding its 3 images in memory needs"):
        InMemory(Counting("train", size=3, config=SMALL), processes=2)
    assert Counting.draws.value == 0
