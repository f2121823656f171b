import contextlib
import io
import json
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn.errors import RcnnError
from rcnn.evaluation.coco import (
    STAT_NAMES,
    coco_ground_truth,
    coco_results,
    evaluate_coco,
    write_coco_results,
)
from rcnn.structures import Annotation, Detections

NAMES = ["cat", "dog"]

# Two images of 200 x 300 (H x W). Boxes of each COCO size: small (< 32^2), medium, large.
GT = [
    Annotation(
        torch.tensor([[10.0, 10, 30, 30], [50, 40, 110, 100], [0, 0, 150, 120]]),
        torch.tensor([1, 2, 1]),
        torch.tensor([False, False, False]),
    ),
    Annotation(
        torch.tensor([[100.0, 50, 160, 130], [5, 5, 60, 60]]),
        torch.tensor([2, 2]),
        torch.tensor([False, True]),  # difficult -> iscrowd
    ),
]
FOUND = [
    Detections(
        torch.tensor(
            [[11.0, 10, 30, 31], [52, 45, 110, 98], [0, 0, 140, 110], [200, 100, 250, 150]]
        ),
        torch.tensor([0.9, 0.8, 0.75, 0.6]),
        torch.tensor([1, 2, 1, 2]),
    ),
    Detections(
        torch.tensor([[101.0, 52, 158, 131], [6, 6, 58, 59], [100, 50, 160, 130]]),
        torch.tensor([0.95, 0.7, 0.3]),
        torch.tensor([2, 2, 1]),
    ),
]
SIZES = [(200, 300), (200, 300)]


def coco_object(id_, image_id, category_id, bbox, area, iscrowd):
    return dict(
        id=id_, image_id=image_id, category_id=category_id, bbox=bbox, area=area, iscrowd=iscrowd
    )


def test_equals_pycocotools_run_directly_on_hand_written_dictionaries():
    # the same scene written out by hand in COCO's own format: bbox = [x, y, w, h]
    dataset = {
        "images": [{"id": 0, "height": 200, "width": 300}, {"id": 1, "height": 200, "width": 300}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            # id, image, category, [x, y, w, h], area, iscrowd
            coco_object(1, 0, 1, [10, 10, 20, 20], 400, 0),
            coco_object(2, 0, 2, [50, 40, 60, 60], 3600, 0),
            coco_object(3, 0, 1, [0, 0, 150, 120], 18000, 0),
            coco_object(4, 1, 2, [100, 50, 60, 80], 4800, 0),
            coco_object(5, 1, 2, [5, 5, 55, 55], 3025, 1),
        ],
    }
    results = [
        {"image_id": 0, "category_id": 1, "bbox": [11, 10, 19, 21], "score": 0.9},
        {"image_id": 0, "category_id": 2, "bbox": [52, 45, 58, 53], "score": 0.8},
        {"image_id": 0, "category_id": 1, "bbox": [0, 0, 140, 110], "score": 0.75},
        {"image_id": 0, "category_id": 2, "bbox": [200, 100, 50, 50], "score": 0.6},
        {"image_id": 1, "category_id": 2, "bbox": [101, 52, 57, 79], "score": 0.95},
        {"image_id": 1, "category_id": 2, "bbox": [6, 6, 52, 53], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [100, 50, 60, 80], "score": 0.3},
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        direct = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    ours = evaluate_coco(FOUND, GT, SIZES, NAMES)
    for name, expected in zip(STAT_NAMES, direct.stats, strict=True):
        assert ours[name] == pytest.approx(expected, abs=1e-6), name
    assert 0.0 < ours["ap"] < 1.0  # a case that tests something


def test_ground_truth_dictionary_matches_the_convention():
    dataset = coco_ground_truth(GT, SIZES, NAMES, image_ids=[7, 9], category_ids=[17, 18])
    assert dataset["images"][1] == {"id": 9, "height": 200, "width": 300}
    assert dataset["categories"] == [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    last = dataset["annotations"][-1]
    assert last == {
        "id": 5,
        "image_id": 9,
        "category_id": 18,
        "bbox": [5.0, 5.0, 55.0, 55.0],
        "area": 3025.0,
        "iscrowd": 1,
    }


def test_perfect_detections_score_one():
    perfect = [Detections(a.boxes, torch.ones(len(a)), a.labels) for a in GT]
    result = evaluate_coco(perfect, GT, SIZES, NAMES)
    for name in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar100"):
        assert result[name] == pytest.approx(1.0), name


def test_no_detections_score_zero_and_undefined_sizes_are_nan():
    nothing = [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))] * 2
    result = evaluate_coco(nothing, GT, SIZES, NAMES)
    assert result["ap"] == 0.0 and result["ar100"] == 0.0
    # without a small box anywhere, COCOeval reports -1 for AP small: NaN here
    large_only = [GT[1], GT[1]]
    assert math.isnan(evaluate_coco(nothing, large_only, SIZES, NAMES)["ap_small"])


def test_pycocotools_prints_nothing_and_the_summary_is_kept(capsys):
    result = evaluate_coco(FOUND, GT, SIZES, NAMES)
    assert capsys.readouterr().out == ""
    assert result.summary.count("Average Precision") == 6
    assert "creating index" not in result.summary


def test_results_format_and_id_mappings():
    rows = coco_results(FOUND, image_ids=[42, 43], category_ids=[17, 18])
    assert len(rows) == 7
    assert sorted(rows[0]) == ["bbox", "category_id", "image_id", "score"]
    assert (rows[0]["image_id"], rows[0]["category_id"]) == (42, 17)
    assert rows[0]["bbox"] == [11.0, 10.0, 19.0, 21.0]  # x, y, w, h
    assert rows[0]["score"] == pytest.approx(0.9)
    assert rows[-1]["image_id"] == 43 and rows[-1]["category_id"] == 17
    assert coco_results(FOUND)[-1]["image_id"] == 1  # default: position in the list


def test_results_file_round_trip_is_accepted_by_pycocotools(tmp_path):
    path = tmp_path / "results.json"
    write_coco_results(path, FOUND)
    assert json.loads(path.read_text()) == coco_results(FOUND)
    truth = COCO()
    truth.dataset = coco_ground_truth(GT, SIZES, NAMES)
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        loaded = truth.loadRes(str(path))
    assert len(loaded.getAnnIds()) == 7


def test_mismatched_inputs_are_reported():
    with pytest.raises(RcnnError, match="Detections for 2 images"):
        evaluate_coco(FOUND[:1], GT, SIZES, NAMES)
    with pytest.raises(RcnnError, match="1 image sizes for 2 images"):
        evaluate_coco(FOUND, GT, SIZES[:1], NAMES)
    with pytest.raises(RcnnError, match="3 category ids for 2 classes"):
        coco_ground_truth(GT, SIZES, NAMES, category_ids=[1, 2, 3])
