"""The built-in ``shapes`` set: a synthetic detection task generated on the fly, no files.

Every image is a pure function of ``(seed, split, index)``: its random stream is seeded with
those three numbers, so any image can be regenerated exactly, in any process, in any order,
and the train, val and test streams never share an image.

An image (shorter side 240-320 px, aspect 3:4 to 4:3) has a textured background (a colour
gradient or soft blotches, sometimes stripes, always sensor-like noise), non-object clutter
(lines, scribbles, open arcs, paint splats) and 1-8 objects of 8 classes, filled or outlined, in
contrasting colours, sizes log-uniform from 12 px to 80% of the shorter side, with rotations
and (where the class allows it) varied aspect ratios. Objects may overlap or leave the image,
but each keeps at least 60% of its pixels visible, and its box is the tight box of its
VISIBLE pixels (as the VOC guidelines ask), on integer pixel edges.

Each class stays unambiguous at every size it is drawn at: an ellipse's axes differ by at
least 1.7x, small sizes are reserved for the classes that read at that size (crosses,
stars, hearts and hexagons start at 18-20 px), outlines (at least 2 px) only appear from
24 px, and no clutter is closed and regular like a class (arcs stop at half a circle).
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from rcnn.data.dataset import DetectionDataset, Sample, make_annotation
from rcnn.errors import RcnnError
from rcnn.structures import Annotation

# Sorted, as the VOC reader sorts the names it finds: written and read back, labels agree.
CLASS_NAMES = ("circle", "cross", "ellipse", "heart", "hexagon", "square", "star", "triangle")
# Smallest size (px, along the shape's longer axis) at which each class is still readable.
MIN_SIZES = {"circle": 12, "cross": 18, "ellipse": 14, "heart": 18, "hexagon": 20,
             "square": 12, "star": 18, "triangle": 12}  # fmt: skip
# Each split draws from its own random stream.
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 2000, "val": 300, "test": 300}


@dataclass(frozen=True)
class ShapesConfig:
    """How the images are drawn. Sizes in pixels; ranges are inclusive (low, high)."""

    short_side: tuple[int, int] = (240, 320)
    max_aspect: float = 4 / 3
    objects: tuple[int, int] = (1, 8)
    min_object_size: float = 12.0
    max_object_fraction: float = 0.8  # of the shorter side
    min_visible: float = 0.6  # fraction of an object's pixels left visible by occluders
    outline_min_size: float = 24.0
    outline_fraction: float = 0.35
    clutter: tuple[int, int] = (2, 8)
    placement_tries: int = 25


class ShapesDataset(DetectionDataset):
    """One split of the shapes set: ``size`` images (default 2,000 train, 300 val/test).

    image_id(i) is ``{split}_{i:06d}``; image_path(i) is ``shapes:{split}/{i:06d}``.
    annotation(i) renders the image once (the boxes are those of the visible pixels) and
    keeps the result; it takes a few milliseconds.
    """

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        config: ShapesConfig | None = None,
        on_bad_sample: str = "error",
    ):
        if split not in SPLIT_STREAMS:
            raise RcnnError(f"shapes: no split {split!r}; splits: {', '.join(SPLIT_STREAMS)}")
        if seed < 0 or (size is not None and size < 0):
            raise RcnnError(f"shapes: seed and size must be >= 0, got seed={seed}, size={size}")
        super().__init__(split, CLASS_NAMES, on_bad_sample)
        self.size = DEFAULT_SIZES[split] if size is None else size
        self.seed = seed
        self.config = config or ShapesConfig()
        self._annotations: dict[int, Annotation] = {}

    def __len__(self) -> int:
        return self.size

    def image_id(self, i: int) -> str:
        return f"{self.split}_{self._check(i):06d}"

    def image_path(self, i: int) -> str:
        return f"shapes:{self.split}/{self._check(i):06d}"

    def image_size(self, i: int) -> tuple[int, int]:
        return _image_size(self._rng(i), self.config)

    def annotation(self, i: int) -> Annotation:
        if i not in self._annotations:
            self._generate(i)
        return self._annotations[i]

    def load_image(self, i: int) -> Tensor:
        return self._generate(i)[0]

    def __getitem__(self, i: int) -> Sample:
        image, annotation = self._generate(i)
        return Sample(image, annotation, i)

    def _generate(self, i: int) -> tuple[Tensor, Annotation]:
        image, annotation = render_shapes(self._rng(i), self.config)
        self._annotations[i] = annotation
        return image, annotation

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], self._check(i)])

    def _check(self, i: int) -> int:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} shapes images")
        return i


def render_shapes(rng: np.random.Generator, config: ShapesConfig) -> tuple[Tensor, Annotation]:
    """Draw one image -> (uint8 (3, H, W) RGB, its Annotation). The steps, in order:"""
    height, width = _image_size(rng, config)
    # 1. a textured background, then clutter that belongs to no class
    canvas = _background(rng, height, width)
    for _ in range(rng.integers(config.clutter[0], config.clutter[1] + 1)):
        _paint(canvas, _clutter(rng, canvas.shape), _random_colour(rng))
    # 2. objects, back to front, each placed where it leaves every object visible enough
    scene = _Scene(canvas, config)
    for _ in range(rng.integers(config.objects[0], config.objects[1] + 1)):
        scene.add_object(rng)
    # 3. a few thin lines over everything (occluders too), then noise over the whole image
    for _ in range(rng.integers(0, 3)):
        scene.add_occluder(rng)
    canvas += _noise(rng, height, width)
    # (H, W, 3) -> (3, H, W), in NumPy: a small torch copy may wait for its thread pool
    image = np.ascontiguousarray(
        canvas.clip(0, 255, out=canvas).astype(np.uint8).transpose(2, 0, 1)
    )
    return torch.from_numpy(image), scene.annotation()


def _image_size(rng: np.random.Generator, config: ShapesConfig) -> tuple[int, int]:
    """(H, W): the first draws of an image's stream, so that the size needs no rendering."""
    short = int(rng.integers(config.short_side[0], config.short_side[1] + 1))
    long = round(short * math.exp(rng.uniform(0.0, math.log(config.max_aspect))))
    return (short, long) if rng.random() < 0.5 else (long, short)


