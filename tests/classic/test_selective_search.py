import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rcnn.boxes import box_iou
from rcnn.classic.selective_search import (
    Regions,
    SelectiveSearchConfig,
    _gaussian_gradient,
    colour_columns,
    colour_histograms,
    colour_space_image,
    fill_similarity,
    group_hierarchically,
    histogram_intersection,
    initial_regions,
    merge_histograms,
    rank_boxes,
    region_adjacency,
    region_boxes,
    selective_search,
    size_similarity,
    texture_entries,
    texture_histograms,
    tight_box_area,
)

# ---------------------------------------------------------------------------------------------
# The whole algorithm on a small scene


def test_finds_the_drawn_rectangle_and_ellipse(scene):
    boxes = selective_search(scene.image)
    best = box_iou(torch.tensor(scene.objects), boxes).max(dim=1).values
    assert (best > 0.8).all(), best


def test_boxes_are_inside_the_image_and_not_degenerate(scene):
    boxes = selective_search(scene.image, "quality")
    height, width = scene.image.shape[:2]
    assert boxes.dtype == torch.float32 and boxes.dim() == 2 and boxes.shape[1] == 4
    assert len(boxes) > 0
    assert (
        (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    )
    min_size = SelectiveSearchConfig().min_box_fraction * width
    assert (boxes[:, 2:] - boxes[:, :2] >= min_size).all()


def test_no_duplicate_boxes(scene):
    boxes = selective_search(scene.image, "quality")
    assert len(torch.unique(boxes, dim=0)) == len(boxes)


def test_same_input_and_seed_give_the_same_boxes_and_other_seeds_reorder_them(scene):
    first = selective_search(scene.image, seed=3)
    assert torch.equal(first, selective_search(scene.image, seed=3))
    other = selective_search(scene.image, seed=4)
    assert not torch.equal(first, other)
    # the seed only draws the ranking's RND: the same boxes come out, in another order
    assert torch.equal(torch.unique(first, dim=0), torch.unique(other, dim=0))


def test_threads_give_the_same_boxes(scene):
    one = selective_search(scene.image, threads=1)
    assert torch.equal(one, selective_search(scene.image, threads=2))


def test_fast_mode_returns_fewer_boxes_than_quality_mode(scene):
    assert len(selective_search(scene.image, "fast")) < len(
        selective_search(scene.image, "quality")
    )


def test_tensor_input_equals_array_input(scene):
    tensor = torch.from_numpy(scene.image).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    assert torch.equal(selective_search(tensor), selective_search(scene.image))


def test_a_uniform_image_is_one_region_and_one_box():
    image = np.full((20, 30, 3), 77, dtype=np.uint8)
    assert selective_search(image).tolist() == [[0.0, 0.0, 30.0, 20.0]]


def test_an_empty_image_has_no_proposals():
    assert selective_search(np.zeros((0, 5, 3), np.uint8)).shape == (0, 4)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        torch.zeros(8, 8, 3, dtype=torch.uint8),
    ],
)
def test_bad_images_are_refused(image):
    with pytest.raises(ValueError, match="image"):
        selective_search(image)


def test_modes_are_the_papers_settings():
    fast, quality = (
        SelectiveSearchConfig.for_mode("fast"),
        SelectiveSearchConfig.for_mode("quality"),
    )
    assert (fast.colour_spaces, fast.ks, fast.similarities) == (
        ("HSV", "Lab"),
        (50, 100),
        ("CTSF", "TSF"),
    )
    assert quality.colour_spaces == ("HSV", "Lab", "rgI", "H", "I")
    assert (quality.ks, quality.similarities) == ((50, 100, 150, 300), ("CTSF", "TSF", "F", "S"))
    with pytest.raises(ValueError, match="mode"):
        SelectiveSearchConfig.for_mode("slow")


