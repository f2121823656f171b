import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from rcnn.data.images import decode_image, read_image_size
from rcnn.errors import BadSampleError

from .corpus import corrupt_png_data, truncate


def save(tmp_path, name, image, **options):
    path = str(tmp_path / name)
    image.save(path, **options)
    return path


def test_rgb_png_decodes_exactly_as_uint8_chw(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = decode_image(save(tmp_path, "a.png", Image.fromarray(pixels)))
    assert image.dtype == torch.uint8 and image.shape == (3, 5, 7) and image.is_contiguous()
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))


def test_greyscale_becomes_three_equal_channels(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = decode_image(save(tmp_path, "g.png", Image.fromarray(pixels, mode="L")))
    assert image.shape == (3, 3, 4)
    for channel in image:
        assert torch.equal(channel, torch.from_numpy(pixels))


def test_rgba_drops_alpha_and_keeps_colour(tmp_path):
    rgba = Image.new("RGBA", (4, 3), (10, 200, 30, 0))
    image = decode_image(save(tmp_path, "a.png", rgba))
    assert image.shape == (3, 3, 4)
    assert image[:, 0, 0].tolist() == [10, 200, 30]


@pytest.mark.parametrize("transparency", [None, 0])
def test_palette_images_become_their_palette_colours(tmp_path, transparency):
    palette = Image.new("P", (4, 3))
    palette.putpalette([0, 0, 0, 250, 20, 40] + [0] * 762)
    palette.paste(1, (0, 0, 2, 3))
    options = {} if transparency is None else {"transparency": transparency}
    image = decode_image(save(tmp_path, "p.png", palette, **options))
    assert image[:, 0, 0].tolist() == [250, 20, 40]
    assert image[:, 0, 3].tolist() == [0, 0, 0]


def test_sixteen_bit_keeps_the_top_eight_bits(tmp_path):
    values = np.array([[0, 255, 256, 40000, 65535]], dtype=np.uint16)
    image = decode_image(save(tmp_path, "d.png", Image.fromarray(values)))
    assert image.dtype == torch.uint8
    assert image[0, 0].tolist() == [0, 0, 1, 156, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in ink
    image = decode_image(save(tmp_path, "c.jpg", cmyk))
    red, green, blue = image[:, 4, 4].tolist()
    assert red > 240 and green < 15 and blue < 15


def test_one_pixel_image_decodes(tmp_path):
    image = decode_image(save(tmp_path, "one.png", Image.new("RGB", (1, 1), (1, 2, 3))))
    assert image.shape == (3, 1, 1) and image.flatten().tolist() == [1, 2, 3]


def exif_rotated(tmp_path, orientation=6):
    """A 30 wide x 20 tall stored image with red at stored top-left, shown rotated."""
    stored = Image.new("RGB", (30, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 5))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(tmp_path, "rotated.jpg", stored, exif=exif, quality=100)


def test_exif_orientation_is_applied(tmp_path):
    # orientation 6: the viewer turns the stored image 90 degrees clockwise, so the stored
    # top-left red block (10 wide, 5 tall) shows at the top right, 5 wide and 10 tall
    path = exif_rotated(tmp_path)
    image = decode_image(path)
    assert image.shape == (3, 30, 20)
    assert read_image_size(path) == (30, 20)
    assert image[0, 2, 17] > 200 and image[2, 2, 17] < 50  # top right: red
    assert image[0, 2, 2] < 50 and image[2, 2, 2] > 200  # top left: blue


@pytest.mark.parametrize(
    ("name", "damage", "problem"),
    [
        ("cut.jpg", truncate, "corrupt or truncated"),
        ("cut.png", truncate, "corrupt or truncated"),
        ("bad.png", corrupt_png_data, "corrupt or truncated"),
    ],
)
def test_truncated_or_corrupt_files_name_the_file(tmp_path, name, damage, problem):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    assert decode_image(str(path)).shape == (3, 64, 64)
    damage(path)
    with pytest.raises(BadSampleError, match=f"{name}: {problem}"):
        decode_image(str(path))


@pytest.mark.parametrize(
    ("content", "problem"), [(b"", "empty file"), (b"not an image", "not an image")]
)
def test_empty_or_foreign_file_names_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadSampleError, match=f"bad.jpg: {problem}") as caught:
        decode_image(str(path))
    assert caught.value.path == str(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadSampleError, match=r"gone.jpg: image file not found"):
        decode_image(str(tmp_path / "gone.jpg"))


def test_image_over_the_pixel_limit(tmp_path):
    path = save(tmp_path, "big.png", Image.new("RGB", (20, 10)))
    assert decode_image(path, max_pixels=200).shape == (3, 10, 20)
    with pytest.raises(BadSampleError, match=r"big.png: image of 20x10 pixels is over the limit"):
        decode_image(path, max_pixels=199)


def png_claiming(width, height):
    """A tiny PNG whose header claims width x height (the data is far too short)."""
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_huge_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(BadSampleError, match=r"bomb.png: image"):
        decode_image(str(path))
    path.write_bytes(png_claiming(5_000, 5_000))  # under Pillow's own limit, over ours
    with pytest.raises(BadSampleError, match="over the limit of 1000000"):
        decode_image(str(path), max_pixels=1_000_000)
