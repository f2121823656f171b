import pytest
import torch

from rcnn.data.loader import (
    EpochSampler,
    SkippedSample,
    TransformedDataset,
    collate_samples,
    make_loader,
)
from rcnn.data.shapes import ShapesConfig, ShapesDataset
from rcnn.data.transforms import TrainTransform
from rcnn.data.voc import VOCDataset
from rcnn.errors import BadSampleError

from .conftest import voc_xml

SMALL = ShapesConfig(short_side=(48, 64), objects=(1, 3), clutter=(0, 2))
TRANSFORM = TrainTransform(min_sizes=(40, 56, 72), max_size=120, flip_prob=0.5)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    sampler = EpochSampler(50, seed=3)
    first = sampler.order(0)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert EpochSampler(50, seed=3).order(0) == first
    assert sampler.order(1) != first and EpochSampler(50, seed=4).order(0) != first
    assert EpochSampler(5, shuffle=False).order(7) == [0, 1, 2, 3, 4]


def test_sampler_resumes_mid_epoch():
    sampler = EpochSampler(20, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    assert full == [(2, i) for i in sampler.order(2)]
    sampler.set_epoch(2, start=13)
    assert list(sampler) == full[13:] and len(sampler) == 7
    with pytest.raises(ValueError, match="start"):
        sampler.set_epoch(0, start=21)


def keys_and_pixels(loader, epoch, start=0):
    loader.sampler.set_epoch(epoch, start)
    return [(s.index, s.flipped, s.image.sum().item()) for batch in loader for s in batch]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_run_sees_the_same_samples(workers):
    dataset = ShapesDataset("train", size=10, seed=0, config=SMALL)
    unbroken = make_loader(dataset, batch_size=3, transform=TRANSFORM, seed=5)
    epoch1 = keys_and_pixels(unbroken, 1)
    assert sorted(index for index, _, _ in epoch1) == list(range(10))
    assert keys_and_pixels(unbroken, 2) != epoch1  # a new order and new augmentation
    resumed = make_loader(dataset, batch_size=3, transform=TRANSFORM, seed=5, num_workers=workers)
    assert keys_and_pixels(resumed, 1, start=6) == epoch1[6:]


def test_collate_keeps_samples_and_drops_skipped():
    dataset = ShapesDataset("test", size=2, config=SMALL)
    batch = collate_samples([dataset[0], SkippedSample("x.jpg", "corrupt"), dataset[1]])
    assert [s.index for s in batch] == [0, 1] and batch.skipped == [("x.jpg", "corrupt")]


def test_bad_image_is_raised_or_skipped_while_loading(make_voc):
    root = make_voc({"train": {"a": voc_xml([("dog", (1, 1, 5, 5), False)])}})
    with open(f"{root}/JPEGImages/a.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff broken")
    with pytest.raises(BadSampleError, match=r"a.jpg"):
        TransformedDataset(VOCDataset(root, "train"))[(0, 0)]
    skipping = TransformedDataset(VOCDataset(root, "train", on_bad_sample="skip"))
    with pytest.warns(UserWarning, match="a.jpg"):
        skipped = skipping[(0, 0)]
    assert skipped.path.endswith("a.jpg") and "not an image" in skipped.problem
    # a training loader can skip undecodable images whatever the data set's policy, and its
    # batches carry what was skipped, also from worker processes
    loader = make_loader(VOCDataset(root, "train"), num_workers=1, skip_bad=True)
    (batch,) = list(loader)  # the worker warns on its own stderr
    assert batch == [] and batch.skipped == [(skipped.path, skipped.problem)]


def test_without_transform_samples_pass_through():
    dataset = ShapesDataset("val", size=3, config=SMALL)
    loader = make_loader(dataset, batch_size=2, shuffle=False)
    batches = list(loader)
    assert [[s.index for s in b] for b in batches] == [[0, 1], [2]]
    assert torch.equal(batches[0][1].image, dataset[1].image)
