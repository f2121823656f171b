"""Writing files so that a reader never sees half of one, and a crash never tears one.

Every write goes to a temporary file in the same directory, is flushed and fsynced, then
renamed over the target (atomic on POSIX), and the directory is fsynced: after a crash the
path holds either the old content or the new, never a mix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, atomically. NaN and infinity are refused (not JSON):
    callers write None for undefined values. ``indent=None`` writes one compact line."""
    text = json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    atomic_write(path, lambda file: file.write(text), mode="w")
