import json

import pytest
import torch

from rcnn.classic.proposal_cache import proposals_for
from rcnn.classic.selective_search import SelectiveSearchConfig, selective_search


class FakeDataset:
    """A DetectionDataset's image side: three small scenes that count their loads."""

    def __init__(self, make_scene, ids=("a", "b", "c")):
        self.ids = list(ids)
        self.images = [
            torch.from_numpy(make_scene(seed)).permute(2, 0, 1) for seed in range(len(ids))
        ]
        self.loads = 0

    def __len__(self):
        return len(self.ids)

    def image_id(self, i):
        return self.ids[i]

    def load_image(self, i):
        self.loads += 1
        return self.images[i]


@pytest.fixture
def dataset(make_scene):
    return FakeDataset(make_scene)


def _equal(first, second):
    return len(first) == len(second) and all(
        torch.equal(a, b) for a, b in zip(first, second, strict=True)
    )


def test_proposals_are_selective_search_of_each_image(dataset):
    proposals = proposals_for(dataset, workers=1, progress=False)
    assert _equal(proposals, [selective_search(image) for image in dataset.images])


def test_worker_processes_give_the_same_proposals_in_order(dataset):
    assert _equal(
        proposals_for(dataset, workers=2, progress=False),
        proposals_for(dataset, workers=1, progress=False),
    )


def test_the_cache_is_read_back_without_loading_images(dataset, tmp_path):
    first = proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False)
    assert dataset.loads == 3 and len(first.seconds) == 3 and all(s > 0 for s in first.seconds)
    again = proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False)
    assert dataset.loads == 3  # nothing computed again
    assert _equal(first, again) and again.seconds == first.seconds
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("selective-search-fast-")
    assert json.loads((folder / "settings.json").read_text())["config"]["ks"] == [50, 100]
    assert sorted(path.name for path in folder.glob("*.npz")) == [
        "000000.npz",
        "000001.npz",
        "000002.npz",
    ]


@pytest.mark.parametrize(
    "other",
    [{"mode": "quality"}, {"seed": 1}, {"config": SelectiveSearchConfig(min_box_fraction=0.1)}],
)
def test_a_cache_made_with_other_settings_is_not_reused(dataset, tmp_path, other):
    proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False)
    proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False, **other)
    assert dataset.loads == 6
    assert len(list(tmp_path.iterdir())) == 2


def test_a_cache_of_other_images_is_not_reused(make_scene, tmp_path):
    proposals_for(FakeDataset(make_scene), cache_dir=tmp_path, workers=1, progress=False)
    other = FakeDataset(make_scene, ids=("a", "b", "d"))
    proposals_for(other, cache_dir=tmp_path, workers=1, progress=False)
    assert other.loads == 3


def test_a_damaged_cache_file_is_computed_again(dataset, tmp_path):
    first = proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False)
    (folder,) = tmp_path.iterdir()
    (folder / "000001.npz").write_bytes(b"not a zip file")
    again = proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False)
    assert dataset.loads == 4 and _equal(first, again)
    assert _equal(proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False), first)
    assert dataset.loads == 4  # the damaged file was replaced


def test_an_interrupted_run_resumes(dataset, tmp_path):
    class Interrupted(Exception):
        pass

    load = dataset.load_image

    def fail_on_the_third(i):
        if dataset.loads == 2:
            raise Interrupted
        return load(i)

    dataset.load_image = fail_on_the_third
    with pytest.raises(Interrupted):
        proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False)
    dataset.load_image = load
    proposals_for(dataset, cache_dir=tmp_path, workers=1, progress=False)
    assert dataset.loads == 3  # two from the first run, the third now
    (folder,) = tmp_path.iterdir()
    assert not [path for path in folder.iterdir() if path.name.startswith(".")]  # no temporaries


def test_an_empty_dataset_has_no_proposals(make_scene, tmp_path):
    assert proposals_for(FakeDataset(make_scene, ids=()), cache_dir=tmp_path, progress=False) == []


class OpenMPDataset(FakeDataset):
    """Images made by a torch op large enough to run on OpenMP threads."""

    def load_image(self, i):
        return super().load_image(i).double().mul(1.0).to(torch.uint8)


def test_worker_processes_survive_the_parents_openmp_threads(make_scene):
    """A forked worker entering OpenMP waits forever for the parent's threads: on a
    regression this test hangs."""
    torch.ones(1 << 22).mul(2.0).sum()  # the parent starts its OpenMP threads
    dataset = OpenMPDataset(make_scene)
    assert _equal(
        proposals_for(dataset, workers=2, progress=False),
        proposals_for(dataset, workers=1, progress=False),
    )
