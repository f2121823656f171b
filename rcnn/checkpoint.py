"""Checkpoints: written atomically, read without unpickling anything.

A checkpoint is ONE safetensors file holding the model's weights ("model.*"), the optimizer's
tensors ("optimizer.*") and the random generators' states ("rng.*"), with everything else
(epoch, iteration, stage, optimizer hyper-parameters) as JSON in the file's metadata. One file
means the weights and the trainer state can never be out of step after a crash, and
safetensors means loading a checkpoint cannot run code.

Writes are atomic (``rcnn.files.atomic_write``): a run killed at any moment leaves either the
previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from rcnn.errors import RcnnError
from rcnn.files import atomic_write

_STATE_KEY = "rcnn_state"


def save(path: str | Path, tensors: dict[str, Tensor], state: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` (and JSON-able ``state``) to one safetensors file, atomically."""
    metadata = {_STATE_KEY: json.dumps(state or {})}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    data = safetensors_bytes(contiguous, metadata=metadata)
    try:
        atomic_write(path, lambda file: file.write(data))
    except OSError as error:  # disk full, directory gone or read-only: the old file stays
        raise RcnnError(
            f"{path}: could not write ({error.strerror or error}); the previous version of "
            "the file, if any, is intact"
        ) from error


def load(path: str | Path, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors whose names start with ``prefix`` (prefix removed) and the JSON state."""
    path = Path(path)
    if not path.is_file():
        raise RcnnError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as file:
            state = json.loads((file.metadata() or {}).get(_STATE_KEY, "{}"))
            tensors = {
                name[len(prefix) :]: file.get_tensor(name)
                for name in file.keys()  # noqa: SIM118 (safe_open is not iterable)
                if name.startswith(prefix)
            }
    except (SafetensorError, OSError, ValueError) as error:
        raise RcnnError(f"{path}: not a readable checkpoint ({error})") from error
    return tensors, state


def save_model(
    path: str | Path, model: torch.nn.Module, state: dict[str, Any] | None = None
) -> None:
    """The model's weights alone (what ``Detector.load`` needs), atomically."""
    save(path, {f"model.{k}": v for k, v in model.state_dict().items()}, state)


def load_model(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights saved by ``save_model`` or ``save`` into ``model``; returns the JSON state."""
    tensors, state = load(path, "model.")
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # shapes differ: another architecture or class count
        first = str(error).strip().splitlines()[1:2] or [str(error)]
        raise RcnnError(f"{path}: weights do not fit this model ({first[0].strip()})") from error
    if result.missing_keys or result.unexpected_keys:
        problems = [f"missing {k}" for k in result.missing_keys[:3]]
        problems += [f"unexpected {k}" for k in result.unexpected_keys[:3]]
        raise RcnnError(f"{path}: weights do not fit this model ({'; '.join(problems)})")
    return state
