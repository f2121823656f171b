import shutil
from collections import namedtuple

import pytest

from rcnn import runs
from rcnn.cli import main
from rcnn.errors import RcnnError
from rcnn.runs import prepare_run_dir


def test_an_unwritable_run_directory_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "file" / "run"
    with pytest.raises(RcnnError, match=r"file/run: cannot write the run directory"):
        prepare_run_dir(out, resume=False)
    # the command line says so in one line, before any data set is opened or model built
    assert main(["train", "--model", "faster-rcnn", "--data", "nowhere:x", "--out", str(out)]) == 1
    assert "cannot write the run directory" in capsys.readouterr().err


def test_a_full_disk_fails_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 1 << 40, 1 << 20))
    with pytest.raises(RcnnError, match="less than 1 GiB of free disk"):
        prepare_run_dir(tmp_path / "run", resume=False)
    monkeypatch.setattr(runs, "MIN_FREE_BYTES", 1 << 19)
    prepare_run_dir(tmp_path / "run", resume=False)
    assert (tmp_path / "run").is_dir() and not any((tmp_path / "run").iterdir())


def test_resume_needs_a_checkpoint_and_a_new_run_an_empty_place(tmp_path):
    with pytest.raises(RcnnError, match="nothing to resume"):
        prepare_run_dir(tmp_path, resume=True)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(RcnnError, match="a run is already there; use --resume"):
        prepare_run_dir(tmp_path, resume=False)
