"""Weight files: reading a state dict from disk without ever running code from the file.

A ``.pth``/``.pt`` file is a pickle, and unpickling can call any function the file names
(``os.system``, ``exec``...). So ``.pth`` files are read only with
``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers and
refuses everything else; a refused file is reported as an ``RcnnError`` naming it, and
nothing from it runs. ``.safetensors`` files hold no code at all and are read with safetensors.

The result is always a flat ``{name: tensor}`` dict: a state dict saved on its own, or one
nested under ``"state_dict"`` or ``"model"`` (training checkpoints), with DataParallel's
``module.`` prefix removed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from rcnn.errors import RcnnError

# keys under which training checkpoints commonly nest their state dict
_NESTED_KEYS = ("state_dict", "model")


def read_weight_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The ``{name: tensor}`` state dict in a ``.pth``/``.pt`` or ``.safetensors`` file, on CPU.

    Raises ``RcnnError`` naming the file when it is missing, is not a weight file, is
    truncated, or its pickle asks for anything other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "no such file"
        raise RcnnError(f"{path}: {problem}")
    if path.suffix == ".safetensors":
        return _flat_state_dict(path, _load_safetensors(path))
    return _flat_state_dict(path, _load_pickle(path))


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise RcnnError(f"{path}: not a safetensors weight file ({error})") from None


def _load_pickle(path: Path) -> object:
    """``torch.load(weights_only=True)``; every failure becomes an ``RcnnError`` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = _unpickler_reason(str(error))
        if "Unsupported global" in reason:  # the pickle names a function or class to call
            raise RcnnError(
                f"{path}: refused to load: its pickle asks to run or build something other "
                f"than tensors ({reason}); only plain weight files are read"
            ) from None
        if reason:  # random bytes, or an instruction the safe unpickler does not take
            raise RcnnError(
                f"{path}: not a weight file that can be read safely "
                f"(torch.load with weights_only=True: {reason})"
            ) from None
        raise RcnnError(
            f"{path}: not a PyTorch weight file, or truncated ({type(error).__name__}: {error})"
        ) from None


def _unpickler_reason(message: str) -> str:
    """The one informative sentence of torch's long "Weights only load failed" message, or ''."""
    found = re.search(
        r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|Check the doc|$)", message, re.S
    )
    return " ".join(found.group(1).split()) if found else ""


def _flat_state_dict(path: Path, content: object) -> dict[str, Tensor]:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}``, keep the tensors, drop ``module.``."""
    for key in _NESTED_KEYS:
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
    if not isinstance(content, dict):
        raise RcnnError(f"{path}: holds a {type(content).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in content.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise RcnnError(f"{path}: holds no tensors; not a weight file")
    if all(key.startswith("module.") for key in tensors):  # saved from nn.DataParallel
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors
