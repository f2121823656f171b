"""Writing result files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path``: a temporary file beside it, fsync, then rename.

    A crash leaves either the old file or the new one, never a mix. NaN and infinity are
    refused (they are not JSON); callers write ``None`` for values that are undefined.
    ``indent=None`` writes one compact line (for large result lists).
    """
    path = Path(path)
    text = json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
