import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rcnn.bench import Timing, print_table, time_ms
from rcnn.bench.ops import IMAGE_SIZE, rpn_like_boxes, uniform_boxes


def test_rpn_like_boxes_are_deterministic_valid_and_clustered():
    boxes, scores = rpn_like_boxes(1000)
    again, _ = rpn_like_boxes(1000)
    assert torch.equal(boxes, again)
    assert boxes.shape == (1000, 4) and scores.shape == (1000,)
    height, width = IMAGE_SIZE
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all()
    # the boxes near objects (the first 4/5) outscore the clutter
    assert scores[:800].min() >= scores[800:].max()
    assert not torch.equal(uniform_boxes(10, seed=1)[0], uniform_boxes(10, seed=2)[0])


def test_time_ms_runs_warmup_and_repeats():
    calls = []
    assert time_ms(lambda: calls.append(1), warmup=2, repeats=3) >= 0
    assert len(calls) == 5


def test_print_table_aligns_one_row_per_timing():
    out = io.StringIO()
    rows = [Timing("nms", "12000 boxes", 56.54, "<= ~100"), Timing("box_iou", "2 x 3", 1.0)]
    print_table("rcnn bench ops", rows, file=out)
    lines = out.getvalue().splitlines()
    assert f"{torch.get_num_threads()} threads" in lines[0]
    assert lines[1].split() == ["op", "input", "sizes", "ms", "target"]
    assert lines[3].split() == ["nms", "12000", "boxes", "56.5", "<=", "~100"]
    assert lines[4].split() == ["box_iou", "2", "x", "3", "1.0"]
    # the ms column is right-aligned under its header
    ends = {lines[1].index(" ms") + 3, lines[3].index("56.5") + 4, lines[4].index("1.0") + 3}
    assert len(ends) == 1


def test_bench_model_times_the_detector_beside_its_trunk():
    from rcnn.bench.models import bench_model, shapes_sample
    from rcnn.models.build import preset

    sample = shapes_sample(preset("faster-rcnn", "small"), (64, 96))
    assert tuple(sample.image.shape) == (3, 64, 96)  # a shapes image filled to the stated size
    assert (sample.annotation.boxes[:, 2] <= 96).all() and (
        sample.annotation.boxes[:, 3] <= 64
    ).all()
    rows = bench_model("faster-rcnn", "small", (64, 96), (16, 8))
    assert [row.name.strip() for row in rows] == [
        "faster-rcnn/small inference",
        "small trunk alone",
        "faster-rcnn/small training step",
        "small trunk alone, fwd+bwd",
        "faster-rcnn/small inference, fc6/fc7 SVD 16,8",
    ]
    assert all(row.ms > 0 and row.sizes == "1 x 64x96" for row in rows)
    # each detector row against its trunk alone: inference, training, compressed inference
    for detector, trunk in ((0, 1), (2, 3), (4, 1)):
        overhead = 100 * (rows[detector].ms - rows[trunk].ms) / rows[trunk].ms
        assert rows[detector].target == f"overhead {overhead:.0f}% (< 15%)"
    assert len(bench_model("faster-rcnn", "small", (64, 96), None)) == 4


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc")
def test_peak_memory_sees_an_allocation_in_a_child_process():
    from rcnn.bench.models import _PeakMemory

    hold_300_mib = (
        "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * (300 * 256); time.sleep(0.5)"
    )
    with _PeakMemory() as peak:
        before = peak.mb
        child = subprocess.run([sys.executable, "-c", hold_300_mib], timeout=60)
    assert child.returncode == 0
    assert peak.mb > before + 250  # the child's 300 MiB, touched so that they are resident