@pytest.mark.parametrize(
    "settings",
    [
        {"colour_spaces": ("XYZ",)},
        {"ks": (0,)},
        {"similarities": ("CX",)},
        {"similarities": ("CC",)},
        {"similarities": ()},
    ],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        SelectiveSearchConfig(**settings)


# ---------------------------------------------------------------------------------------------
# Pixels: colour spaces, colour and texture bins


def test_colour_spaces_of_known_colours():
    pixels = np.array([[[255, 0, 0], [255, 255, 255], [30, 60, 90], [0, 0, 0]]], np.uint8)
    assert colour_space_image(pixels, "HSV")[0, 0].tolist() == [0, 255, 255]
    assert colour_space_image(pixels, "H")[0, 2].tolist() == [149]  # hue 210 degrees
    assert colour_space_image(pixels, "Lab")[0, 1].tolist() == [255, 128, 128]
    assert colour_space_image(pixels, "rgI")[0, 2].tolist() == [42, 85, 54]
    assert colour_space_image(pixels, "rgI")[0, 3].tolist() == [0, 0, 0]
    assert colour_space_image(pixels, "I")[0, :2, 0].tolist() == [76, 255]


def test_colour_columns_split_0_to_255_in_25_equal_bins_per_channel():
    image = np.array([[[0, 255], [10, 11], [11, 0], [255, 10]]], np.uint8)
    assert colour_columns(image).tolist() == [[0, 0, 1, 24], [49, 26, 25, 25]]


def test_gaussian_derivative_of_a_ramp_is_its_slope():
    ramp = np.tile(np.arange(40, dtype=np.float32) * 3, (30, 1))[None]  # (1, 30, 40): 3 per column
    d_x, d_y = _gaussian_gradient(ramp, sigma=1.0)
    np.testing.assert_allclose(d_x[0, :, 5:-5], 3.0, rtol=1e-3)
    np.testing.assert_allclose(d_y[0], 0.0, atol=1e-4)


def _texture_bins(image: np.ndarray) -> np.ndarray:
    """(8*C, H*W) texture bin of every feature and pixel, bin 0 where there is no entry."""
    texture = texture_entries(image)
    bins = np.zeros((texture.features, image.shape[0] * image.shape[1]), np.int64)
    bins[texture.columns // 10, texture.pixels] = texture.columns % 10
    return bins


def test_texture_of_a_vertical_edge_is_in_the_rising_x_orientation():
    image = np.zeros((16, 16, 1), np.uint8)
    image[:, 8:] = 200  # dark left, bright right: d/dx > 0 at the edge, d/dy = 0
    texture = texture_entries(image)
    assert texture.features == 8 and (texture.columns % 10 > 0).all()  # no bin-0 entries
    bins = _texture_bins(image).reshape(8, 16, 16)  # orientations 0, 45, ..., 315 degrees
    assert bins.max() <= 9
    assert bins[0, :, 7:9].min() == 9  # strongest at the edge, in the 0 degree map
    assert bins[0, :, :4].max() == 0 and bins[0, :, 12:].max() == 0
    assert bins[[2, 4, 6]].max() == 0  # 90, 180, 270 degrees: no response


def test_a_steered_derivative_is_in_one_of_its_two_opposite_orientations(scene):
    bins = _texture_bins(scene.image).reshape(2, 4 * 3, -1)  # (theta, theta + 180 degrees)
    assert not ((bins[0] > 0) & (bins[1] > 0)).any()
    assert (bins > 0).any()


# ---------------------------------------------------------------------------------------------
# Regions: statistics, neighbours, similarities, merging

label_images = arrays(
    np.int64, st.tuples(st.integers(2, 7), st.integers(2, 7)), elements=st.integers(0, 4)
)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..R-1."""
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


@settings(max_examples=50, deadline=None)
@given(label_images)
def test_region_boxes_and_neighbours_match_the_definitions(labels):
    labels = _compact(labels)
    count = labels.max() + 1
    for region, (x1, y1, x2, y2) in enumerate(region_boxes(labels, count).tolist()):
        rows, cols = np.nonzero(labels == region)
        assert (x1, y1, x2, y2) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    expected = set()
    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                if 0 <= y + dy < height and 0 <= x + dx < width:
                    a, b = labels[y, x], labels[y + dy, x + dx]
                    if a != b:
                        expected.add((min(a, b), max(a, b)))
    assert {tuple(pair) for pair in region_adjacency(labels).tolist()} == expected


def _regions(labels: np.ndarray, image: np.ndarray) -> Regions:
    return initial_regions(labels, colour_columns(image), texture_entries(image))


@settings(max_examples=30, deadline=None)
@given(label_images, st.integers(0, 2**32 - 1))
def test_similarities_are_in_0_1_and_symmetric(labels, seed):
    labels = _compact(labels)
    image = np.random.default_rng(seed).integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    regions = _regions(labels, image)
    a, b = np.triu_indices(len(regions.sizes), k=1)
    area = regions.image_area
    measures = [
        lambda i, j: histogram_intersection(regions.colour[i], regions.colour[j]),
        lambda i, j: histogram_intersection(regions.texture[i], regions.texture[j]),
        lambda i, j: size_similarity(regions.sizes[i], regions.sizes[j], area),
        lambda i, j: fill_similarity(
            regions.sizes[i],
            regions.sizes[j],
            tight_box_area(regions.boxes[i], regions.boxes[j]),
            area,
        ),
    ]
    for measure in measures:
        forward, backward = measure(a, b), measure(b, a)
        assert ((forward >= -1e-6) & (forward <= 1 + 1e-6)).all()
        np.testing.assert_allclose(forward, backward)


def test_a_region_is_fully_similar_to_itself_in_colour_and_texture(scene):
    labels = np.zeros(scene.image.shape[:2], np.int64)
    labels[:, 64:] = 1
    regions = _regions(labels, scene.image)
    assert histogram_intersection(regions.colour[1], regions.colour[1]) == pytest.approx(1.0)
    assert histogram_intersection(regions.texture[0], regions.texture[0]) == pytest.approx(1.0)


def test_texture_histograms_count_every_pixel_in_every_feature(scene):
    labels = np.zeros(scene.image.shape[:2], np.int64)
    labels[:, 40:] = 1
    labels[50:, 90:] = 2
    flat = labels.ravel()
    # the definition: each pixel's bin in each of the 8*C features, bin 0 included
    columns = _texture_bins(scene.image) + np.arange(0, 240, 10)[:, None]  # (24, H*W)
    counts = np.bincount((flat * 240 + columns).ravel(), minlength=3 * 240).reshape(3, 240)
    expected = counts / counts.sum(axis=1, keepdims=True)
    histograms = texture_histograms(flat, texture_entries(scene.image), np.bincount(flat))
    np.testing.assert_allclose(histograms, expected, rtol=1e-6)


def _histograms(labels: np.ndarray, image: np.ndarray) -> list[np.ndarray]:
    """The colour and texture histograms of the regions of a label image."""
    flat = labels.ravel()
    colour = colour_histograms(flat, colour_columns(image), flat.max() + 1)
    return [colour, texture_histograms(flat, texture_entries(image), np.bincount(flat))]


def test_merged_histograms_equal_those_recomputed_from_the_pixels(scene):
    labels = np.zeros(scene.image.shape[:2], np.int64)
    labels[:, 40:] = 1
    labels[50:, 90:] = 2
    merged_labels = np.where(labels == 2, 1, labels)  # regions 1 and 2 as one
    sizes = np.bincount(labels.ravel())
    for parts, whole in zip(
        _histograms(labels, scene.image), _histograms(merged_labels, scene.image), strict=True
    ):
        merged = merge_histograms(parts[1], sizes[1], parts[2], sizes[2])
        np.testing.assert_allclose(merged, whole[1], atol=1e-6)
        assert merged.sum() == pytest.approx(1.0)


def _strip(sizes: list[int]) -> np.ndarray:
    """A one-row label image: region r is ``sizes[r]`` pixels wide, left to right."""
    return np.repeat(np.arange(len(sizes)), sizes)[None, :]


def test_grouping_merges_the_most_similar_neighbours_first():
    # sizes 1, 8, 1 in a row: by size, 0 and 2 are the most similar pair, but they do not touch
    labels = _strip([1, 8, 1])
    regions = _regions(labels, np.zeros((*labels.shape, 3), np.uint8))
    merged = group_hierarchically(regions, region_adjacency(labels), "S")
    assert merged.tolist() == [[0, 0, 9, 1], [0, 0, 10, 1]]  # 0 + 1 (tie broken by index), then 2
    # sizes 4, 1, 2, 8: the two smallest neighbours (1 and 2) first, then by size again
    labels = _strip([4, 1, 2, 8])
    regions = _regions(labels, np.zeros((*labels.shape, 3), np.uint8))
    merged = group_hierarchically(regions, region_adjacency(labels), "S")
    assert merged.tolist() == [[4, 0, 7, 1], [0, 0, 7, 1], [0, 0, 15, 1]]


def test_grouping_ends_with_the_whole_image(scene):
    labels = np.arange(12).reshape(3, 4).repeat(32, axis=0).repeat(32, axis=1)  # a 3 x 4 grid
    regions = _regions(labels, scene.image)
    for measures in ("CTSF", "TSF", "F", "S", "C"):
        merged = group_hierarchically(regions, region_adjacency(labels), measures)
        assert len(merged) == 11
        assert merged[-1].tolist() == [0, 0, 128, 96]


# ---------------------------------------------------------------------------------------------
# Ranking


def test_ranking_sorts_by_rank_times_rnd_and_keeps_duplicates_at_their_best():
    first = np.array([[0, 0, 5, 5], [0, 0, 9, 9]]), np.array([2, 1])
    second = np.array([[0, 0, 5, 5], [1, 1, 3, 3]]), np.array([1, 3])
    values = np.array([2, 1, 1, 3]) * np.random.default_rng(7).random(4)
    boxes = [(0, 0, 5, 5), (0, 0, 9, 9), (0, 0, 5, 5), (1, 1, 3, 3)]
    expected = []
    for index in np.argsort(values):
        if boxes[index] not in expected:
            expected.append(boxes[index])
    ranked = rank_boxes([first, second], np.random.default_rng(7))
    assert [tuple(box) for box in ranked.tolist()] == expected
