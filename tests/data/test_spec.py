import json

import pytest

from rcnn.data.coco import COCODataset
from rcnn.data.shapes import ShapesDataset
from rcnn.data.spec import _split_coco, open_dataset
from rcnn.data.voc import VOCDataset
from rcnn.errors import RcnnError

from .conftest import voc_xml


def test_each_scheme_opens_its_reader(make_voc, tmp_path):
    root = make_voc({"val": {"a": voc_xml([("dog", (1, 1, 5, 5), False)])}})
    voc = open_dataset(f"voc:{root}", "val", on_bad_sample="skip")
    assert isinstance(voc, VOCDataset) and voc.split == "val" and voc.on_bad_sample == "skip"
    shapes = open_dataset("shapes", "test", size=3, seed=2)
    assert isinstance(shapes, ShapesDataset) and len(shapes) == 3 and shapes.seed == 2
    (tmp_path / "images").mkdir()
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps({"images": [], "categories": []}))
    coco = open_dataset(f"coco:{annotations}:{tmp_path / 'images'}", "val2017")
    assert isinstance(coco, COCODataset) and coco.image_dir == str(tmp_path / "images")
    assert coco.split == "val2017" and len(coco) == 0


def test_shapes_spec_sets_split_sizes():
    assert len(open_dataset("shapes:train=7,test=3", "train")) == 7
    assert len(open_dataset("shapes:train=7,test=3", "test")) == 3
    assert len(open_dataset("shapes:train=7", "val")) == 300  # the default


@pytest.mark.parametrize(
    "spec",
    [
        "shape",
        "voc",
        "voc:",
        "coco:",
        "shapes:x",
        "shapes:train=-1",
        "shapes:tran=4",
        "imagenet:/d",
    ],
)
def test_unknown_specs_say_what_is_expected(spec):
    with pytest.raises(RcnnError, match=r"expected shapes(:SPLIT=N|\[:SPLIT=N,\.\.\.\], voc:DIR)"):
        open_dataset(spec, "train")


def test_coco_spec_keeps_colons_inside_paths():
    assert _split_coco("a.json") == ("a.json", None)
    assert _split_coco("/d/a.json:/img") == ("/d/a.json", "/img")
    assert _split_coco("/x:y/a.json:/i:j") == ("/x:y/a.json", "/i:j")
