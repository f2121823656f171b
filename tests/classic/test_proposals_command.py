import json

import numpy as np
import pytest
import torch
from PIL import Image

from rcnn.boxes import box_iou
from rcnn.classic.proposals_command import DRAWN_PROPOSALS, draw_proposals
from rcnn.cli import main
from rcnn.structures import Annotation


@pytest.fixture
def image_file(scene, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(path)
    return path


def test_an_image_file_gets_its_proposals_counted_and_drawn(image_file, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["proposals", str(image_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{image_file}: ") and "proposals (fast mode) in" in printed
    with Image.open(out / "scene_proposals.png") as picture:
        assert picture.size == (128, 96) and picture.mode == "RGB"
        # the drawing changed the image: boxes are on it
        assert not np.array_equal(np.asarray(picture), np.asarray(Image.open(image_file)))


def test_an_image_file_as_json(image_file, scene, capsys):
    assert main(["proposals", str(image_file), "--json", "--mode", "quality"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["width"], record["height"], record["mode"]) == (128, 96, "quality")
    boxes = torch.tensor(record["boxes"])
    assert boxes.shape[1] == 4 and len(boxes) > DRAWN_PROPOSALS
    assert (box_iou(torch.tensor(scene.objects), boxes).max(dim=1).values > 0.8).all()


def test_an_unreadable_image_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    assert main(["proposals", str(path)]) == 1
    error = capsys.readouterr().err
    assert (
        error.startswith(f"rcnn: error: {path}: not an image Pillow can read")
        and error.count("\n") == 1
    )


def test_recall_of_a_single_image_is_refused(image_file, capsys):
    assert main(["proposals", str(image_file), "--recall"]) == 1
    assert "--recall needs a data set" in capsys.readouterr().err


def test_drawn_boxes_end_on_their_last_pixel():
    picture = np.asarray(
        draw_proposals(
            torch.zeros(3, 10, 10, dtype=torch.uint8), torch.tensor([[2.0, 3.0, 8.0, 9.0]])
        )
    )
    lit = np.nonzero(picture.any(axis=2))
    assert (lit[1].min(), lit[0].min(), lit[1].max(), lit[0].max()) == (2, 3, 7, 8)


class FakeDataset:
    class_names = ("object",)

    def __init__(self, images, boxes):
        self.images, self.boxes = images, boxes

    def __len__(self):
        return len(self.images)

    def image_id(self, i):
        return f"{i:06d}"

    def load_image(self, i):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1)

    def annotation(self, i):
        g = len(self.boxes[i])
        return Annotation(
            self.boxes[i], torch.ones(g, dtype=torch.int64), torch.zeros(g, dtype=torch.bool)
        )


@pytest.fixture
def opened(make_scene, scene, monkeypatch):
    """open_dataset faked with two scenes of known objects; the list of (spec, split) opened."""
    dataset = FakeDataset([make_scene(0), make_scene(1)], [torch.tensor(scene.objects)] * 2)
    opened = []

    def open_dataset(spec, split):
        opened.append((spec, split))
        return dataset

    monkeypatch.setattr("rcnn.classic.proposals_command.open_dataset", open_dataset)
    return opened


def test_a_data_set_split_reports_recall_as_json(opened, capsys, tmp_path):
    argv = ["proposals", "shapes", "--recall", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert opened == [("shapes", "test")]
    assert list(summary) == [
        *("method", "mode", "images", "boxes_per_image", "seconds_per_image"),
        *("recall50", "recall70", "average_recall", "mabo"),
    ]
    assert summary["method"] == "selective-search" and summary["images"] == 2
    assert summary["recall50"] == 1.0 and summary["boxes_per_image"] > 10
    assert summary["seconds_per_image"] > 0
    assert list(tmp_path.glob("selective-search-fast-*/000001.npz"))  # cached in --out


def test_a_data_set_split_as_text(opened, capsys):
    assert main(["proposals", "voc:/data/VOC2007", "--split", "val", "--mode", "quality"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert opened == [("voc:/data/VOC2007", "val")]
    assert len(lines) == 1 and lines[0].startswith(
        "voc:/data/VOC2007 val: 2 images, quality mode, "
    )
    assert main(["proposals", "shapes", "--recall"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("recall50 1.000, recall70 ")
