import numpy as np
import pytest
import torch

from rcnn.cli import main
from rcnn.data.shapes import CLASS_NAMES, ShapesConfig, ShapesDataset, _rasterize, _Scene
from rcnn.data.spec import open_dataset
from rcnn.errors import RcnnError


def test_images_are_a_function_of_seed_split_and_index():
    a, b = ShapesDataset("train", 4, seed=0), ShapesDataset("train", 4, seed=0)
    for i in (3, 0):  # any order
        assert torch.equal(a[i].image, b[i].image)
        assert torch.equal(a.annotation(i).boxes, b[i].annotation.boxes)
    other_seed, test = ShapesDataset("train", 4, seed=1), ShapesDataset("test", 4, seed=0)
    assert not torch.equal(a[0].image, a[1].image)
    for other in (other_seed, test):
        assert all(
            a.image_size(i) != other.image_size(i) or not torch.equal(a[i].image, other[i].image)
            for i in range(4)
        )


def test_images_and_boxes_are_well_formed():
    dataset = ShapesDataset("train", 40, seed=7)
    seen = set()
    for i in range(len(dataset)):
        sample = dataset[i]
        height, width = dataset.image_size(i)
        assert sample.image.shape == (3, height, width) and sample.image.dtype == torch.uint8
        assert (
            240 <= min(height, width) <= 320
            and max(height, width) <= min(height, width) * 4 / 3 + 1
        )
        boxes = sample.annotation.boxes
        assert 1 <= len(boxes) <= 8
        assert torch.equal(boxes, boxes.round())  # integer pixel edges
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2:] - boxes[:, :2]).max() <= 0.8 * min(height, width) * 1.5
        seen.update(sample.annotation.labels.tolist())
    assert seen == set(range(1, len(CLASS_NAMES) + 1))  # every class appears
    assert dataset.image_id(3) == "train_000003" and dataset.image_path(3) == "shapes:train/000003"
    with pytest.raises(IndexError):
        dataset[40]


def square(x0, y0, side):
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], float)


def test_occluders_leave_each_object_sixty_percent_visible_and_boxes_are_tight():
    scene = _Scene(np.zeros((60, 80, 3), np.float32), ShapesConfig())
    # Pillow fills a polygon's edges too: this square covers pixels 10..30, 21 x 21
    first = _rasterize(square(10, 10, 20), scene.canvas.shape)
    assert first.full == 441 and scene._hidden_by(first) is not None
    scene.labels, scene.footprints, scene.visible = [1], [first], [441]
    scene.owner[first.region][first.inside] = 1
    # hiding columns 21..30 (10 of 21) would leave 52% visible: refused
    assert scene._hidden_by(_rasterize(square(21, 5, 30), scene.canvas.shape)) is None
    # hiding columns 23..30 leaves 62%: allowed, 8 columns x 21 rows hidden
    cover = _rasterize(square(23, 0, 30), scene.canvas.shape)
    assert scene._hidden_by(cover).tolist() == [168]
    scene.owner[cover.region][cover.inside] = 0
    assert scene.annotation().boxes.tolist() == [[10, 10, 23, 31]]  # the visible part


def test_objects_partly_outside_count_only_their_pixels_inside():
    footprint = _rasterize(square(-10, 0, 20), (30, 30, 3))
    assert footprint.full == 441 and footprint.inside.sum() == 11 * 21


def test_unknown_split_and_bad_arguments():
    with pytest.raises(RcnnError, match="no split 'dev'; splits: train, val, test"):
        ShapesDataset("dev")
    with pytest.raises(RcnnError, match="seed"):
        ShapesDataset("train", seed=-1)
    assert (
        len(open_dataset("shapes", "test")) == 300 and len(open_dataset("shapes", "train")) == 2000
    )


def test_written_as_voc_and_read_back(tmp_path):
    out = str(tmp_path / "shapes")
    assert main(["data", "shapes", "--out", out, "--train", "8", "--test", "4", "--seed", "3"]) == 0
    for split, size in (("train", 8), ("test", 4)):
        voc = open_dataset(f"voc:{out}", split)
        shapes = ShapesDataset(split, size, seed=3)
        assert voc.class_names == shapes.class_names == CLASS_NAMES and len(voc) == size
        for i in range(size):
            original, read = shapes[i], voc[i]
            assert voc.image_id(i) == shapes.image_id(i)
            assert torch.equal(read.annotation.boxes, original.annotation.boxes)
            assert torch.equal(read.annotation.labels, original.annotation.labels)
            assert not read.annotation.difficult.any()
            # JPEG at quality 95: the same picture, a few levels off on average
            assert (read.image.float() - original.image.float()).abs().mean() < 4