@dataclass(frozen=True)
class _Footprint:
    """Pixels of one drawn thing, as far as they fall in the image: ``region`` is the
    (rows, columns) window of the image it touches, ``inside`` (h, w) bool its pixels there,
    ``full`` the number of its pixels in all (also those outside the image)."""

    region: tuple[slice, slice]
    inside: np.ndarray
    full: int


class _Scene:
    """The objects of one image as they are placed: who is on top of each pixel, how much
    of each object is still visible, and finally the boxes of the visible pixels."""

    def __init__(self, canvas: np.ndarray, config: ShapesConfig):
        self.canvas, self.config = canvas, config
        # owner[y, x] = k + 1 for the object k on top at that pixel, 0 where there is none
        self.owner = np.zeros(canvas.shape[:2], np.uint8)
        self.labels: list[int] = []
        self.footprints: list[_Footprint] = []
        self.visible: list[int] = []  # pixels of each object in the image and on top

    def add_object(self, rng: np.random.Generator) -> None:
        """Try a few placements of one random object; keep the first that hides nothing much."""
        label, polygon, outline = _random_shape(rng, self.canvas.shape, self.config)
        height, width = self.canvas.shape[:2]
        for _ in range(self.config.placement_tries):
            centre = rng.uniform(0.1, 0.9, 2) * (width, height)
            footprint = _rasterize(polygon + centre, self.canvas.shape, outline)
            hidden = self._hidden_by(footprint)
            if hidden is not None and footprint.inside.sum() >= self._needed(footprint.full):
                self._subtract(hidden)
                under = self.canvas[footprint.region][footprint.inside]
                self.labels.append(label)
                self.footprints.append(footprint)
                self.visible.append(int(footprint.inside.sum()))
                _paint(self.canvas, footprint, _contrasting_colour(rng, under))
                self.owner[footprint.region][footprint.inside] = len(self.labels)
                return

    def add_occluder(self, rng: np.random.Generator) -> None:
        """A thin line over the objects, drawn only if every object stays visible enough."""
        height, width = self.canvas.shape[:2]
        ends = rng.uniform(0, 1, (2, 2)) * (width, height)
        footprint = _rasterize(ends, self.canvas.shape, int(rng.integers(1, 3)), closed=False)
        hidden = self._hidden_by(footprint)
        if hidden is not None:
            self._subtract(hidden)
            _paint(self.canvas, footprint, _random_colour(rng))
            self.owner[footprint.region][footprint.inside] = 0

    def annotation(self) -> Annotation:
        """Tight boxes of the visible pixels, on pixel edges, and labels 1..K."""
        boxes = []
        for k, footprint in enumerate(self.footprints):
            rows, columns = footprint.region
            ys, xs = np.nonzero(self.owner[footprint.region] == k + 1)
            # pixel (x, y) covers [x, x + 1) x [y, y + 1)
            boxes.append([columns.start + xs.min(), rows.start + ys.min(),
                          columns.start + xs.max() + 1, rows.start + ys.max() + 1])  # fmt: skip
        return make_annotation(boxes, self.labels, [False] * len(boxes))

    def _hidden_by(self, footprint: _Footprint) -> np.ndarray | None:
        """Pixels each object would lose under ``footprint``, or None if that would leave one
        below the visible fraction."""
        covered = self.owner[footprint.region][footprint.inside]
        hidden = np.bincount(covered, minlength=len(self.labels) + 1)[1:]
        for k, lost in enumerate(hidden):
            if self.visible[k] - lost < self._needed(self.footprints[k].full):
                return None
        return hidden

    def _needed(self, full: int) -> float:
        return self.config.min_visible * full

    def _subtract(self, hidden: np.ndarray) -> None:
        self.visible = [v - int(h) for v, h in zip(self.visible, hidden, strict=True)]


