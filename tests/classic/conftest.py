"""Small synthetic scenes with known objects, for the selective search tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from skimage import draw

HEIGHT, WIDTH = 96, 128
RECTANGLE = (20.0, 14.0, 62.0, 44.0)  # xyxy of the red rectangle
ELLIPSE = (74.0, 40.0, 118.0, 86.0)  # xyxy of the blue ellipse


def textured_scene(seed: int = 0) -> np.ndarray:
    """uint8 (96, 128, 3): a red rectangle and a blue ellipse on a noisy, striped background."""
    rng = np.random.default_rng(seed)
    stripes = 20 * np.sin(np.arange(WIDTH) / 3.0)[None, :, None]
    image = 120 + stripes + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    x1, y1, x2, y2 = (int(v) for v in RECTANGLE)
    image[y1:y2, x1:x2] = np.array([200, 40, 40]) + rng.normal(0, 8, (y2 - y1, x2 - x1, 3))
    x1, y1, x2, y2 = ELLIPSE
    rows, cols = draw.ellipse((y1 + y2 - 1) / 2, (x1 + x2 - 1) / 2, (y2 - y1) / 2, (x2 - x1) / 2)
    image[rows, cols] = np.array([40, 60, 210]) + rng.normal(0, 8, (len(rows), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    objects: tuple[tuple[float, float, float, float], ...]  # xyxy of the rectangle, the ellipse


@pytest.fixture
def scene() -> Scene:
    return Scene(textured_scene(), (RECTANGLE, ELLIPSE))


@pytest.fixture
def make_scene():
    """textured_scene(seed) for tests that need several different images."""
    return textured_scene
