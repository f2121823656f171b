import json

import pytest

from rcnn.cli import main
from rcnn.lineage import MODELS, format_lineage


def test_lineage_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "lineage"
    args = ["lineage", "--data", "shapes:train=4,test=2", "--out", str(out)]
    assert main([*args, "--time-budget", "0.05", "--models", *MODELS]) == 0
    results = json.loads((out / "lineage.json").read_text())
    assert list(results) == list(MODELS)
    for model, row in results.items():
        assert 0.0 <= row["map50"] <= 1.0, model
        assert row["train_seconds"] > 0.0 and row["test_seconds_per_image"] > 0.0
        assert row["proposals_per_image"] > 0
        # only the models fed by selective search spend time on proposals outside the network
        assert (row["proposal_seconds_per_image"] > 0) == (model != "faster-rcnn")
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 1 + 4 * 2  # the chart, 2 images x 4
    assert (out / "lineage.png").read_bytes().startswith(b"\x89PNG")
    assert "| Faster R-CNN |" in (out / "lineage.md").read_text()
    assert "| R-CNN |" in capsys.readouterr().out


def test_lineage_table_marks_undefined_accuracy():
    row = {
        "map50": None,
        "train_seconds": 12.0,
        "test_seconds_per_image": 0.5,
        "proposal_seconds_per_image": 0.4,
        "proposals_per_image": 1800.0,
    }
    table = format_lineage({"rcnn": row})
    assert table.splitlines()[2] == "| R-CNN | n/a | 12 | 0.500 | 0.400 | 1800 |"


def test_lineage_needs_a_split_to_test_on(tmp_path):
    from rcnn.errors import RcnnError
    from rcnn.lineage import run_lineage

    with pytest.raises(RcnnError, match="test or val split"):
        run_lineage(f"voc:{tmp_path}", tmp_path / "out")
