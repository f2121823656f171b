"""Writers of the bad-input corpus (issue #6) and of small VOC data sets, shared by the tests."""

import os
import zlib
from pathlib import Path

from rcnn.data.shapes import ShapesConfig, ShapesDataset
from rcnn.data.voc import export_voc

SMALL_SHAPES = ShapesConfig(short_side=(48, 64), objects=(1, 3), clutter=(0, 2))


def truncate(path: str | os.PathLike) -> None:
    """Cut the file to half its length: a download or copy that stopped."""
    path = Path(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_png_data(path: str | os.PathLike) -> None:
    """Overwrite a PNG's compressed pixel data with bytes that do not inflate (the chunk's
    CRC is fixed up, so only the decoder can tell)."""
    data = bytearray(Path(path).read_bytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    data[start : start + length] = b"\xff" * length
    crc = zlib.crc32(bytes(data[start - 4 : start + length]))
    data[start + length : start + length + 4] = crc.to_bytes(4, "big")
    Path(path).write_bytes(bytes(data))


def write_shapes_voc(root: str | os.PathLike, train: int = 4, seed: int = 0) -> str:
    """A VOC directory of ``train`` small shapes images (48-64 px), train split only."""
    export_voc(ShapesDataset("train", train, seed, SMALL_SHAPES), str(root), progress=False)
    return str(root)
