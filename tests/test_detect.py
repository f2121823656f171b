"""``rcnn detect`` on a folder and on a COCO data set, writing COCO results JSON."""

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rcnn import checkpoint
from rcnn.cli import main
from rcnn.data.images import decode_image
from rcnn.detector import WEIGHTS, Detector, write_run_config
from rcnn.errors import RcnnError
from rcnn.models.build import build_model, preset
from rcnn.runs import detect_inputs, listing_path

CLASSES = ["ring", "bar"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An untrained small Faster R-CNN of two classes: with scores near 1/3 it reports plenty
    of boxes, which is all these tests need."""
    run = tmp_path_factory.mktemp("run")
    config = preset("faster-rcnn", "small")
    write_run_config(run, config, CLASSES, "shapes")
    torch.manual_seed(0)
    checkpoint.save_model(run / WEIGHTS, build_model(config, len(CLASSES)))
    return run


def write_image(path, size, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def quietly(function, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def xywh(boxes):
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes.tolist()]


def test_a_coco_data_set_gets_its_own_ids_and_pycocotools_takes_the_results(tmp_path, run_dir):
    ids = {17: "b.png", 42: "a.png"}  # neither contiguous nor in file order
    images = []
    for seed, (image_id, name) in enumerate(ids.items()):
        write_image(tmp_path / name, (60, 90), seed)
        images.append({"id": image_id, "file_name": name, "height": 60, "width": 90})
    box = {"bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0}
    annotations = [{"id": 1, "image_id": 17, "category_id": 7, **box}]
    categories = [{"id": 7, "name": "bar"}, {"id": 3, "name": "ring"}]  # label 1 is id 3
    annotation_file = tmp_path / "instances.json"
    content = {"images": images, "annotations": annotations, "categories": categories}
    annotation_file.write_text(json.dumps(content))
    out = tmp_path / "results.json"
    quietly(detect_inputs, run_dir, [f"coco:{annotation_file}"], None, None, 0.5, False, out)

    results = json.loads(out.read_text())
    expected = Detector.load(run_dir).detect([decode_image(str(tmp_path / "b.png"))])[0]
    mine = [r for r in results if r["image_id"] == 17]
    assert len(mine) == len(expected) > 0  # every detection, not only those above 0.5
    assert [r["category_id"] for r in mine] == [{1: 3, 2: 7}[k] for k in expected.labels.tolist()]
    assert np.allclose([r["bbox"] for r in mine], xywh(expected.boxes), atol=1e-4)
    assert {r["image_id"] for r in results} <= set(ids)
    ground_truth = quietly(COCO, str(annotation_file))
    cocoeval = COCOeval(ground_truth, quietly(ground_truth.loadRes, str(out)), iouType="bbox")
    quietly(cocoeval.evaluate)
    quietly(cocoeval.accumulate)
    assert not listing_path(out).exists()  # the data set's own file lists the ids


def test_a_folder_is_detected_in_sorted_order_with_its_ids_listed(tmp_path, run_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, name in enumerate(["c.png", "a.jpg", "B.PNG"]):
        write_image(folder / name, (50 + 10 * seed, 70), seed)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "results.json"
    assert main(["detect", str(run_dir), str(folder), "--coco-json", str(out), "--json"]) == 0

    listing = json.loads(listing_path(out).read_text())
    names = [image["file_name"] for image in listing["images"]]
    assert names == [str((folder / n).resolve()) for n in ["B.PNG", "a.jpg", "c.png"]]
    assert [(i["id"], i["height"]) for i in listing["images"]] == [(1, 70), (2, 60), (3, 50)]
    assert listing["categories"] == [{"id": 1, "name": "ring"}, {"id": 2, "name": "bar"}]
    listed = quietly(COCO, str(listing_path(out)))
    found = quietly(listed.loadRes, str(out))
    assert {a["image_id"] for a in found.dataset["annotations"]} == {1, 2, 3}


def test_a_folder_without_images_is_refused(tmp_path, run_dir):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(RcnnError, match="no image files in this folder"):
        detect_inputs(run_dir, [str(tmp_path)], None, None, 0.5, False, tmp_path / "r.json")


def test_the_one_line_api_takes_paths_arrays_and_tensors_alike(tmp_path, run_dir):
    from rcnn import Detector as PublicDetector

    assert PublicDetector is Detector
    write_image(tmp_path / "a.png", (60, 90), 3)
    detector = PublicDetector.load(run_dir)
    found = detector(tmp_path / "a.png")
    array = np.asarray(Image.open(tmp_path / "a.png"))
    same = detector(array)
    expected = detector.detect([decode_image(str(tmp_path / "a.png"))])[0]
    assert len(found["boxes"]) == len(expected) > 0
    assert torch.equal(found["boxes"], same["boxes"]) and torch.equal(
        found["boxes"], expected.boxes
    )
    assert found["class_names"] == [CLASSES[k - 1] for k in expected.labels.tolist()]
    with pytest.raises(RcnnError, match="uint8"):
        detector(array.astype(np.float32))


def test_flip_testing_toggles_on_a_run_and_only_where_the_model_has_it(tmp_path, run_dir, capsys):
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    detector = Detector.load(run_dir)
    plain = detector.detect([image])[0]
    detector.set_flip_testing(True)
    assert detector.model.config.detection.flip
    assert not torch.equal(detector.detect([image])[0].scores, plain.scores)
    rcnn_run = tmp_path / "rcnn"
    rcnn_run.mkdir()
    config = preset("rcnn", "small")
    write_run_config(rcnn_run, config, CLASSES, "shapes")
    checkpoint.save_model(rcnn_run / WEIGHTS, build_model(config, len(CLASSES)))
    write_image(tmp_path / "a.png", (60, 90), 0)
    assert main(["detect", str(rcnn_run), str(tmp_path / "a.png"), "--flip"]) == 1
    error = capsys.readouterr().err
    assert f"{rcnn_run}: flip testing is for fast-rcnn and faster-rcnn runs, not rcnn" in error


def test_a_run_trained_channels_last_detects_channels_last_and_finds_the_same(tmp_path, run_dir):
    nhwc_run = tmp_path / "nhwc"
    nhwc_run.mkdir()
    config = preset("faster-rcnn", "small")
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, channels_last=True)
    )
    write_run_config(nhwc_run, config, CLASSES, "shapes")
    (nhwc_run / WEIGHTS).write_bytes((run_dir / WEIGHTS).read_bytes())
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    plain, nhwc = Detector.load(run_dir), Detector.load(nhwc_run)
    layouts = []
    conv = nhwc.model.trunk.conv1.conv
    conv.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    found, expected = nhwc.detect([image])[0], plain.detect([image])[0]
    assert layouts == [True] and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(found) == len(expected) > 0
    torch.testing.assert_close(found.scores, expected.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(found.boxes, expected.boxes, atol=1e-3, rtol=0)
