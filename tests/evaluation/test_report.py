import json
import math

import pytest
import torch
from PIL import Image

from rcnn.errors import RcnnError
from rcnn.evaluation.report import (
    evaluate_detections,
    format_table,
    plot_pr_curves,
    write_metrics,
)
from rcnn.files import write_json
from rcnn.structures import Annotation, Detections

NAMES = ["circle", "square", "triangle"]  # no triangle in the ground truth
ANNOTATIONS = [
    Annotation(
        torch.tensor([[0.0, 0, 40, 40], [50, 50, 90, 90]]),
        torch.tensor([1, 2]),
        torch.tensor([False, False]),
    ),
    Annotation(torch.tensor([[10.0, 10, 60, 60]]), torch.tensor([1]), torch.tensor([False])),
]
# circle: both found; square: a false positive outscores the hit (AP 0.5); a stray triangle
FOUND = [
    Detections(
        torch.tensor([[0.0, 0, 40, 40], [50, 50, 90, 90], [0, 50, 40, 90], [60, 0, 90, 30]]),
        torch.tensor([0.9, 0.6, 0.8, 0.4]),
        torch.tensor([1, 2, 2, 3]),
    ),
    Detections(torch.tensor([[10.0, 10, 60, 60]]), torch.tensor([0.7]), torch.tensor([1])),
]
SIZES = [(100, 100), (100, 100)]


@pytest.fixture(scope="module")
def evaluation():
    return evaluate_detections(FOUND, ANNOTATIONS, NAMES, SIZES, seconds_per_image=0.25)


def test_metrics_hold_the_design_keys_and_values(evaluation):
    metrics = evaluation.metrics
    required = {"map50", "map50_voc07", "coco_map", "per_class", "images", "seconds_per_image"}
    assert required <= set(metrics)
    assert {"coco_ap50", "coco_ap75", "coco_ap_small", "coco_ap_medium", "coco_ap_large"} <= set(
        metrics
    )
    assert metrics["per_class"] == {"circle": 1.0, "square": 0.5, "triangle": None}
    assert metrics["per_class_voc07"] == {"circle": 1.0, "square": 0.5, "triangle": None}
    assert metrics["gt_per_class"] == {"circle": 2, "square": 1, "triangle": 0}
    assert metrics["map50"] == pytest.approx(0.75)  # triangle left out of the mean
    assert metrics["map50_voc07"] == pytest.approx(0.75)
    assert 0.0 < metrics["coco_map"] <= 1.0
    assert metrics["images"] == 2 and metrics["seconds_per_image"] == 0.25
    assert evaluation.voc.ap[1].item() == 0.5


def test_metrics_json_round_trip(evaluation, tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    write_metrics(path, evaluation.metrics)
    assert json.loads(path.read_text()) == evaluation.metrics
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_atomic_write_refuses_nan_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"map50": 0.5})
    with pytest.raises(ValueError):
        write_json(path, {"map50": math.nan})
    assert json.loads(path.read_text()) == {"map50": 0.5}
    assert len(list(tmp_path.iterdir())) == 1


def test_table_lists_every_class_aligned(evaluation):
    lines = format_table(evaluation.metrics).splitlines()
    header, rows = lines[0], lines[1:4]
    assert header.split() == ["class", "GT", "AP50", "AP50", "VOC07"]
    assert rows[0].split() == ["circle", "2", "1.000", "1.000"]
    assert rows[1].split() == ["square", "1", "0.500", "0.500"]
    assert rows[2].startswith("triangle") and "no ground truth" in rows[2]
    # every value ends where its column's header ends
    ends = [header.index("GT") + 2, header.index("AP50") + 4, len(header)]
    for row in (*rows, lines[4]):
        values = row[: len(header)].split()[1:]
        assert [
            row[end - len(v) : end] for end, v in zip(ends[-len(values) :], values, strict=True)
        ] == values
    assert lines[4].split() == ["mean", "0.750", "0.750"]
    assert lines[5].startswith("COCO  AP ")
    assert lines[6] == "2 images, 0.2500 s/image"


def test_pr_curves_png(evaluation, tmp_path):
    path = tmp_path / "pr_curves.png"
    plot_pr_curves(evaluation.voc, NAMES, path)
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.width > 300 and picture.height > 200


def test_class_names_must_be_distinct():
    with pytest.raises(RcnnError, match="distinct"):
        evaluate_detections(FOUND, ANNOTATIONS, ["a", "a", "b"], SIZES, 0.0)
