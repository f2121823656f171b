"""Writing a trained Faster R-CNN as one ONNX file, and the ``rcnn export`` workflow.

The file holds the whole test-time path of ``rcnn.export.pipeline`` (resize, normalise, trunk,
RPN, proposal layer, RoI pooling, head, per-class NMS, top 100, back to the image's pixels)
and its weights: input "image" uint8 (height, width, 3) RGB of any size; outputs "boxes"
(detections, 4) float32 xyxy in that image's pixels, "labels" (detections,) int64 in [1, K]
and "scores" (detections,) float32, best first. Its metadata "class_names" (a JSON list)
names label k as class_names[k - 1].

It is made with PyTorch's torch.export-based exporter (the TorchScript one is deprecated since
PyTorch 2.9) at opset 18, with ``rcnn.export.onnx_ops`` for the custom ops.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from rcnn.detector import Detector, read_run_config
from rcnn.errors import RcnnError
from rcnn.files import atomic_write

OPSET = 18  # the opset of PyTorch's ONNX function library (onnxscript's torchlib)
INPUT = "image"
OUTPUTS = ("boxes", "labels", "scores")


def export_run(run_dir: Path, path: Path) -> int:
    """``rcnn export RUN --onnx FILE``: check the run and the path, export, say what was
    written; returns the file's size in bytes."""
    config, _ = read_run_config(run_dir)
    if config.model != "faster-rcnn":
        raise RcnnError(
            f"{run_dir}: a {config.model} run; only Faster R-CNN runs can be exported to ONNX "
            "(the other models take selective-search proposals, which are not a network)"
        )
    _check_writable(path)
    size = export_onnx(Detector.load(run_dir), path)
    print(
        f"wrote {path} ({size / 2**20:.1f} MiB): input {INPUT} uint8 (height, width, 3) RGB; "
        "outputs boxes (D, 4) float32 xyxy pixels, labels (D,) int64 in [1, K], "
        "scores (D,) float32; metadata class_names"
    )
    return size


def export_onnx(detector: Detector, path: str | os.PathLike) -> int:
    """Write ``detector``'s Faster R-CNN to ``path`` as ONNX; returns the file's size in bytes."""
    from rcnn.export.pipeline import DetectionPipeline

    pipeline = DetectionPipeline(detector).eval()
    example = torch.zeros((240, 320, 3), dtype=torch.uint8, device=detector.device)
    sizes = ({0: Dim("height", min=2), 1: Dim("width", min=2)},)
    model = to_onnx(pipeline, (example,), sizes, [INPUT], list(OUTPUTS))
    _name_dimensions(model.graph)
    entry = model.metadata_props.add()
    entry.key, entry.value = "class_names", json.dumps(detector.class_names)
    data = model.SerializeToString()
    try:
        atomic_write(path, lambda file: file.write(data))
    except OSError as error:
        raise RcnnError(f"{path}: cannot write the ONNX file ({error.strerror})") from error
    return len(data)


def to_onnx(
    module: nn.Module,
    args: tuple,
    dynamic_shapes: tuple,
    input_names: list[str],
    output_names: list[str],
):
    """``module`` in eval mode -> an ``onnx.ModelProto``: torch.export (``dynamic_shapes`` as
    it takes them), then the ONNX exporter with the translations of ``rcnn.export.onnx_ops``."""
    try:
        from rcnn.export.onnx_ops import translation_table
    except ImportError as error:
        raise RcnnError(
            f"ONNX export needs the export extra ({error.name} is missing): "
            "pip install 'rcnn[export]'"
        ) from error
    with torch.no_grad(), _quiet_exporter():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        exported = torch.onnx.export(
            program,
            args,
            input_names=input_names,
            output_names=output_names,
            opset_version=OPSET,
            custom_translation_table=translation_table(),
            external_data=False,
            verbose=False,
        )
    return exported.model_proto


def _name_dimensions(graph) -> None:
    """Name the sizes known only at run time: the image's height and width, the detections."""
    height, width, _ = graph.input[0].type.tensor_type.shape.dim
    height.dim_param, width.dim_param = "height", "width"
    for output in graph.output:
        output.type.tensor_type.shape.dim[0].dim_param = "detections"


def _check_writable(path: Path) -> None:
    """Fail before the export, not after it, when ``path`` cannot be written."""
    if path.is_dir():
        raise RcnnError(f"{path}: is a directory; give the ONNX file's name")
    try:
        handle, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise RcnnError(f"{path}: cannot write the ONNX file ({error.strerror})") from error


@contextmanager
def _quiet_exporter():
    """Silence the exporter's notes about torchvision, which this package does not use, and
    the deprecation warning of a pytree API that torch 2.13's exporter itself still calls."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
            )
            yield
    finally:
        logger.setLevel(level)
