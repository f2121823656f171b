import pytest
import torch
from safetensors.torch import save_file

from rcnn.errors import RcnnError
from rcnn.weights import read_weight_file


def test_plain_and_nested_state_dicts(tmp_path):
    weights = {"conv1.weight": torch.randn(4, 3, 3, 3), "conv1.bias": torch.randn(4)}
    for name, content in (
        ("plain.pth", weights),
        ("lightning.ckpt", {"state_dict": weights, "epoch": 7}),
        ("checkpoint.pth", {"model": weights, "optimizer": {"lr": 0.1}}),
        ("parallel.pth", {f"module.{k}": v for k, v in weights.items()}),
    ):
        torch.save(content, tmp_path / name)
        read = read_weight_file(tmp_path / name)
        assert read.keys() == weights.keys(), name
        assert all(torch.equal(read[k], weights[k]) for k in weights), name


def test_non_tensor_entries_are_dropped_and_dtypes_kept(tmp_path):
    torch.save({"w": torch.ones(2, dtype=torch.float16), "step": 3, "n": "x"}, tmp_path / "a.pt")
    read = read_weight_file(tmp_path / "a.pt")
    assert list(read) == ["w"] and read["w"].dtype == torch.float16


def test_safetensors(tmp_path):
    weights = {"module.fc6.weight": torch.randn(5, 2), "module.fc6.bias": torch.randn(5)}
    save_file(weights, tmp_path / "w.safetensors")
    read = read_weight_file(tmp_path / "w.safetensors")
    assert torch.equal(read["fc6.weight"], weights["module.fc6.weight"])


def test_legacy_torch_format(tmp_path):
    # torchvision's older files (e.g. vgg16-397923af.pth) predate the zip format
    weights = {"features.0.weight": torch.randn(2, 3)}
    torch.save(weights, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(
        read_weight_file(tmp_path / "old.pth")["features.0.weight"], weights["features.0.weight"]
    )


def test_truncated_and_empty_files(tmp_path):
    torch.save({"w": torch.randn(1000)}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    for name, content in (("half.pth", data[: len(data) // 2]), ("empty.pth", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(RcnnError, match=rf"{name}: not a PyTorch weight file, or truncated"):
            read_weight_file(tmp_path / name)
    save_file({"w": torch.randn(1000)}, tmp_path / "whole.safetensors")
    (tmp_path / "half.safetensors").write_bytes((tmp_path / "whole.safetensors").read_bytes()[:-9])
    with pytest.raises(RcnnError, match=r"half\.safetensors: not a safetensors weight file"):
        read_weight_file(tmp_path / "half.safetensors")


def test_files_without_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(RcnnError, match=r"list\.pth: holds a list, not a state dict"):
        read_weight_file(tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(RcnnError, match=r"meta\.pth: holds no tensors"):
        read_weight_file(tmp_path / "meta.pth")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(RcnnError, match=r"nowhere\.pth: no such file"):
        read_weight_file(tmp_path / "nowhere.pth")
    with pytest.raises(RcnnError, match="is not a file"):
        read_weight_file(tmp_path)


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: a crafted file's code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Payload(marker)}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(RcnnError, match=r"evil\.pth: refused to load: .*GLOBAL io.open"):
        read_weight_file(tmp_path / "evil.pth")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pth", weights_only=False)  # the unsafe load the file targets
    assert marker.exists()  # ...would have run it
