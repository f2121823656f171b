import os
import shutil
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcnn.data.voc import VOCDataset, parse_voc_xml, voc_splits
from rcnn.errors import BadSampleError, RcnnError

from .conftest import voc_xml
from .test_images import exif_rotated

DOG = ("dog", (1, 1, 10, 20), False)


def test_boxes_convert_from_devkit_pixels_and_flags_are_kept(make_voc):
    root = make_voc(
        {
            "train": {
                "a": voc_xml([DOG, ("cat", (5, 6, 60, 40), True)]),
                "empty": voc_xml([]),
            },
            "test": {"b": voc_xml([("bird", (2, 2, 3, 3), False)])},
        }
    )
    dataset = VOCDataset(root, "train")
    # classes come from every split, sorted, so that train and test agree
    assert dataset.class_names == ("bird", "cat", "dog")
    assert len(dataset) == 2 and dataset.image_id(0) == "a"
    annotation = dataset.annotation(0)
    # devkit xmin = 1 (first pixel) -> x1 = 0; xmax = 10 (inclusive) -> x2 = 10
    assert annotation.boxes.tolist() == [[0, 0, 10, 20], [4, 5, 60, 40]]
    assert annotation.labels.tolist() == [3, 2]
    assert annotation.difficult.tolist() == [False, True]
    assert len(dataset.annotation(1)) == 0  # an image with no objects is valid
    assert dataset.image_size(0) == (40, 60)
    sample = dataset[1]
    assert sample.image.shape == (3, 40, 60) and sample.index == 1
    assert dataset.image_path(0) == os.path.join(root, "JPEGImages", "a.jpg")


def test_given_class_names_fix_the_labels(make_voc):
    root = make_voc({"train": {"a": voc_xml([DOG])}})
    dataset = VOCDataset(root, "train", class_names=("dog", "zebra"))
    assert dataset.class_names == ("dog", "zebra") and dataset.annotation(0).labels.tolist() == [1]


def test_unknown_class_is_a_bad_sample_and_can_be_skipped(make_voc):
    root = make_voc({"train": {"a": voc_xml([DOG, ("cow", (1, 1, 5, 5), False)])}})
    with pytest.raises(BadSampleError, match=r"a.xml: object 1: unknown class 'cow'"):
        VOCDataset(root, "train", class_names=("dog",))
    with pytest.warns(UserWarning, match="skipped 1 bad entries"):
        dataset = VOCDataset(root, "train", class_names=("dog",), on_bad_sample="skip")
    assert dataset.annotation(0).labels.tolist() == [1]
    assert dataset.skipped == [
        (os.path.join(root, "Annotations", "a.xml"), "object 1: unknown class 'cow'")
    ]


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ((10, 1, 5, 20), "x2 < x1"),
        ((5, 5, 4, 9), "zero area"),  # xmin 5 -> x1 4, xmax 4: zero width
        ((5, 5, 9, 4), "zero area"),
        ((61, 1, 62, 5), "outside the 40x60"),
        ((1, 1, 70, 5), "outside the 40x60"),
        ((-3, 1, 5, 5), "negative coordinate"),
        ((1, "nan", 5, 5), "not a finite number"),
        ((1, "abc", 5, 5), "'abc', not a number"),
    ],
)
def test_bad_boxes_name_the_file_and_the_object(make_voc, box, problem):
    root = make_voc({"train": {"a": voc_xml([DOG, ("dog", box, False)])}})
    with pytest.raises(BadSampleError, match=problem) as caught:
        VOCDataset(root, "train")
    assert "a.xml" in str(caught.value) and "object 1" in str(caught.value)


@pytest.mark.parametrize(
    ("size", "problem"), [((10**400, 5), "over the limit of"), ((40, "?"), "integer <width>")]
)
def test_impossible_image_sizes(make_voc, size, problem):
    root = make_voc({"train": {"a": voc_xml([DOG], size=size)}})
    with pytest.raises(BadSampleError, match=f"a.xml: .*{problem}"):
        VOCDataset(root, "train")
    with pytest.warns(UserWarning):
        assert len(VOCDataset(root, "train", on_bad_sample="skip")) == 0


