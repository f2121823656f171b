"""keep_freed_memory: large tensors come from the heap that glibc keeps, not from fresh mmaps."""

import subprocess
import sys
import types

import pytest
import torch

from rcnn.runtime import bfloat16_is_native

# Print whether a 64 MiB tensor lies in the process's [heap] (brk) mapping.
IN_HEAP = """
import sys
import torch
from rcnn.runtime import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
address = torch.ones(16 * 2**20).data_ptr()
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        print(took, start <= address < end)
        break
else:
    print(took, False)
"""


def _in_heap(mode: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", IN_HEAP, mode], capture_output=True, text=True, check=True
    )
    return result.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_tensors_come_from_the_kept_heap():
    assert _in_heap("keep") == ["True", "True"]
    # glibc's default serves (and later unmaps) such a block with its own mmap
    assert _in_heap("default") == ["None", "False"]


def test_bfloat16_is_native_is_false_where_torch_cannot_tell(monkeypatch):
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())  # no such query
    assert bfloat16_is_native() is False
