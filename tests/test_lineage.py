import pytest

from rcnn.lineage import format_lineage


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
