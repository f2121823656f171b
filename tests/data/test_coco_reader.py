import json
import os
import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from rcnn.data.coco import COCODataset, default_image_dir
from rcnn.errors import BadSampleError, RcnnError

from .test_voc_reader import assert_valid


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
        ({"id": 5, "image_id": 42, "category_id": 3, "bbox": [0, 0, 10**400, 5]}, "too large"),
        ({"id": 5, "image_id": 42, "category_id": 3, "bbox": [0, float("nan"), 1, 5]}, "finite"),
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


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"id": 8, "width": 5}, "missing key 'height'"),
        ({"id": 8, "width": 5, "height": 0}, "size 0x5 .* not positive"),
        ({"id": 8, "width": 10**400, "height": 2}, "over the limit of"),
    ],
)
def test_bad_image_entries(make_coco, entry, problem):
    images = [{"id": 42, "file_name": "a.png", "width": 60, "height": 40}, entry]
    path = make_coco(coco(images=images))
    with pytest.raises(BadSampleError, match=rf"images\[1\]: .*{problem}"):
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
        ("[" * 100_000, "not valid JSON"),  # deeper than Python's recursion limit
        ('{"images": [' + "9" * 5000 + "]}", "not valid JSON"),  # over int's digit limit
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


# Fuzzing: any JSON structure, or a COCO file with random values, opens to valid ground
# truth or raises a BadSampleError naming the file, never another exception.
_numbers = st.one_of(
    st.integers(-5, 70),
    st.sampled_from([10**400, -(10**400), True, 0.5]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_json = st.recursive(
    st.none() | st.booleans() | _numbers | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def _mostly(valid, weird=_json):
    """``valid`` four times in five, else ``weird``: random files that still get far."""
    return st.sampled_from((True, True, True, True, False)).flatmap(
        lambda ok: valid if ok else weird
    )


def _entries(fields):
    """Lists of JSON objects with mostly valid {key: strategy} fields, maybe one key missing,
    or any JSON value instead of the object."""
    entry = st.tuples(
        st.fixed_dictionaries({k: _mostly(v) for k, v in fields.items()}),
        st.sampled_from([None, None, None, *fields]),
    ).map(lambda pair: {k: v for k, v in pair[0].items() if k != pair[1]})
    return st.lists(_mostly(entry), min_size=1, max_size=4)


_sizes = _mostly(st.integers(30, 70), _numbers)
_coco = st.fixed_dictionaries(
    {
        "images": _entries(
            {
                "id": st.integers(1, 2),
                "file_name": _mostly(st.just("a.png"), st.sampled_from(["none.png", "", "."])),
                "width": _sizes,
                "height": _sizes,
            }
        ),
        "categories": _mostly(
            st.just([{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]),
            _entries({"id": st.integers(0, 3), "name": st.text(max_size=3)}),
        ),
        "annotations": _entries(
            {
                "id": _numbers,
                "image_id": st.integers(1, 2),
                "category_id": st.integers(1, 2),
                "bbox": _mostly(
                    st.lists(st.integers(1, 25), min_size=4, max_size=4),
                    st.lists(_numbers, min_size=3, max_size=5),
                ),
                "iscrowd": st.integers(0, 1),
            }
        ),
    }
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_coco | _json, policy=st.sampled_from(["error", "skip"]))
def test_fuzzed_files_load_or_name_the_file(tmp_path, content, policy):
    path = tmp_path / "instances.json"
    if not (tmp_path / "a.png").exists():
        Image.new("RGB", (60, 40)).save(tmp_path / "a.png")
    path.write_text(json.dumps(content))
    event(f"{type(content).__name__} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = COCODataset(str(path), on_bad_sample=policy)
    except BadSampleError as error:
        assert os.path.dirname(error.path) == str(tmp_path)
        return
    event(f"opened, {sum(len(dataset.annotation(i)) > 0 for i in range(len(dataset)))} with boxes")
    for i in range(len(dataset)):
        assert_valid(dataset.annotation(i), dataset.image_size(i))


@pytest.mark.parametrize("name", ["../a.png", "{tmp}/a.png"])
def test_file_name_cannot_point_outside_the_image_folder(make_coco, tmp_path, name):
    # a.png exists, one folder up from the image folder
    images = [{"id": 1, "file_name": name.format(tmp=tmp_path), "width": 60, "height": 40}]
    path = make_coco(coco(images=[{"id": 1, "file_name": "a.png", "width": 60, "height": 40}]))
    with open(path, "w") as f:
        json.dump(coco(images=images), f)
    (tmp_path / "images").mkdir()
    with pytest.raises(BadSampleError, match=r"instances.json: file_name .* is outside .*images"):
        COCODataset(path, str(tmp_path / "images"))