def _random_shape(rng: np.random.Generator, image_shape, config: ShapesConfig):
    """(label in 1..K, polygon (V, 2) centred on 0 in pixels, outline width or 0 if filled)."""
    label = int(rng.integers(len(CLASS_NAMES))) + 1
    name = CLASS_NAMES[label - 1]
    low = max(config.min_object_size, MIN_SIZES[name])
    high = max(low, config.max_object_fraction * min(image_shape[:2]))
    size = math.exp(rng.uniform(math.log(low), math.log(high)))
    angle = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    polygon = _unit_polygon(name, rng) * (size / 2) @ rotation.T
    outline = 0
    if size >= config.outline_min_size and rng.random() < config.outline_fraction:
        outline = max(2, round(size * rng.uniform(0.06, 0.12)))
    return label, polygon, outline


def _unit_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """(V, 2) outline of a class's shape, its longer axis spanning [-1, 1]."""
    if name in ("circle", "ellipse"):
        minor = 1.0 if name == "circle" else 1.0 / rng.uniform(1.7, 2.6)
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        return np.stack([np.cos(t), minor * np.sin(t)], axis=1)
    if name == "square":
        return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    if name == "triangle":
        half_height, apex = rng.uniform(0.55, 1.0), rng.uniform(-0.5, 0.5)
        return np.array([[-1.0, half_height], [1.0, half_height], [apex, -half_height]])
    if name in ("star", "hexagon"):
        corners = 5 if name == "star" else 6
        radii = [1.0, rng.uniform(0.38, 0.5)] * corners if name == "star" else [1.0] * 6
        t = np.linspace(0, 2 * math.pi, len(radii), endpoint=False) - math.pi / 2
        return np.stack([np.cos(t), np.sin(t)], axis=1) * np.array(radii)[:, None]
    if name == "cross":
        arm, stretch = rng.uniform(0.28, 0.4), rng.uniform(0.7, 1.0)
        return _plus_sign(arm) * (1.0, stretch)
    return _heart()


def _plus_sign(arm: float) -> np.ndarray:
    """(12, 2) plus sign of half arm width ``arm``, spanning [-1, 1] both ways."""
    a = arm
    return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
                     [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]], float)  # fmt: skip


def _heart() -> np.ndarray:
    """(60, 2) the classic parametric heart, point down, spanning [-1, 1] across."""
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1)
    return (points - points.mean(axis=0)) / 16.0


def _rasterize(points: np.ndarray, image_shape, outline: int = 0, closed: bool = True):
    """The _Footprint of a polygon (closed) or polyline (V, 2) in image pixels; ``outline``:
    line width (0: filled polygon)."""
    pad = outline + 1
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + pad
    canvas = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    local = [tuple(p) for p in (points - (x0, y0)).tolist()]
    draw = ImageDraw.Draw(canvas)
    if not closed:
        draw.line(local, fill=1, width=outline, joint="curve")
    elif outline:
        draw.polygon(local, outline=1, width=outline)
    else:
        draw.polygon(local, fill=1)
    mask = np.asarray(canvas, dtype=bool)
    height, width = image_shape[:2]
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y1, height), min(x1, width)
    inside = mask[top - y0 : max(bottom, top) - y0, left - x0 : max(right, left) - x0]
    return _Footprint(
        (slice(top, max(bottom, top)), slice(left, max(right, left))), inside, int(mask.sum())
    )


