import errno
import os

import pytest
import torch

from rcnn import checkpoint
from rcnn.errors import RcnnError
from rcnn.files import atomic_write


def test_round_trip_with_state(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    tensors = {"model.w": torch.arange(6.0).reshape(2, 3), "rng.cpu": torch.get_rng_state()}
    checkpoint.save(path, tensors, {"epoch": 3, "stage": "joint"})
    loaded, state = checkpoint.load(path)
    assert state == {"epoch": 3, "stage": "joint"}
    assert torch.equal(loaded["model.w"], tensors["model.w"])
    only_model, _ = checkpoint.load(path, "model.")
    assert list(only_model) == ["w"]


def test_model_weights_and_mismatch(tmp_path):
    path = tmp_path / "model.safetensors"
    model = torch.nn.Linear(3, 2)
    checkpoint.save_model(path, model, {"classes": ["a"]})
    other = torch.nn.Linear(3, 2)
    assert checkpoint.load_model(path, other) == {"classes": ["a"]}
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(RcnnError, match="model.safetensors: weights do not fit this model"):
        checkpoint.load_model(path, torch.nn.Linear(4, 2))
    with pytest.raises(RcnnError, match="weights do not fit this model .missing"):
        checkpoint.load_model(path, torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path, {"x": torch.ones(2)}, {"epoch": 1})

    def crash(file):
        file.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash)
    _, state = checkpoint.load(path)
    assert state == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no temporary left


def test_unreadable_files_are_reported(tmp_path):
    with pytest.raises(RcnnError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "nothing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(64))
    with pytest.raises(RcnnError, match="garbage.safetensors: not a readable checkpoint"):
        checkpoint.load(garbage)


def test_disk_full_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path, {"x": torch.ones(2)}, {"epoch": 1})
    real_fsync = os.fsync

    def full(fd):  # the data is written, then the disk turns out to be full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RcnnError, match=r"checkpoint.safetensors: could not write \(No space"):
        checkpoint.save(path, {"x": torch.zeros(2)}, {"epoch": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    tensors, state = checkpoint.load(path)
    assert state == {"epoch": 1} and torch.equal(tensors["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]
