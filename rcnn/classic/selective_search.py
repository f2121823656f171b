"""Selective search (Uijlings, van de Sande, Gevers and Smeulders, IJCV 2013).

The region proposals of R-CNN, SPPNet and Fast R-CNN: about 2,000 class-independent boxes per
image that together cover nearly every object. The paper's recipe:

1. Initial regions (§3.1): Felzenszwalb-Huttenlocher graph segmentation of the image.
2. Hierarchical grouping (§3.1, Algorithm 1): merge the two most similar *neighbouring*
   regions, again and again, until a single region is left; every region ever formed is a
   proposal (its bounding box). The similarity (§3.2) is the sum of those enabled of colour
   (C), texture (T), size (S) and fill (F), each in [0, 1].
3. Diversification (§3.2): steps 1-2 for several colour spaces, Felzenszwalb thresholds k
   and similarity combinations; each (colour space, k, combination) is one hierarchy.
4. Combining locations (§3.3): in each hierarchy the region formed last (the whole image)
   gets j = 1, the one formed before it j = 2, and so on; each box is valued j * RND, RND
   uniform in [0, 1]; all boxes are sorted by value, ascending; duplicates keep their best.

The two modes are the paper's "Selective Search Fast" and "Quality", with the settings of
its authors' code (which R-CNN ran, in fast mode):

    fast     colour spaces HSV, Lab               k = 50, 100            C+T+S+F, T+S+F
    quality  colour spaces HSV, Lab, rgI, H, I    k = 50, 100, 150, 300  C+T+S+F, T+S+F, F, S

with Felzenszwalb's sigma = 0.8 and minimum segment size = k. (OpenCV's ximgproc "fast"
uses k = 150, 300, 450 instead; we follow the paper.)

Details decided here:

* Colour spaces are 8-bit images, as in the authors' code: HSV with each channel scaled to
  [0, 255]; Lab as 8-bit Lab is stored (L * 255 / 100, a + 128, b + 128); rgI = the
  chromaticities R / (R+G+B) and G / (R+G+B) scaled to [0, 255], and the grey level
  I = 0.299 R + 0.587 G + 0.114 B; H the hue alone; I the grey level alone. One-channel
  spaces are segmented as three equal channels, as the authors' code does.
* Colour histograms: 25 bins per channel over [0, 256). Texture histograms (the paper's
  Gaussian derivatives, sigma = 1, 8 orientations, 10 bins): the first derivative of each
  channel steered to 0, 45, ..., 315 degrees and half-wave rectified, divided by the
  channel's largest response (our choice: it keeps the orientations' relative strengths).
  Both are L1-normalised per region; a merged region's are the size-weighted average.
* The initial regions are proposals too, ranked after every merged region (the authors'
  code gives them j = R, once per segmentation).
* Boxes narrower or shorter than ``min_box_fraction`` of the image width are dropped: 2 %,
  10 pixels at 500. R-CNN dropped boxes under 20 pixels at its canonical 500-pixel width
  (0.04), which also loses objects of 10-20 pixels (rare in VOC, common in the built-in
  shapes set); 0.02 keeps them, for about 30 % more boxes.

Boxes follow ``rcnn.boxes``: a region covering pixel columns x1..x2 and rows y1..y2 has the
box (x1, y1, x2 + 1, y2 + 1). Shapes: the image is H x W with C colour channels; R initial
regions; E neighbouring pairs; D histogram bins; P proposals.
"""

from __future__ import annotations

import heapq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb
from torch import Tensor

from rcnn.boxes import remove_small_boxes

COLOUR_SPACES = ("HSV", "Lab", "rgI", "H", "I")
MEASURES = "CTSF"  # colour, texture, size, fill
COLOUR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ORIENTATIONS = 8
TEXTURE_SIGMA = 1.0


