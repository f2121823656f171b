import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rcnn.data.dataset import Sample, make_annotation
from rcnn.data.transforms import (
    TrainTransform,
    batch_images,
    hflip,
    normalize,
    resize,
    resize_scale,
)
from rcnn.structures import ImageBatch


@pytest.mark.parametrize(
    ("size", "scale"),
    [
        ((375, 500), 600 / 375),  # a VOC image: shorter side to 600, longer 800 <= 1000
        ((500, 375), 600 / 375),
        ((200, 1000), 1.0),  # 600 / 200 would make the longer side 3000: capped at 1000
        ((600, 1000), 1.0),
        ((1200, 1500), 0.5),
    ],
)
def test_resize_scale_is_the_papers_rule(size, scale):
    assert resize_scale(size, 600, 1000) == pytest.approx(scale)


def block_image(height, width, box, dtype=torch.uint8):
    """A black image with a white block on the integer box (x1, y1, x2, y2)."""
    image = torch.zeros(3, height, width, dtype=dtype)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    return image, torch.tensor([box], dtype=torch.float32)


def bright_box(image):
    """Tight box of the pixels brighter than half (the block's edges after resizing)."""
    ys, xs = torch.nonzero(image[0].float() > 127.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("scale", [0.5, 0.73, 1.0, 1.6, 2.0])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_boxes_follow_the_pixels_when_resized(scale, dtype):
    image, boxes = block_image(40, 60, (10, 8, 30, 24), dtype)
    resized, moved = resize(image, boxes, scale)
    assert resized.dtype == dtype
    assert resized.shape == (3, round(40 * scale), round(60 * scale))
    assert moved.tolist()[0] == pytest.approx(bright_box(resized), abs=1.0)
    assert moved.tolist()[0] == pytest.approx(
        [10 * scale, 8 * scale, 30 * scale, 24 * scale], rel=0.02
    )


def test_flip_moves_boxes_with_the_pixels():
    image, boxes = block_image(20, 50, (5, 2, 12, 9))
    flipped, moved = hflip(image, boxes)
    assert moved.tolist() == [[38, 2, 45, 9]] == [bright_box(flipped)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(*[st.floats(0, 40)] * 4), max_size=5), st.integers(1, 30))
def test_flip_twice_is_the_identity(rows, width):
    boxes = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
    image = torch.rand(3, 7, width)
    twice_image, twice_boxes = hflip(*hflip(image, boxes))
    assert torch.equal(twice_image, image)
    assert torch.allclose(twice_boxes, boxes) and twice_boxes.dtype == torch.float64


def test_mirrored_images_mirror_each_image_within_its_own_width():
    images = [torch.rand(3, 5, 9), torch.rand(3, 7, 4)]
    padded, sizes = batch_images(images, size_divisible=8)
    batch = ImageBatch(padded, sizes, [1.0, 1.0])
    mirrored = batch.mirrored_images()
    expected, _ = batch_images([image.flip(-1) for image in images], size_divisible=8)
    assert torch.equal(mirrored, expected)  # the padding stays at the right and the bottom
    assert torch.equal(ImageBatch(mirrored, sizes, [1.0, 1.0]).mirrored_images(), padded)


def test_normalize():
    image = torch.tensor([0, 255, 51], dtype=torch.uint8).reshape(3, 1, 1)
    out = normalize(image, mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))
    assert out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


def test_batch_images_pads_to_a_multiple_and_records_sizes():
    images = [torch.ones(3, 5, 9), torch.full((3, 17, 4), 2.0)]
    batch, sizes = batch_images(images, size_divisible=16)
    assert batch.shape == (2, 3, 32, 16) and sizes == [(5, 9), (17, 4)]
    assert batch[0, :, :5, :9].eq(1).all() and batch[0].sum() == 3 * 5 * 9
    assert batch[1, :, :17, :4].eq(2).all() and batch[1].sum() == 2 * 3 * 17 * 4
    empty, no_sizes = batch_images([], 16)
    assert empty.shape == (0, 3, 0, 0) and no_sizes == []


def sample(height=40, width=60):
    image, boxes = block_image(height, width, (10, 8, 30, 24))
    return Sample(image, make_annotation(boxes.tolist(), [1], [False]), index=3)


def test_train_transform_is_repeatable_and_multi_scale():
    transform = TrainTransform(min_sizes=(20, 30, 40), max_size=1000, flip_prob=0.5)
    outputs = [transform(sample(), torch.Generator().manual_seed(s)) for s in range(24)]
    again = transform(sample(), torch.Generator().manual_seed(5))
    assert torch.equal(again.image, outputs[5].image) and again.flipped == outputs[5].flipped
    assert {o.image.shape[1] for o in outputs} == {20, 30, 40}
    assert {o.flipped for o in outputs} == {True, False}
    for out in outputs:
        assert out.scale == out.image.shape[1] / 40 and out.index == 3
        assert out.annotation.boxes.tolist()[0] == pytest.approx(bright_box(out.image), abs=1.0)


def test_test_time_transform_is_deterministic():
    transform = TrainTransform(min_sizes=(80,), max_size=100, flip_prob=0.0)
    out = transform(sample())
    # 80 / 40 = 2 would make the width 120 > 100: capped, scale 100 / 60
    assert out.image.shape == (3, 67, 100) and not out.flipped
    assert out.scale == pytest.approx(100 / 60)
