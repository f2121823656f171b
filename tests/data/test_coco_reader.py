import json
import os

import pytest

from rcnn.data.coco import COCODataset, default_image_dir
from rcnn.errors import BadSampleError, RcnnError


def coco(annotations=None, images=None, categories=None):
    return {
        "images": images
        if images is not None
        else [
            {"id": 42, "file_name": "a.png", "width": 60, "height": 40},
            {"id": 7, "file_name": "b.png", "width": 30, "height": 20},
        ],
        "annotations": annotations if annotations is not None else [],
        "categories": categories
        if categories is not None
        else [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
    }


def test_boxes_ids_and_crowd(make_coco):
    path = make_coco(
        coco(
            [
                {"id": 1, "image_id": 42, "category_id": 18, "bbox": [1.5, 2, 10, 20]},
                {"id": 2, "image_id": 42, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1},
            ]
        )
    )
    dataset = COCODataset(path)
    # category ids in increasing order are labels 1..K
    assert dataset.class_names == ("car", "dog") and dataset.category_ids == (3, 18)
    annotation = dataset.annotation(0)
    assert annotation.boxes.tolist() == [[1.5, 2, 11.5, 22], [0, 0, 60, 40]]
    assert annotation.labels.tolist() == [2, 1]
    assert annotation.difficult.tolist() == [False, True]
    # the image without annotations is kept, with its COCO id
    assert len(dataset) == 2 and len(dataset.annotation(1)) == 0
    assert dataset.coco_image_id(1) == 7 and dataset.image_id(1) == "7"
    assert dataset.image_size(0) == (40, 60)
    assert dataset[0].image.shape == (3, 40, 60)


@pytest.mark.parametrize(
    ("annotation", "problem"),
    [
        ({"id": 5, "category_id": 3, "bbox": [0, 0, 5, 5]}, "missing key 'image_id'"),
        ({"id": 5, "image_id": "42", "category_id": 3, "bbox": [0, 0, 5, 5]}, "'image_id' is '42'"),
        ({"id": 5, "image_id": 42, "category_id": 3, "bbox": [0, 0, 5]}, "expected \\[x, y"),
        ({"id": 5, "image_id": 42, "category_id": 3, "bbox": "0 0 5 5"}, "'bbox' is '0 0 5 5'"),
        ({"id": 5, "image_id": 99, "category_id": 3, "bbox": [0, 0, 5, 5]}, "image_id 99 is not"),
        ({"id": 5, "image_id": 42, "category_id": 4, "bbox": [0, 0, 5, 5]}, "category_id 4 is not"),
        ({"id": 5, "image_id": 42, "category_id": 3, "bbox": [0, 0, 0, 5]}, "zero area"),
        ({"id": 5, "image_id": 42, "category_id": 3, "bbox": [0, 0, -2, 5]}, "x2 < x1"),
        ({"id": 5, "image_id": 42, "category_id": 3, "bbox": [50, 0, 30, 5]}, "outside"),
        ({"id": 5, "image_id": 42, "category_id": 3, "bbox": [-5, 0, 9, 5]}, "negative"),
    ],
)
def test_bad_annotations_name_the_file_and_the_entry(make_coco, annotation, problem):
    good = {"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5]}
    path = make_coco(coco([good, annotation]))
    with pytest.raises(
        BadSampleError, match=f"instances.json: annotations\\[1\\] \\(id 5\\): .*{problem}"
    ):
        COCODataset(path)
    with pytest.warns(UserWarning, match="skipped 1 bad entries"):
        dataset = COCODataset(path, on_bad_sample="skip")
    assert len(dataset.annotation(1)) == 1 and len(dataset.annotation(0)) == 0


def test_bad_image_entries(make_coco):
    images = [{"id": 42, "file_name": "a.png", "width": 60, "height": 40}, {"id": 8, "width": 5}]
    path = make_coco(coco(images=images))
    with pytest.raises(BadSampleError, match=r"images\[1\]: missing key 'height'"):
        COCODataset(path)
    with pytest.warns(UserWarning):
        assert len(COCODataset(path, on_bad_sample="skip")) == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"images": []}', "missing key 'categories'"),
        ('{"images": [], "categories": [{"id": 1}]}', "categories: missing key 'name'"),
        ('{"images": [], "categories": [], "annotations": 5}', "'annotations' must be a list"),
        ("{not json", "not valid JSON"),
    ],
)
def test_unusable_files(tmp_path, content, problem):
    path = tmp_path / "instances.json"
    path.write_text(content)
    with pytest.raises(BadSampleError, match=f"instances.json: {problem}"):
        COCODataset(str(path))


def test_missing_files(tmp_path, make_coco):
    with pytest.raises(RcnnError, match="no such annotation file"):
        COCODataset(str(tmp_path / "none.json"))
    path = make_coco(coco())
    os.remove(tmp_path / "b.png")
    with pytest.raises(BadSampleError, match=r"b.png: image file not found"):
        COCODataset(path)
    with pytest.raises(RcnnError, match="no image directory"):
        COCODataset(path, image_dir=str(tmp_path / "nowhere"))


def test_default_image_dir_follows_the_official_layout(tmp_path):
    (tmp_path / "annotations").mkdir()
    official = tmp_path / "annotations" / "instances_val2017.json"
    assert default_image_dir(str(official)) == str(tmp_path / "annotations")
    (tmp_path / "val2017").mkdir()
    assert default_image_dir(str(official)) == str(tmp_path / "val2017")
    official.write_text(json.dumps(coco(images=[])))
    assert COCODataset(str(official)).image_dir == str(tmp_path / "val2017")
