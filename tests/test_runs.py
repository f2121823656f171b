import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rcnn import runs
from rcnn.cli import main
from rcnn.errors import BadSampleError, RcnnError
from rcnn.runs import prepare_run_dir
from tests.data.corpus import truncate, write_shapes_voc


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


TINY_RUN = [
    "--model=faster-rcnn",
    "--epochs=2",
    "--set=input.min_sizes=[48]",
    "--set=input.max_size=80",
    "--set=input.test_size=48",
    "--set=train.images_per_batch=1",
    "--set=train.workers=0",
    "--set=train.checkpoint_every=2",
]


def break_first_box(xml: Path) -> None:
    """Swap xmin and xmax of the first object: x2 < x1."""
    text = xml.read_text()
    xmin, xmax = (text.split(f"<{t}>")[1].split("<")[0] for t in ("xmin", "xmax"))
    text = text.replace(f"<xmin>{xmin}<", f"<xmin>{xmax}<", 1)
    xml.write_text(text.replace(f"<xmax>{xmax}<", f"<xmax>{xmin}<", 1))


def test_bad_samples_stop_the_run_before_training_or_are_skipped_and_listed(tmp_path, capsys):
    root = Path(write_shapes_voc(tmp_path / "voc", train=4))
    break_first_box(root / "Annotations" / "train_000000.xml")
    truncate(root / "JPEGImages" / "train_000002.jpg")
    train = ["train", *TINY_RUN, f"--data=voc:{root}"]

    assert main([*train, f"--out={tmp_path / 'strict'}"]) == 1
    error = capsys.readouterr().err
    assert "train_000000.xml: object 0" in error and "x2 < x1" in error
    assert not (tmp_path / "strict" / "checkpoint.safetensors").exists()

    with pytest.warns(UserWarning) as warned:
        assert main([*train, f"--out={tmp_path / 'run'}", "--on-bad-sample=skip"]) == 0
    messages = [str(w.message) for w in warned]
    assert any("skipped 1 bad entries" in m and "train_000000.xml" in m for m in messages)
    assert any("skipped a bad sample" in m and "train_000002.jpg" in m for m in messages)
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    ((opened,), (image,)) = skipped["opened"], skipped["training"]
    assert opened["path"].endswith("train_000000.xml") and "x2 < x1" in opened["problem"]
    assert image["path"].endswith("train_000002.jpg") and "truncated" in image["problem"]
    assert image["times"] == 2  # once per epoch
    assert "skipped 1 bad annotation entries" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    root = write_shapes_voc(tmp_path / "voc", train=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rcnn", "train", *TINY_RUN, f"--data=voc:{root}"]
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    straight = subprocess.Popen([*command, f"--out={tmp_path / 'straight'}"], **quiet)
    killed = subprocess.Popen([*command, f"--out={tmp_path / 'killed'}"], **quiet)
    first_checkpoint = tmp_path / "killed" / "checkpoint.safetensors"
    while not first_checkpoint.exists() and killed.poll() is None:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    subprocess.run([*command, f"--out={tmp_path / 'killed'}", "--resume"], check=True, **quiet)
    assert straight.wait() == 0
    expected = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, value in expected.items():
        assert torch.equal(resumed[name], value), name


def test_default_evaluation_split_is_a_non_empty_test_or_val_split(tmp_path):
    root = Path(write_shapes_voc(tmp_path / "voc", train=2))
    splits = root / "ImageSets" / "Main"
    assert runs.test_split(f"voc:{root}") is None  # train only: nothing to evaluate after it
    (splits / "test.txt").write_text("")
    (splits / "val.txt").write_text("train_000001\n")
    assert runs.test_split(f"voc:{root}") == "val"  # an empty test split is passed over
    (splits / "test.txt").write_text("train_000000\n")
    assert runs.test_split(f"voc:{root}") == "test"
    break_first_box(root / "Annotations" / "train_000000.xml")
    with pytest.raises(BadSampleError, match="train_000000.xml"):  # not a silent fall-back
        runs.test_split(f"voc:{root}")
    with pytest.warns(UserWarning, match="skipped 1 bad entries"):
        assert runs.test_split(f"voc:{root}", on_bad_sample="skip") == "test"  # box dropped


def test_the_demo_refuses_minutes_that_leave_no_time_to_train(tmp_path, capsys):
    earlier = tmp_path / "demo"
    earlier.mkdir()
    (earlier / runs.DEMO_MARKER).write_text("")
    # 1.5 minutes less the 60 s held back for evaluation leave ~30 s, under the 60 s minimum
    assert main(["demo", f"--out={earlier}", "--minutes=1.5"]) == 1
    assert "the demo's 1.5 minutes leave 30 s to train once 60 s" in capsys.readouterr().err
    # the install took the time: 10 minutes from a start 8.5 minutes ago
    started = time.time() - 8.5 * 60
    assert main(["demo", f"--out={earlier}", f"--started={started}"]) == 1
    assert "leave 30 s to train" in capsys.readouterr().err
    assert main(["demo", f"--out={earlier}", f"--started={time.time() + 60}"]) == 1
    assert "is in the future" in capsys.readouterr().err
    assert (earlier / runs.DEMO_MARKER).exists()  # refused before anything was replaced