def test_boxes_at_most_one_pixel_outside_are_clipped(make_voc):
    # xmin = 0 is x1 = -1 here; xmax = 61 is one pixel past the 60 wide image
    root = make_voc({"train": {"a": voc_xml([("dog", (0, 1, 61, 41), False)])}})
    assert VOCDataset(root, "train").annotation(0).boxes.tolist() == [[0, 0, 60, 40]]


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<annotation><filename>&lol2;</filename></annotation>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>&secret;</filename></annotation>"""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "malformed XML"),
        ("<annotation><object>", "malformed XML"),
        ("<html></html>", "root element is <html>"),
        (BILLION_LAUGHS, "refused unsafe XML"),
        (EXTERNAL_ENTITY, "refused unsafe XML"),
    ],
)
def test_unusable_xml_files_name_the_file(make_voc, text, problem):
    root = make_voc({"train": {"ok": voc_xml([DOG]), "bad": text}})
    with pytest.raises(BadSampleError, match=f"bad.xml: {problem}"):
        VOCDataset(root, "train")
    with pytest.warns(UserWarning):
        dataset = VOCDataset(root, "train", on_bad_sample="skip")
    assert [dataset.image_id(i) for i in range(len(dataset))] == ["ok"]


def test_object_without_box_or_name(make_voc):
    xml = "<annotation><object><name>dog</name></object></annotation>"
    root = make_voc({"train": {"a": xml}})
    with pytest.raises(BadSampleError, match=r"a.xml: object 0: \(dog\) no <bndbox>"):
        VOCDataset(root, "train")


def test_missing_image_is_reported_when_opened(make_voc):
    root = make_voc({"train": {"a": voc_xml([DOG]), "b": voc_xml([DOG])}})
    os.remove(os.path.join(root, "JPEGImages", "b.jpg"))
    with pytest.raises(BadSampleError, match=r"b.jpg: image file not found"):
        VOCDataset(root, "train")
    with pytest.warns(UserWarning):
        assert len(VOCDataset(root, "train", on_bad_sample="skip")) == 1


def test_image_file_from_filename_and_size_from_header(make_voc):
    # no <size>: the header gives it; <filename> names another file
    root = make_voc({"train": {"a": voc_xml([DOG], filename="other.jpg", size=None)}})
    shutil.move(
        os.path.join(root, "JPEGImages", "a.jpg"), os.path.join(root, "JPEGImages", "other.jpg")
    )
    dataset = VOCDataset(root, "train")
    assert dataset.image_path(0).endswith("other.jpg") and dataset.image_size(0) == (40, 60)


def test_image_of_another_size_than_annotated(make_voc):
    root = make_voc({"train": {"a": voc_xml([DOG], size=(40, 60))}}, image_sizes={"a": (30, 60)})
    dataset = VOCDataset(root, "train")
    with pytest.raises(BadSampleError, match=r"a.jpg: image is 30x60 .* annotation says 40x60"):
        dataset.load_image(0)


def test_exif_rotated_image_boxes_are_on_the_upright_image(make_voc, tmp_path):
    # the stored 30x20 image shows as 20 wide, 30 tall with the red block at the top right:
    # columns 15..19, rows 0..9, i.e. devkit box (16, 1, 20, 10)
    root = make_voc({"train": {"r": voc_xml([("red", (16, 1, 20, 10), False)], size=(30, 20))}})
    shutil.move(exif_rotated(tmp_path), os.path.join(root, "JPEGImages", "r.jpg"))
    sample = VOCDataset(root, "train")[0]
    x1, y1, x2, y2 = sample.annotation.boxes[0].int().tolist()
    inside = sample.image[:, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].float().mean(dim=(1, 2))
    assert inside[0] > 200 and inside[2] < 50


def test_splits_and_layout_errors(make_voc, tmp_path):
    root = make_voc({"train": {"a": voc_xml([DOG])}, "val": {"a": voc_xml([DOG])}})
    with open(os.path.join(root, "ImageSets", "Main", "dog_train.txt"), "w") as f:
        f.write("a  1\n")
    assert voc_splits(root) == ("train", "val")
    with pytest.raises(RcnnError, match="no split 'test'; splits present: train, val"):
        VOCDataset(root, "test")
    with pytest.raises(RcnnError, match="no such directory"):
        VOCDataset(str(tmp_path / "nowhere"), "train")


def test_parse_keeps_bad_objects_as_problems(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(voc_xml([DOG, ("cat", (1, "?", 3, 4), False)]))
    parsed = parse_voc_xml(str(path))
    assert [o.name for o in parsed.objects] == ["dog"]
    assert parsed.problems == ("object 1: (cat) <ymin> is '?', not a number",)
    assert parsed.size == (40, 60) and torch.tensor(parsed.objects[0].box).tolist() == [
        1,
        1,
        10,
        20,
    ]


# Fuzzing: whatever an annotation file holds, opening the data set gives valid ground truth
# or a BadSampleError naming the file, never another exception.
_values = st.one_of(
    st.sampled_from(["1", "5", "40", "60", "0", "-1", "nan", "inf", "-inf", "1e400", "9" * 400]),
    st.integers(-100, 100).map(str),
    st.text(max_size=5),
)
_object = st.tuples(
    st.sampled_from(["dog", "cat", "", " dog "]), st.tuples(*[_values] * 4), st.booleans()
)
_annotation = st.builds(
    lambda objects, size: voc_xml(objects, size=size),
    st.lists(_object, max_size=4),
    st.one_of(
        st.none(), st.tuples(st.integers(-2, 80), st.integers(-2, 80)), st.tuples(_values, _values)
    ),
)


@st.composite
def mutated_annotation(draw):
    """A VOC annotation with a random slice replaced by random text (or one of XML's
    dangerous constructs)."""
    text = draw(_annotation)
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, min(len(text), start + 20)))
    insert = draw(st.one_of(st.text(max_size=10), st.sampled_from(["<", "&lol;", "<!DOCTYPE"])))
    return text[:start] + insert + text[end:]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.one_of(_annotation, mutated_annotation(), st.text(max_size=40)),
    policy=st.sampled_from(["error", "skip"]),
)
def test_fuzzed_annotations_load_or_name_the_file(make_voc, text, policy):
    root = make_voc({"train": {"a": voc_xml([DOG])}})  # idempotent: writes the same files
    with open(os.path.join(root, "Annotations", "a.xml"), "w", encoding="utf-8") as f:
        f.write(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = VOCDataset(root, "train", class_names=("dog",), on_bad_sample=policy)
    except BadSampleError as error:
        assert policy == "error" and os.path.basename(error.path) in ("a.xml", "a.jpg")
        return
    for i in range(len(dataset)):
        assert_valid(dataset.annotation(i), dataset.image_size(i))


def assert_valid(annotation, image_size):
    """Ground truth as the readers promise it: finite boxes of positive area inside the
    image, labels in [1, K]."""
    height, width = image_size
    boxes = annotation.boxes
    assert boxes.dtype == torch.float32 and torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (annotation.labels >= 1).all()


@pytest.mark.parametrize("name", ["../outside.jpg", "{tmp}/outside.jpg", "a/../../outside.jpg"])
def test_filename_cannot_point_outside_the_image_folder(make_voc, tmp_path, name):
    name = name.format(tmp=tmp_path / "voc")
    root = make_voc({"train": {"a": voc_xml([DOG], filename=name)}})
    shutil.copy(os.path.join(root, "JPEGImages", "a.jpg"), os.path.join(root, "outside.jpg"))
    with pytest.raises(BadSampleError, match=r"a.xml: <filename> .* is outside .*JPEGImages"):
        VOCDataset(root, "train")
