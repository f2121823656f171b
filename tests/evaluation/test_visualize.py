import numpy as np
import pytest
import torch
from PIL import Image

from rcnn.structures import Annotation
from rcnn.visualize import class_color, draw_detections

NAMES = ["cat", "dog"]
H, W = 120, 160
GRAY = 90


def gray_image():
    return torch.full((3, H, W), GRAY, dtype=torch.uint8)


def changed(picture: Image.Image) -> np.ndarray:
    """(H, W) bool: pixels that are no longer the plain gray."""
    return (np.asarray(picture) != GRAY).any(axis=2)


def test_boxes_are_outlined_and_the_rest_is_untouched():
    image = gray_image()
    boxes = torch.tensor([[40.0, 50, 100, 110]])
    picture = draw_detections(image, boxes, torch.tensor([2]), torch.tensor([0.93]), NAMES)
    assert picture.size == (W, H) and picture.mode == "RGB"
    diff = changed(picture)
    # every side of the outline is drawn, in the class colour somewhere
    assert diff[50:110, 40].all() and diff[50:110, 99].all()
    assert diff[50, 40:100].all() and diff[109, 40:100].all()
    assert (np.asarray(picture)[80, 40:46] == class_color(2)).all(axis=1).any()
    # the inside of the box and the far corner keep the picture
    assert not diff[70:100, 60:90].any()
    assert not diff[:, 120:].any()
    # the tag sits above the box, filled with the class colour
    assert (np.asarray(picture)[30:50, 40:100] == class_color(2)).all(axis=2).sum() > 100
    assert (image == GRAY).all()  # the input is not drawn on


def test_tensor_and_pil_inputs_draw_the_same_picture():
    boxes = torch.tensor([[10.0, 10, 60, 70], [70, 20, 150, 100]])
    labels, scores = torch.tensor([1, 2]), torch.tensor([0.5, 0.8])
    from_tensor = draw_detections(gray_image(), boxes, labels, scores, NAMES)
    from_pil = draw_detections(Image.new("RGB", (W, H), (GRAY,) * 3), boxes, labels, scores, NAMES)
    assert np.array_equal(np.asarray(from_tensor), np.asarray(from_pil))


def test_ground_truth_is_dashed():
    truth = Annotation(
        torch.tensor([[20.0, 30, 140, 100]]), torch.tensor([1]), torch.tensor([False])
    )
    nothing = torch.zeros(0, 4)
    picture = draw_detections(
        gray_image(), nothing, torch.zeros(0, dtype=torch.int64), None, NAMES, ground_truth=truth
    )
    top = changed(picture)[30, 20:140]
    assert 0.3 < top.mean() < 0.8  # dashes and gaps
    assert not changed(picture)[50:90, 40:120].any()


def test_no_detections_leave_the_image_as_it_was():
    picture = draw_detections(
        gray_image(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0), NAMES
    )
    assert not changed(picture).any()


def test_class_colours_are_stable_and_distinct():
    colours = [class_color(k) for k in range(1, 21)]
    assert colours == [class_color(k) for k in range(1, 21)]
    assert len(set(colours)) == 20
    # any two of the first 20 differ clearly in some channel
    for i, a in enumerate(colours):
        for b in colours[i + 1 :]:
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) > 20


def test_rejects_images_that_are_not_uint8_chw():
    with pytest.raises(ValueError, match=r"uint8 \(3, H, W\)"):
        draw_detections(torch.zeros(H, W, 3), torch.zeros(0, 4), torch.zeros(0), None, NAMES)
