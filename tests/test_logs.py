import csv
import dataclasses
import json
import sys
import types

import pytest

from rcnn.data.shapes import ShapesDataset
from rcnn.data.voc import export_voc
from rcnn.logs import CSV, LOG, RunLog
from rcnn.runs import resolve_config, train_run

RECORDS = [
    {"stage": "rpn", "epoch": 0, "step": 10, "rpn_cls": 0.5, "seconds": 1.0},
    {"stage": "rpn", "epoch": 0, "step": 20, "rpn_cls": 0.25, "seconds": 2.0},
    {"stage": "rpn", "epoch": 1, "step": 20, "map50": 0.125, "seconds": 2.5},
    {"stage": "detector", "epoch": 0, "step": 10, "rpn_cls": 0.75, "seconds": 3.0},
]


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


@pytest.fixture
def no_tensorboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails


def test_csv_holds_the_jsonl_records_under_one_header_across_a_resume(tmp_path, no_tensorboard):
    log = RunLog(tmp_path)
    for record in RECORDS[:3]:  # the third brings a new column: the file is rewritten
        log.write(record)
    RunLog(tmp_path).write(RECORDS[3])  # a resumed run appends under the same header
    rows = read_csv(tmp_path / CSV)
    assert rows[0] == ["stage", "epoch", "step", "rpn_cls", "seconds", "map50"]
    assert rows[1:] == [[str(r.get(c, "")) for c in rows[0]] for r in RECORDS]
    lines = (tmp_path / LOG).read_text().splitlines()
    assert [json.loads(line) for line in lines] == RECORDS
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_gets_every_number_as_a_scalar_when_installed(tmp_path, monkeypatch):
    scalars = []

    class SummaryWriter:
        def __init__(self, log_dir):
            assert log_dir == str(tmp_path / "tensorboard")

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

    fake = types.SimpleNamespace(SummaryWriter=SummaryWriter)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    log = RunLog(tmp_path)
    for record in RECORDS[1:3]:
        log.write(record)
    assert scalars == [
        ("rpn/rpn_cls", 0.25, 20),
        ("rpn/seconds", 2.0, 20),
        ("rpn/map50", 0.125, 20),
        ("rpn/seconds", 2.5, 20),
    ]


def test_a_run_evaluated_during_training_logs_and_plots_its_map(tmp_path, no_tensorboard):
    data = tmp_path / "data"
    export_voc(ShapesDataset("train", 4), data)
    export_voc(ShapesDataset("test", 2), data)
    config = resolve_config(
        "faster-rcnn",
        "small",
        None,
        ["input.min_sizes=[128]", "input.max_size=160", "input.test_size=128"],
        epochs=2,
    )
    train = dataclasses.replace(config.train, eval_every=1, workers=0, images_per_batch=2)
    metrics = train_run(dataclasses.replace(config, train=train), f"voc:{data}", tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / LOG).read_text().splitlines()]
    evaluations = [(r["epoch"], r["map50"]) for r in records if "map50" in r]
    assert [epoch for epoch, _ in evaluations] == [1, 2]
    assert evaluations[-1][1] == pytest.approx(metrics["map50"])  # the final model's, again
    assert len(read_csv(tmp_path / "run" / CSV)) == 1 + len(records)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
