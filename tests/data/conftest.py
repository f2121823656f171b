"""Small VOC and COCO data sets written into tmp_path, for the reader tests."""

import json
import os

import numpy as np
import pytest
from PIL import Image


def voc_xml(objects, filename=None, size=(40, 60)):
    """A VOC annotation: objects are (name, (xmin, ymin, xmax, ymax), difficult) in devkit
    pixels; size is (H, W) or None for no <size>."""
    parts = ["<annotation>"]
    if filename:
        parts.append(f"<filename>{filename}</filename>")
    if size:
        parts.append(f"<size><width>{size[1]}</width><height>{size[0]}</height></size>")
    for name, box, difficult in objects:
        corners = "".join(
            f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=False)
        )
        parts.append(
            f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
            f"<bndbox>{corners}</bndbox></object>"
        )
    return "".join([*parts, "</annotation>"])


@pytest.fixture
def make_voc(tmp_path):
    """make_voc({split: {id: xml_text}}, image_sizes={id: (H, W)}) -> root; writes a grey
    JPEG of the given size (default 40x60) for every id."""

    def make(splits, image_sizes=None):
        root = tmp_path / "voc"
        for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        for split, files in splits.items():
            (root / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in files))
            for image_id, xml in files.items():
                (root / "Annotations" / f"{image_id}.xml").write_text(xml)
                height, width = (image_sizes or {}).get(image_id, (40, 60))
                pixels = np.full((height, width, 3), 128, np.uint8)
                Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg")
        return str(root)

    return make


@pytest.fixture
def make_coco(tmp_path):
    """make_coco(content) -> path of the JSON file; images listed in content get a grey PNG
    of their stated size in the same folder."""

    def make(content):
        for image in content.get("images", []):
            if isinstance(image, dict) and {"file_name", "width", "height"} <= image.keys():
                pixels = np.full((image["height"], image["width"], 3), 128, np.uint8)
                Image.fromarray(pixels).save(tmp_path / image["file_name"])
        path = os.path.join(tmp_path, "instances.json")
        with open(path, "w") as f:
            json.dump(content, f)
        return path

    return make
