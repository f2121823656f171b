"""``rcnn export RUN --onnx FILE``: a small Faster R-CNN written as ONNX and run in onnxruntime
gives Detector's detections, on images of several sizes and on an image with none."""

import contextlib
import copy
import io
import json
import sys

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rcnn.cli import main
from rcnn.data.transforms import TrainTransform
from rcnn.detector import Detector, write_run_config
from rcnn.errors import RcnnError
from rcnn.export import export_onnx
from rcnn.export.pipeline import DetectionPipeline
from rcnn.models.build import InputConfig, RunConfig
from rcnn.models.faster_rcnn import FasterRCNN
from tests.test_faster_rcnn import CONFIG, batch_of, scene, train_steps
from tests.tiny import tiny_backbone

CLASSES = ["rectangle", "cross"]
RUN = RunConfig(
    backbone="small", input=InputConfig(test_size=128, max_size=256), faster_rcnn=CONFIG
)
OBJECTS = [([20, 30, 70, 90], 1), ([90, 20, 140, 70], 2)]
SCENE = scene(OBJECTS)  # (3, 128, 160)
# the objects on a wider background: the longer side capped at the maximum size (x 0.853)
CAPPED = scene(OBJECTS, size=(110, 300))


@pytest.fixture(scope="module")
def detector() -> Detector:
    """The tiny backbone, a BatchNorm2d put in its head (as in a ResNet's), trained on SCENE,
    on its background alone and on CAPPED as the detector sees it, until it finds the objects
    and nothing on a blank image. (Trained on SCENE alone, whether it found anything on CAPPED
    depended on the CPU: float rounding differs between AVX2 and AVX-512 kernels.)"""
    torch.manual_seed(0)
    backbone = tiny_backbone()
    backbone.head = nn.Sequential(nn.BatchNorm2d(32), *backbone.head)
    model = FasterRCNN(backbone, len(CLASSES), CONFIG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights however many threads the tests run with
    try:
        capped = TrainTransform((RUN.input.test_size,), RUN.input.max_size, 0.0)(CAPPED)
        train_steps(model, batch_of(model, [SCENE, scene([]), capped]), 200)
    finally:
        torch.set_num_threads(threads)
    return Detector(model, RUN, CLASSES, model.pixel_stats)


@pytest.fixture(scope="module")
def exported(detector, tmp_path_factory):
    """The detector, exported by ``rcnn export`` from a run directory -> (detector, the
    onnxruntime session, what the command printed)."""
    run_dir = tmp_path_factory.mktemp("run")
    write_run_config(run_dir, RUN, CLASSES, "shapes")
    path = run_dir / "model.onnx"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(Detector, "load", lambda run: detector)  # its weights: the tiny net's
        assert main(["export", str(run_dir), "--onnx", str(path)]) == 0
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return detector, session, out.getvalue()


def resized_scene(size):
    """SCENE drawn at another size, (3, H, W) uint8."""
    return F.interpolate(SCENE.image[None].float(), size=size, mode="bilinear")[0].round().byte()


def run_onnx(session, image):
    """uint8 (3, H, W) -> onnxruntime's boxes, labels, scores."""
    return session.run(None, {"image": image.permute(1, 2, 0).contiguous().numpy()})


def test_the_file_takes_an_image_and_gives_detections(exported):
    _, session, printed = exported
    assert "model.onnx" in printed and "MiB" in printed
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape) == (
        "image",
        "tensor(uint8)",
        ["height", "width", 3],
    )
    outputs = [(o.name, o.type, o.shape) for o in session.get_outputs()]
    assert outputs == [
        ("boxes", "tensor(float)", ["detections", 4]),
        ("labels", "tensor(int64)", ["detections"]),
        ("scores", "tensor(float)", ["detections"]),
    ]
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == CLASSES


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(SCENE.image, id="at-the-test-size"),  # not resized
        pytest.param(resized_scene((100, 130)), id="enlarged"),
        pytest.param(resized_scene((200, 250)), id="shrunk"),  # antialiased
        # the objects on a wider background: the longer side capped at the maximum size
        pytest.param(scene(OBJECTS, size=(110, 300)).image, id="capped"),
    ],
)
def test_detections_equal_pytorchs(exported, image):
    detector, session, _ = exported
    expected = detector(image)
    assert len(expected["labels"]) > 0, "the test needs an image with detections"
    boxes, labels, scores = run_onnx(session, image)
    assert labels.tolist() == expected["labels"].tolist()  # the same detections, same order
    np.testing.assert_allclose(boxes, expected["boxes"].numpy(), rtol=0, atol=1e-3)
    np.testing.assert_allclose(scores, expected["scores"].numpy(), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def exported_with_flip(detector, tmp_path_factory):
    """The same detector with flip testing on, exported -> (it, the onnxruntime session)."""
    flipping = Detector(copy.deepcopy(detector.model), RUN, CLASSES, detector.pixel_stats)
    flipping.set_flip_testing(True)
    path = tmp_path_factory.mktemp("flip") / "model.onnx"
    export_onnx(flipping, path)
    return flipping, onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("image", [SCENE.image, CAPPED.image], ids=["at-the-test-size", "capped"])
def test_flip_testing_is_exported_too(exported_with_flip, detector, image):
    flipping, session = exported_with_flip
    expected = flipping(image)
    assert len(expected["labels"]) > 0, "the test needs an image with detections"
    assert not torch.equal(expected["scores"], detector(image)["scores"])  # two views averaged
    boxes, labels, scores = run_onnx(session, image)
    assert labels.tolist() == expected["labels"].tolist()
    np.testing.assert_allclose(boxes, expected["boxes"].numpy(), rtol=0, atol=1e-3)
    np.testing.assert_allclose(scores, expected["scores"].numpy(), rtol=0, atol=1e-5)


def test_an_image_without_detections(exported):
    detector, session, _ = exported
    blank = torch.full((3, 150, 170), 30, dtype=torch.uint8)  # SCENE's background alone
    assert len(detector(blank)["labels"]) == 0, "the test needs an image without detections"
    boxes, labels, scores = run_onnx(session, blank)
    assert (boxes.shape, labels.shape, scores.shape) == ((0, 4), (0,), (0,))
    assert (boxes.dtype, labels.dtype, scores.dtype) == (np.float32, np.int64, np.float32)


def test_the_pipeline_runs_what_the_detector_runs(detector):
    image = resized_scene((90, 120))
    boxes, labels, scores = DetectionPipeline(detector)(image.permute(1, 2, 0))
    expected = detector(image)
    assert len(labels) > 0 and torch.equal(labels, expected["labels"])
    # BatchNorm2d, frozen: the same map up to float32 rounding
    torch.testing.assert_close(scores, expected["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(boxes, expected["boxes"], rtol=0, atol=1e-4)


def export_command(capsys, *args) -> tuple[int, str]:
    code = main(["export", *map(str, args)])
    return code, capsys.readouterr().err


def test_a_missing_run(tmp_path, capsys):
    code, err = export_command(capsys, tmp_path / "nowhere", "--onnx", tmp_path / "m.onnx")
    assert code == 1 and "not a run directory" in err


def test_a_run_of_another_model(tmp_path, capsys):
    write_run_config(tmp_path, RunConfig(model="fast-rcnn", backbone="small"), CLASSES, "shapes")
    code, err = export_command(capsys, tmp_path, "--onnx", tmp_path / "m.onnx")
    assert code == 1 and "only Faster R-CNN" in err and "fast-rcnn" in err


@pytest.mark.parametrize(
    ("where", "problem"), [("missing/m.onnx", "cannot write"), (".", "is a directory")]
)
def test_a_path_that_cannot_be_written(tmp_path, capsys, where, problem):
    write_run_config(tmp_path, RUN, CLASSES, "shapes")  # no weights: checked before loading
    code, err = export_command(capsys, tmp_path, "--onnx", tmp_path / where)
    assert code == 1 and problem in err
    assert not (tmp_path / "missing").exists()


def test_without_the_export_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    monkeypatch.delitem(sys.modules, "rcnn.export.onnx_ops", raising=False)
    detector = Detector(FasterRCNN(tiny_backbone(), 2, CONFIG), RUN, CLASSES, (0, 1))
    with pytest.raises(RcnnError, match=r"pip install 'rcnn\[export\]'"):
        export_onnx(detector, tmp_path / "m.onnx")