def _paint(canvas: np.ndarray, footprint: _Footprint, colour: np.ndarray) -> None:
    """Fill the footprint's pixels of the (H, W, 3) float32 canvas with ``colour`` (3,)."""
    canvas[footprint.region][footprint.inside] = colour


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32: a colour gradient or soft blotches, sometimes with stripes over it.
    Both are drawn on a coarse grid and resized (bilinear resizing keeps a gradient exact)."""
    if rng.random() < 0.5:
        ramp = _projection(16, 16, rng.uniform(0, 2 * math.pi))
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        start, end = _random_colour(rng), _random_colour(rng)
        grid, resample = start + ramp[..., None] * (end - start), Image.Resampling.BILINEAR
    else:
        grid = rng.uniform(0, 255, (rng.integers(2, 6), rng.integers(2, 6), 3))
        resample = Image.Resampling.BICUBIC
    coarse = Image.fromarray(grid.round().astype(np.uint8))
    canvas = np.asarray(coarse.resize((width, height), resample), dtype=np.float32)
    if rng.random() < 0.4:
        half_period = rng.uniform(3, 20)
        phase = _projection(height, width, rng.uniform(0, math.pi)) / half_period
        stripes = (phase.astype(np.int32) & 1).astype(np.float32) * rng.uniform(0.15, 0.45)
        canvas = canvas + stripes[..., None] * (_random_colour(rng) - canvas)
    return np.array(canvas, dtype=np.float32)


def _projection(height: int, width: int, angle: float) -> np.ndarray:
    """(H, W) float32: each pixel's position along the direction ``angle`` (plus an offset
    that keeps it positive)."""
    xs = np.arange(width, dtype=np.float32) * math.cos(angle)
    ys = np.arange(height, dtype=np.float32) * math.sin(angle)
    return ys[:, None] + xs[None, :] + (height + width)


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 sensor-like Gaussian noise of a random strength: a window of a fixed
    noise tile at a random offset (drawing fresh normals would triple the rendering time)."""
    tile = _noise_tile()
    if height > tile.shape[0] or width > tile.shape[1]:
        tile = np.tile(tile, (height // tile.shape[0] + 1, width // tile.shape[1] + 1, 1))
    top = rng.integers(tile.shape[0] - height + 1)
    left = rng.integers(tile.shape[1] - width + 1)
    return tile[top : top + height, left : left + width] * np.float32(rng.uniform(0.0, 8.0))


@functools.cache
def _noise_tile() -> np.ndarray:
    """(512, 512, 3) float32 standard normal noise, the same in every process."""
    return np.random.default_rng(0).standard_normal((512, 512, 3), dtype=np.float32)


def _clutter(rng: np.random.Generator, image_shape) -> _Footprint:
    """Something of no class: a straight line, a scribble, an open arc (at most half a
    circle) or a paint splat (many irregular spikes, unlike the five even points of a star)."""
    height, width = image_shape[:2]
    kind = rng.integers(4)
    start = rng.uniform(0, 1, 2) * (width, height)
    if kind == 0:
        end = rng.uniform(0, 1, 2) * (width, height)
        return _rasterize(np.stack([start, end]), image_shape, int(rng.integers(1, 5)), False)
    if kind == 1:
        steps = rng.normal(0, rng.uniform(8, 30), (int(rng.integers(4, 12)), 2))
        walk = start + np.cumsum(steps, axis=0)
        return _rasterize(walk, image_shape, int(rng.integers(1, 4)), closed=False)
    if kind == 2:
        t = rng.uniform(0, 2 * math.pi) + np.linspace(0, rng.uniform(0.5, 1.0) * math.pi, 24)
        arc = start + rng.uniform(10, 60) * np.stack([np.cos(t), np.sin(t)], axis=1)
        return _rasterize(arc, image_shape, int(rng.integers(1, 4)), closed=False)
    spikes = int(rng.integers(9, 15))
    t = np.sort(rng.uniform(0, 2 * math.pi, 2 * spikes))
    radii = np.where(np.arange(2 * spikes) % 2 == 0, rng.uniform(0.7, 1.0, 2 * spikes),
                     rng.uniform(0.25, 0.5, 2 * spikes)) * rng.uniform(14, 40)  # fmt: skip
    splat = start + radii[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return _rasterize(splat, image_shape)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB in 0..255: any hue, any saturation, not too dark."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0, 1) ** 0.7, rng.uniform(0.15, 1)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32) * 255


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far from the mean of the (n, 3) pixels it will cover."""
    mean = under.mean(axis=0) if len(under) else np.full(3, 128, np.float32)
    best, best_distance = None, -1.0
    for _ in range(12):
        colour = _random_colour(rng)
        distance = float(np.linalg.norm(colour - mean))
        if distance >= 110:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best
