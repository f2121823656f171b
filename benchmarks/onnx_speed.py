"""The exported Faster R-CNN against PyTorch's: file size, time per image, same detections.

Run: ``.venv/bin/python benchmarks/onnx_speed.py [BACKBONE]`` (default: small; needs the
``export`` extra). Builds the backbone's Faster R-CNN preset with random weights (20
classes), exports it with ``rcnn.export.export_onnx`` and times ``Detector`` and an
onnxruntime session, both on one thread, on a 375 x 500 image (a VOC image's size) resized
to the preset's test size: the median and the fastest of twenty runs, in process CPU
milliseconds (on a shared machine the fastest is the one to compare). Also says whether
the two give the same detections.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from rcnn.detector import Detector
from rcnn.export import export_onnx
from rcnn.models.build import build_model, preset

IMAGE_SIZE = (375, 500)
RUNS = 20


def cpu_ms(run: Callable[[], object]) -> tuple[float, float]:
    """(median, fastest) process CPU time of ``run`` in milliseconds, after one warm-up."""
    run()
    times = []
    for _ in range(RUNS):
        start = time.process_time()
        run()
        times.append((time.process_time() - start) * 1e3)
    return statistics.median(times), min(times)


def one_thread_session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(backbone: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = preset("faster-rcnn", backbone)
    model = build_model(config, 20, load_pretrained=False)
    detector = Detector(model, config, [f"class{k}" for k in range(1, 21)], model.pixel_stats)
    image = torch.randint(0, 256, (3, *IMAGE_SIZE), dtype=torch.uint8)
    feed = {"image": image.permute(1, 2, 0).contiguous().numpy()}  # (H, W, 3)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        size = export_onnx(detector, path)
        session = one_thread_session(path)
    test_size = config.input.test_size
    print(f"{backbone}: {size / 2**20:.2f} MiB; a {IMAGE_SIZE} image at test size {test_size}")
    with torch.no_grad():
        expected = detector(image)
        median, fastest = cpu_ms(lambda: detector(image))
    print(f"  PyTorch      {median:7.1f} ms median {fastest:7.1f} ms fastest")
    boxes, labels, _ = session.run(None, feed)
    median, fastest = cpu_ms(lambda: session.run(None, feed))
    print(f"  onnxruntime  {median:7.1f} ms median {fastest:7.1f} ms fastest")
    same = labels.tolist() == expected["labels"].tolist()
    gap = float(np.abs(boxes - expected["boxes"].numpy()).max(initial=0.0))
    print(
        f"  {len(labels)} detections, same labels and order: {same}, largest box gap {gap:.1e} px"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "small")
