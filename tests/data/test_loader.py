import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rcnn.data.loader import (
    EpochSampler,
    SkippedSample,
    TransformedDataset,
    collate_samples,
    group_runs,
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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=40), st.integers(1, 5), st.randoms())
def test_group_runs_is_a_permutation_in_runs_of_one_group(groups, size, rng):
    order = list(range(len(groups)))
    rng.shuffle(order)
    grouped = group_runs(order, groups, size)
    assert sorted(grouped) == sorted(order)
    filled = sum(groups.count(g) // size for g in set(groups)) * size  # every run that fills
    runs = [grouped[k : k + size] for k in range(0, filled, size)]
    assert all(len({groups[i] for i in run}) == 1 for run in runs)
    tail = grouped[filled:]  # what is left: fewer than `size` of each group, in order
    assert all(sum(groups[i] == g for i in tail) < size for g in set(groups))
    assert tail == [i for i in order if i in set(tail)]


def test_training_batches_share_an_orientation_and_resume_in_place():
    dataset = ShapesDataset("train", size=40, config=SMALL)
    portrait = [h > w for h, w in map(dataset.image_size, range(40))]
    assert 5 < sum(portrait) < 35  # both kinds are there to be grouped
    loader = make_loader(dataset, batch_size=4, seed=2, group_by_aspect=True)
    loader.sampler.set_epoch(1)
    batches = [[s.index for s in batch] for batch in loader]
    assert sorted(i for b in batches for i in b) == list(range(40))
    mixed = [b for b in batches if len({portrait[i] for i in b}) > 1]
    assert len(mixed) <= 1  # at most the leftovers of the two kinds, at the end
    loader.sampler.set_epoch(1, start=12)
    assert [[s.index for s in batch] for batch in loader] == batches[3:]
