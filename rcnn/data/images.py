"""Image decoding: any file Pillow reads -> uint8 ``(3, H, W)`` RGB, upright, or a clear error.

EXIF orientation is applied (the image a person sees, and so the frame annotations are drawn
in); greyscale, palette, RGBA, CMYK and 16-bit images all become 8-bit RGB (alpha is dropped,
16-bit values keep their top 8 bits). Missing, empty, truncated or corrupt files and images of
more than ``max_pixels`` pixels raise ``BadSampleError(path, problem)``.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from rcnn.errors import BadSampleError, RcnnError

# 50 megapixels: a 8660 x 5773 photo. Larger files are refused before they are decoded
# (a malicious or mistaken header can otherwise ask for gigabytes).
DEFAULT_MAX_PIXELS = 50_000_000

# EXIF orientations 5..8 rotate by 90 or 270 degrees, swapping height and width.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def image_files(path: Path) -> list[Path]:
    """``path`` itself when it is a file, or the image files of the folder ``path`` (by suffix,
    case-insensitive; not its subfolders), sorted by name."""
    if not path.is_dir():
        return [path]
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise RcnnError(f"{path}: no image files in this folder ({', '.join(IMAGE_SUFFIXES)})")
    return found


def decode_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Decode the image file at ``path`` -> uint8 ``(3, H, W)`` RGB, EXIF orientation applied."""
    with _open(path, max_pixels) as image:
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise BadSampleError(path, f"corrupt or truncated image ({error})") from None
        rgb = np.asarray(to_rgb(image))
    # (H, W, 3) -> (3, H, W), copied in NumPy: a small torch copy may wait for its thread pool
    return torch.from_numpy(np.array(rgb.transpose(2, 0, 1), order="C"))


def read_image_size(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(H, W)`` of the upright image at ``path`` from its header, without decoding it."""
    with _open(path, max_pixels) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
            width, height = height, width
    return height, width


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit ``RGB`` (alpha dropped, 16-bit reduced to its top 8 bits)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64).clip(0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


@contextmanager
def _open(path: str, max_pixels: int):
    """Open ``path`` with Pillow (header only), refusing empty, unreadable or huge files."""
    try:
        if os.path.getsize(path) == 0:
            raise BadSampleError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise BadSampleError(path, "image file not found") from None
    except Image.DecompressionBombError as error:
        raise BadSampleError(path, f"image too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadSampleError(path, f"not an image Pillow can read ({error})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise BadSampleError(
                path, f"image of {width}x{height} pixels is over the limit of {max_pixels} pixels"
            )
        if width == 0 or height == 0:
            raise BadSampleError(path, f"image of {width}x{height} pixels has no pixels")
        yield image