@dataclass(frozen=True)
class SelectiveSearchConfig:
    """The strategies to run and combine (§3.2), and the small-box rule.

    colour_spaces: names from ``COLOUR_SPACES``; ks: Felzenszwalb thresholds k (the minimum
    segment size is k too); similarities: combinations of the letters C (colour), T (texture),
    S (size), F (fill), e.g. "CTSF"; sigma: Felzenszwalb's Gaussian smoothing;
    min_box_fraction: boxes whose width or height is under this fraction of the image width
    are dropped. The defaults are the paper's "fast" mode.
    """

    colour_spaces: tuple[str, ...] = ("HSV", "Lab")
    ks: tuple[int, ...] = (50, 100)
    similarities: tuple[str, ...] = ("CTSF", "TSF")
    sigma: float = 0.8
    min_box_fraction: float = 0.02

    def __post_init__(self) -> None:
        unknown = [space for space in self.colour_spaces if space not in COLOUR_SPACES]
        if unknown or not self.colour_spaces:
            raise ValueError(f"colour_spaces must be some of {COLOUR_SPACES}, got {unknown}")
        if not self.ks or min(self.ks) <= 0:
            raise ValueError(f"ks must be positive Felzenszwalb thresholds, got {self.ks}")
        for measures in self.similarities:
            if not measures or set(measures) - set(MEASURES) or len(set(measures)) < len(measures):
                raise ValueError(f"a similarity is distinct letters of {MEASURES!r}: {measures!r}")
        if not self.similarities:
            raise ValueError("similarities must name at least one combination, e.g. 'CTSF'")

    @classmethod
    def for_mode(cls, mode: str) -> SelectiveSearchConfig:
        """The paper's "fast" or "quality" settings."""
        if mode == "fast":
            return cls()
        if mode == "quality":
            return cls(COLOUR_SPACES, (50, 100, 150, 300), ("CTSF", "TSF", "F", "S"))
        raise ValueError(f"mode must be 'fast' or 'quality', got {mode!r}")


def selective_search(
    image: np.ndarray | Tensor,
    mode: str = "fast",
    *,
    config: SelectiveSearchConfig | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> Tensor:
    """Selective search proposals of one image, ranked best first.

    image: uint8 RGB, numpy (H, W, 3) or tensor (3, H, W). mode: "fast" or "quality" (ignored
    when ``config`` is given). seed: of the ranking's RND; the same image, settings and seed
    give the same boxes, whatever ``threads``. threads: threads to spread the colour spaces
    over (default: torch's thread count, 1 in the proposal cache's worker processes);
    scikit-image's segmentation releases the GIL, so 2 threads take 0.47-0.54 s for a
    500x375 image where one takes 0.73-0.90 s on this machine.
    Returns (P, 4) float32 xyxy pixel boxes, best first, all distinct.
    """
    rgb = _as_rgb_array(image)
    config = config if config is not None else SelectiveSearchConfig.for_mode(mode)
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        return torch.zeros((0, 4))
    # 1-3. one hierarchy per colour space x k x similarity (§3.2); colour spaces in parallel
    jobs = [(rgb, space, config) for space in config.colour_spaces]
    threads = min(torch.get_num_threads() if threads is None else threads, len(jobs))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            per_space = list(pool.map(_hierarchies_of_colour_space, *zip(*jobs, strict=True)))
    else:
        per_space = [_hierarchies_of_colour_space(*job) for job in jobs]
    # 4. combine the hierarchies by pseudo-random rank (§3.3), then drop the tiny boxes
    ranked = rank_boxes(
        [hierarchy for hierarchies in per_space for hierarchy in hierarchies],
        np.random.default_rng(seed),
    )
    boxes = torch.from_numpy(ranked.astype(np.float32))
    return boxes[remove_small_boxes(boxes, config.min_box_fraction * width)]


def _as_rgb_array(image: np.ndarray | Tensor) -> np.ndarray:
    """uint8 (H, W, 3) numpy from uint8 numpy (H, W, 3) or tensor (3, H, W)."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W) RGB, got {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image array must be (H, W, 3) RGB, got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    return np.ascontiguousarray(image)


def _hierarchies_of_colour_space(
    rgb: np.ndarray, space: str, config: SelectiveSearchConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes (M, 4), ranks j (M,)) of every hierarchy of one colour space, k by k."""
    image = colour_space_image(rgb, space)  # (H, W, C) uint8
    colour = colour_columns(image)
    texture = texture_entries(image) if any("T" in m for m in config.similarities) else None
    segment_this = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    hierarchies = []
    for k in config.ks:
        # 1. initial regions: Felzenszwalb-Huttenlocher, minimum segment size k
        labels = felzenszwalb(segment_this, scale=k, sigma=config.sigma, min_size=k)
        regions = initial_regions(labels, colour, texture)
        count = len(regions.sizes)
        hierarchies.append((regions.boxes, np.full(count, count)))
        # 2. one hierarchical grouping per similarity combination
        pairs = region_adjacency(labels)
        for measures in config.similarities:
            merged = group_hierarchically(regions, pairs, measures)  # in the order formed
            hierarchies.append((merged, np.arange(len(merged), 0, -1)))  # last formed: j = 1
    return hierarchies


def rank_boxes(
    hierarchies: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
) -> np.ndarray:
    """§3.3: the boxes (M_h, 4) of all hierarchies, with ranks j (M_h,), sorted by j * RND
    ascending (RND drawn from ``rng`` in the order given); a duplicate keeps its best place."""
    boxes = np.concatenate([boxes for boxes, _ in hierarchies])
    ranks = np.concatenate([ranks for _, ranks in hierarchies])
    order = np.argsort(ranks * rng.random(len(ranks)), kind="stable")
    boxes = boxes[order]
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


# ---------------------------------------------------------------------------------------------
# Pixels: colour spaces and the per-pixel histogram bins of colour and texture


def colour_space_image(rgb: np.ndarray, space: str) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 (H, W, C) in ``space`` (one of ``COLOUR_SPACES``)."""
    if space in ("HSV", "H"):
        hsv = [_to_uint8(channel * 255) for channel in _hsv(rgb)]
        return np.stack(hsv if space == "HSV" else hsv[:1], axis=2)
    if space == "Lab":
        lab = rgb2lab(rgb)  # L in [0, 100], a and b in about [-128, 127]
        return _to_uint8(lab * [255 / 100, 1, 1] + [0, 128, 128])
    if space == "rgI":
        total = rgb.sum(axis=2, keepdims=True, dtype=np.float32)
        chromaticity = rgb[..., :2] / np.maximum(total, 1)  # r = R / (R+G+B), g = G / (R+G+B)
        return _to_uint8(np.concatenate([chromaticity * 255, _intensity(rgb)], axis=2))
    if space == "I":
        return _to_uint8(_intensity(rgb))
    raise ValueError(f"unknown colour space {space!r}; choose from {COLOUR_SPACES}")


def _hsv(rgb: np.ndarray) -> list[np.ndarray]:
    """uint8 RGB (H, W, 3) -> float32 hue, saturation and value (H, W), each in [0, 1]."""
    red, green, blue = np.moveaxis(rgb, 2, 0).astype(np.float32)  # (H, W, 3) -> 3 x (H, W)
    value = np.maximum(np.maximum(red, green), blue)
    chroma = value - np.minimum(np.minimum(red, green), blue)
    # hue in sixths of the circle: from red (max R), green (max G: 2 + ...) or blue (4 + ...)
    from_red, from_green = value == red, value == green
    sixths = np.where(from_red, green - blue, np.where(from_green, blue - red, red - green))
    sixths /= np.where(chroma > 0, chroma, 1)  # grey pixels: hue and saturation 0
    sixths += np.where(from_red, 0, np.where(from_green, 2, 4)).astype(np.float32)
    hue = np.where(chroma > 0, (sixths / 6) % 1, 0)
    saturation = chroma / np.where(value > 0, value, 1)
    return [hue, saturation, value / 255]


def _intensity(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1) float32 grey level 0.299 R + 0.587 G + 0.114 B (as MATLAB's rgb2gray)."""
    return rgb.astype(np.float32) @ np.array([[0.299], [0.587], [0.114]], np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def colour_columns(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> (C, H*W) int64: each pixel's column in the colour histogram,
    channel c * 25 + bin, the bins splitting [0, 256) in 25 equal parts."""
    bins = (image.astype(np.int64) * COLOUR_BINS) >> 8
    bins += np.arange(image.shape[2]) * COLOUR_BINS  # channel c's bins start at c * 25
    return np.moveaxis(bins, 2, 0).reshape(image.shape[2], -1)  # (H, W, C) -> (C, H*W)


@dataclass(frozen=True)
class TextureEntries:
    """The entries of an image's texture histogram that are not in bin 0: M of the 8*C*N
    (about 6 %, as most derivatives are small beside the image's largest; a region's bin-0
    counts follow from its size).

    pixels (M,) int64 flat pixel indices; columns (M,) int64 feature f * 10 + bin, bin 1..9,
    for the 8*C features (orientation, channel); features: 8*C.
    """

    pixels: np.ndarray
    columns: np.ndarray
    features: int


def texture_entries(image: np.ndarray) -> TextureEntries:
    """The texture histogram columns of the pixels of a uint8 (H, W, C) image, bin 0 left out.

    Gaussian derivatives (sigma = 1) in 8 orientations per channel: the first derivative
    steered to 0, 45, 90 and 135 degrees, split into its positive part and its negated
    negative part (the derivative at theta + 180 degrees). A channel's 8 response maps are
    divided by their common maximum over the image (keeping the orientations' relative
    strengths) and cut into 10 equal bins. A steered derivative has one of its two parts 0:
    binned with its sign, it gives the bin of the other part.
    """
    channels = np.moveaxis(image, 2, 0).astype(np.float32)  # (H, W, C) -> (C, H, W)
    d_x, d_y = _gaussian_gradient(channels, TEXTURE_SIGMA)
    angles = np.deg2rad(np.arange(TEXTURE_ORIENTATIONS // 2) * 45.0).astype(np.float32)
    steered = np.empty((len(angles), *d_x.shape), np.float32)  # (4, C, H, W)
    for out, cos, sin in zip(steered, np.cos(angles), np.sin(angles), strict=True):
        np.multiply(cos, d_x, out=out)
        out += sin * d_y
    peak = np.maximum(steered.max(axis=(0, 2, 3)), -steered.min(axis=(0, 2, 3)))  # (C,)
    steered *= np.divide(TEXTURE_BINS, peak, out=np.zeros_like(peak), where=peak > 0)[:, None, None]
    signed = steered.astype(np.int8).reshape(len(steered) * len(channels), -1)  # (4*C, H*W)
    np.clip(signed, 1 - TEXTURE_BINS, TEXTURE_BINS - 1, out=signed)  # the peak: the last bin
    entries = np.flatnonzero(signed != 0)
    pair, pixels = np.divmod(entries, signed.shape[1])  # pair: orientation (of 4), channel
    bins = signed.ravel()[entries]
    features = np.where(bins > 0, pair, pair + len(signed))  # negative: the opposite orientation
    return TextureEntries(pixels, features * TEXTURE_BINS + np.abs(bins), 2 * len(signed))


def _gaussian_gradient(channels: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) -> d/dx and d/dy of the image smoothed by a Gaussian of ``sigma``, separably."""
    offsets = np.arange(-int(np.ceil(4 * sigma)), int(np.ceil(4 * sigma)) + 1)
    gauss = np.exp(-(offsets**2) / (2 * sigma**2))
    gauss /= gauss.sum()
    derivative = offsets / sigma**2 * gauss  # correlating with this differentiates the blur
    gauss, derivative = gauss.astype(np.float32), derivative.astype(np.float32)
    d_x = _correlate(_correlate(channels, gauss, axis=1), derivative, axis=2)
    d_y = _correlate(_correlate(channels, gauss, axis=2), derivative, axis=1)
    return d_x, d_y


def _correlate(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Correlate ``values`` along ``axis`` with an odd-length kernel, mirrored at the ends."""
    radius, length = len(kernel) // 2, values.shape[axis]
    padding = [(0, 0)] * values.ndim
    padding[axis] = (radius, radius)
    padded = np.moveaxis(np.pad(values, padding, mode="symmetric"), axis, 0)
    out = kernel[0] * padded[:length]
    for shift in range(1, len(kernel)):
        out += kernel[shift] * padded[shift : shift + length]
    return np.moveaxis(out, 0, axis)


# ---------------------------------------------------------------------------------------------
# Regions: the statistics of the initial regions and their neighbours


@dataclass(frozen=True)
class Regions:
    """The R initial regions of one segmentation.

    sizes (R,) int64 pixel counts; boxes (R, 4) int64 xyxy; colour (R, C*25) and texture
    (R, 8*C*10) float32 histograms, L1-normalised (texture None when no similarity uses it);
    image_area: H * W.
    """

    sizes: np.ndarray
    boxes: np.ndarray
    colour: np.ndarray
    texture: np.ndarray | None
    image_area: int


def initial_regions(
    labels: np.ndarray, colour: np.ndarray, texture: TextureEntries | None
) -> Regions:
    """Regions of a label image (H, W) with labels 0..R-1, from its pixels' histogram columns
    (``colour_columns`` (C, H*W) and ``texture_entries`` or None)."""
    flat = labels.ravel()
    count = int(flat.max()) + 1
    sizes = np.bincount(flat, minlength=count)
    return Regions(
        sizes=sizes,
        boxes=region_boxes(labels, count),
        colour=colour_histograms(flat, colour, count),
        texture=None if texture is None else texture_histograms(flat, texture, sizes),
        image_area=labels.size,
    )


def colour_histograms(labels: np.ndarray, colour: np.ndarray, count: int) -> np.ndarray:
    """(R, C*25) float32 L1-normalised colour histograms of the regions 0..R-1, from the
    pixels' labels (N,) and columns (C, N): one ``np.bincount`` over all of them."""
    width = len(colour) * COLOUR_BINS
    index = labels * width + colour  # (C, N): row = region, column = (channel, bin)
    return _normalised(np.bincount(index.ravel(), minlength=count * width).reshape(count, width))


def texture_histograms(
    labels: np.ndarray, texture: TextureEntries, sizes: np.ndarray
) -> np.ndarray:
    """(R, 8*C*10) float32 L1-normalised texture histograms of the regions 0..R-1, from the
    pixels' labels (N,), the entries above bin 0 and the regions' sizes (R,): each feature's
    bin 0 holds the region's pixels not counted in its other bins."""
    count, width = len(sizes), texture.features * TEXTURE_BINS
    index = labels[texture.pixels] * width + texture.columns  # (M,)
    counts = np.bincount(index, minlength=count * width).reshape(count, -1, TEXTURE_BINS)
    counts[:, :, 0] = sizes[:, None] - counts.sum(axis=2)  # (R, 8*C, 10)
    return _normalised(counts.reshape(count, width))


def _normalised(counts: np.ndarray) -> np.ndarray:
    """(R, D) counts -> float32, each row divided by its sum."""
    counts = counts.astype(np.float32)
    return counts / counts.sum(axis=1, keepdims=True)


def region_boxes(labels: np.ndarray, count: int) -> np.ndarray:
    """(R, 4) int64 xyxy boxes of the regions 0..R-1 of a label image (H, W)."""
    height, width = labels.shape
    rows, cols = np.indices(labels.shape).reshape(2, -1)
    flat = labels.ravel()
    boxes = np.tile(np.array([width, height, 0, 0], dtype=np.int64), (count, 1))
    np.minimum.at(boxes[:, 0], flat, cols)
    np.minimum.at(boxes[:, 1], flat, rows)
    np.maximum.at(boxes[:, 2], flat, cols + 1)
    np.maximum.at(boxes[:, 3], flat, rows + 1)
    return boxes


def region_adjacency(labels: np.ndarray) -> np.ndarray:
    """(E, 2) int64 pairs (a < b) of regions that touch, 8-connected like the segmentation,
    in lexicographic order."""
    count = int(labels.max()) + 1
    touching = np.zeros((count, count), bool)  # [a, b], a <= b: pixels of a and b touch
    for first, second in (
        (labels[:, :-1], labels[:, 1:]),  # left - right
        (labels[:-1, :], labels[1:, :]),  # up - down
        (labels[:-1, :-1], labels[1:, 1:]),  # up left - down right
        (labels[:-1, 1:], labels[1:, :-1]),  # up right - down left
    ):
        touching.ravel()[np.minimum(first, second) * count + np.maximum(first, second)] = True
    np.fill_diagonal(touching, False)  # [a, a]: a region's own pixels
    return np.argwhere(touching)


# ---------------------------------------------------------------------------------------------
# Similarities (§3.2) and merging (§3.1)


def histogram_intersection(hist_a: np.ndarray, hist_b: np.ndarray) -> np.ndarray:
    """s_colour and s_texture: sum_k min(a_k, b_k) of L1-normalised (..., D) histograms."""
    return np.minimum(hist_a, hist_b).sum(axis=-1)


def size_similarity(size_a, size_b, image_area: float):
    """s_size = 1 - (size(a) + size(b)) / size(image): small regions merge early."""
    return 1.0 - (size_a + size_b) / image_area


def fill_similarity(size_a, size_b, box_area, image_area: float):
    """s_fill = 1 - (size(BB_ab) - size(a) - size(b)) / size(image): regions that fill each
    other's gaps merge early. BB_ab is the tight box around both, of area ``box_area``."""
    return 1.0 - (box_area - size_a - size_b) / image_area


def tight_box_area(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """size(BB_ab) for boxes (..., 4): max(x2, y2) - min(x1, y1) over a and b, multiplied."""
    extent = np.maximum(box_a[..., 2:], box_b[..., 2:]) - np.minimum(box_a[..., :2], box_b[..., :2])
    return extent[..., 0] * extent[..., 1]


def merge_histograms(hist_a: np.ndarray, size_a, hist_b: np.ndarray, size_b) -> np.ndarray:
    """The histogram of a ∪ b from theirs: (size(a) a + size(b) b) / (size(a) + size(b)),
    computed in float64."""
    size_a, size_b = np.float64(size_a), np.float64(size_b)
    return (size_a * hist_a + size_b * hist_b) / (size_a + size_b)


def pair_similarities(
    regions: Regions, histograms: np.ndarray | None, pairs: np.ndarray, measures: str
) -> np.ndarray:
    """(E,) float64 s(a, b) of the pairs (E, 2) of initial regions: the sum of the enabled
    measures, the colour and texture ones as the intersection of ``histograms`` (R, D)."""
    a, b = pairs[:, 0], pairs[:, 1]
    sizes, boxes, area = regions.sizes, regions.boxes, float(regions.image_area)
    terms = [] if histograms is None else [histogram_intersection(histograms[a], histograms[b])]
    if "S" in measures:
        terms.append(size_similarity(sizes[a], sizes[b], area))
    if "F" in measures:
        terms.append(fill_similarity(sizes[a], sizes[b], tight_box_area(boxes[a], boxes[b]), area))
    return sum(terms[1:], start=terms[0])


class _Grouping:
    """Sizes, boxes and histograms of the regions of one hierarchy: R initial, then merged.

    The histograms of the enabled measures are concatenated: the intersection of the
    concatenation is s_colour + s_texture, as both halves are L1-normalised. Sizes and boxes
    are Python numbers: the grouping reads them a few regions at a time, where numpy's
    per-call cost would be most of the work.
    """

    def __init__(self, regions: Regions, measures: str):
        count = len(regions.sizes)
        self.size_term, self.fill_term = "S" in measures, "F" in measures
        self.image_area = float(regions.image_area)
        self.sizes: list[float] = regions.sizes.astype(float).tolist()
        self.boxes: list[tuple[int, ...]] = [tuple(box) for box in regions.boxes.tolist()]
        parts = [h for m, h in (("C", regions.colour), ("T", regions.texture)) if m in measures]
        self.histograms = None
        if parts:
            # R initial regions and R - 1 merges
            self.histograms = np.zeros((2 * count - 1, sum(p.shape[1] for p in parts)), np.float32)
            self.histograms[:count] = np.concatenate(parts, axis=1)

    def similarities(self, t: int, others: list[int]) -> list[float]:
        """s(t, n) for the regions n of ``others``: the sum of the enabled measures, added
        in the order of ``pair_similarities``, so that both give a pair the same value."""
        if self.histograms is None:
            values = [0.0] * len(others)
        else:
            neighbours = self.histograms.take(others, axis=0)  # (len(others), D)
            values = histogram_intersection(neighbours, self.histograms[t]).tolist()
        sizes, boxes, area = self.sizes, self.boxes, self.image_area
        size_t, (x1, y1, x2, y2) = sizes[t], boxes[t]
        for i, n in enumerate(others):
            size_n = sizes[n]
            if self.size_term:
                values[i] += size_similarity(size_t, size_n, area)
            if self.fill_term:
                # the tight box around t and n, with conditional expressions: min() and
                # max() calls would add about 15 % to the grouping's time
                u1, v1, u2, v2 = boxes[n]
                width = (x2 if x2 > u2 else u2) - (x1 if x1 < u1 else u1)
                height = (y2 if y2 > v2 else v2) - (y1 if y1 < v1 else v1)
                values[i] += fill_similarity(size_t, size_n, width * height, area)
        return values

    def merge(self, a: int, b: int) -> int:
        """Form region t = a ∪ b from its parts' statistics alone; returns t."""
        t = len(self.sizes)
        size_a, size_b = self.sizes[a], self.sizes[b]
        self.sizes.append(size_a + size_b)
        (x1, y1, x2, y2), (u1, v1, u2, v2) = self.boxes[a], self.boxes[b]
        self.boxes.append((min(x1, u1), min(y1, v1), max(x2, u2), max(y2, v2)))  # around both
        if self.histograms is not None:
            self.histograms[t] = merge_histograms(
                self.histograms[a], size_a, self.histograms[b], size_b
            )
        return t


def group_hierarchically(regions: Regions, pairs: np.ndarray, measures: str) -> np.ndarray:
    """Algorithm 1 of the paper: merge the most similar neighbours until one region is left.

    regions: the R initial regions; pairs (E, 2): neighbouring regions; measures: letters of
    "CTSF". Returns the (R - 1, 4) int64 boxes of the merged regions, in the order formed
    (fewer when the neighbours do not connect all regions).
    """
    grouping = _Grouping(regions, measures)
    count = len(regions.sizes)
    neighbours: list[set[int]] = [set() for _ in range(2 * count - 1)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    # S: a max-heap of (similarity, a, b) over neighbouring pairs; pairs of regions merged
    # away are skipped when they surface (lazy invalidation)
    initial = grouping.histograms[:count] if grouping.histograms is not None else None
    similarities = pair_similarities(regions, initial, pairs, measures)
    heap = list(zip((-similarities).tolist(), *pairs.T.tolist(), strict=True))
    heapq.heapify(heap)
    alive = [True] * len(neighbours)
    pop, push = heapq.heappop, heapq.heappush
    while heap and len(grouping.sizes) < len(neighbours):  # then only stale pairs are left
        _, a, b = pop(heap)
        if not (alive[a] and alive[b]):
            continue
        # merge the most similar pair into t; t's neighbours are those of a and b
        t = grouping.merge(a, b)
        alive[a] = alive[b] = False
        around = neighbours[a] | neighbours[b]
        around.discard(a)
        around.discard(b)
        neighbours[t] = around
        for n in around:
            around_n = neighbours[n]
            around_n.discard(a)
            around_n.discard(b)
            around_n.add(t)
        # add the similarities between t and its neighbours
        others = list(around)
        for similarity, n in zip(grouping.similarities(t, others), others, strict=True):
            push(heap, (-similarity, t, n))
    return np.array(grouping.boxes[count:], dtype=np.int64).reshape(-1, 4)
