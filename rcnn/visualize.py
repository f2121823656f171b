"""Pictures of detections: what a detector found, optionally beside what was there.

A detection is a solid box in its class's colour with a "name 0.93" tag on a filled
background; ground truth, when given, is a thin dashed box in the same colour, so a miss
or a loose box shows at a glance. Pillow only.

Shapes: H x W image, D detections, G ground-truth boxes, K object classes.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from rcnn.structures import Annotation

# the golden ratio's fraction: consecutive labels get hues far apart on the colour wheel
_GOLDEN = 0.6180339887498949
_OUTLINE = (0, 0, 0)


def class_color(label: int) -> tuple[int, int, int]:
    """A stable RGB colour for class ``label``: hues spread by the golden ratio, saturated
    and bright. Boxes also get a dark outline, so the colour reads on light and dark alike."""
    red, green, blue = colorsys.hsv_to_rgb((label * _GOLDEN) % 1.0, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def draw_detections(
    image: Tensor | Image.Image,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor | None,
    class_names: Sequence[str],
    ground_truth: Annotation | None = None,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """A copy of ``image`` (uint8 (3, H, W) tensor or PIL image) with the detections drawn.

    boxes (D, 4) pixel xyxy; labels (D,) in [1, K], named by ``class_names[label - 1]``;
    scores (D,) or None (tags then show the name only). ``ground_truth`` is drawn thin and
    dashed underneath. Line width and font size default to the image's size.
    """
    picture = _to_pil(image)
    short_side = min(picture.size)
    width = line_width or max(2, round(short_side / 200))
    font = ImageFont.load_default(size=font_size or max(10, short_side // 40))
    draw = ImageDraw.Draw(picture)
    if ground_truth is not None:
        for box, label in zip(
            ground_truth.boxes.tolist(), ground_truth.labels.tolist(), strict=True
        ):
            _dashed_rectangle(draw, box, class_color(label), max(1, width // 2))
    # lowest score first, so that the most confident boxes and tags end up on top
    order = torch.argsort(scores, stable=True) if scores is not None else torch.arange(len(boxes))
    for i in order.tolist():
        box, label = boxes[i].tolist(), int(labels[i])
        draw.rectangle(box, outline=_OUTLINE, width=width + 2)
        draw.rectangle(_shrink(box, 1), outline=class_color(label), width=width)
    for i in order.tolist():
        tag = class_names[int(labels[i]) - 1]
        if scores is not None:
            tag = f"{tag} {scores[i].item():.2f}"
        _tag(draw, boxes[i].tolist(), tag, class_color(int(labels[i])), font, picture.width)
    return picture


def _to_pil(image: Tensor | Image.Image) -> Image.Image:
    """An RGB PIL copy of a PIL image or a uint8 (3, H, W) tensor."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"draw_detections needs a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}"
        )
    # (3, H, W) -> (H, W, 3), the layout PIL reads
    return Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy())


def _shrink(box: list[float], by: float) -> list[float]:
    """The box moved inwards by ``by`` pixels on each side: the colour line drawn there
    leaves 1 px of the dark outline visible on either side of it."""
    x1, y1, x2, y2 = box
    return [x1 + by, y1 + by, max(x1 + by, x2 - by), max(y1 + by, y2 - by)]


def _tag(
    draw: ImageDraw.ImageDraw,
    box: list[float],
    text: str,
    color: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    image_width: int,
) -> None:
    """``text`` on a filled ``color`` background at the box's top-left corner: above the box
    when there is room, inside it otherwise; kept within the image's width."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, box[0]), max(0.0, image_width - tag_w))
    y = box[1] - tag_h if box[1] - tag_h >= 0 else max(0.0, box[1])
    draw.rectangle([x, y, x + tag_w, y + tag_h], fill=color)
    # dark text on light colours, light text on dark ones (ITU-R 601 luma)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)


def _dashed_rectangle(
    draw: ImageDraw.ImageDraw,
    box: list[float],
    color: tuple[int, int, int],
    width: int,
    dash: float = 6.0,
) -> None:
    """The outline of ``box`` as dashes of ``dash`` pixels with gaps of the same length."""
    x1, y1, x2, y2 = box
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1], strict=True):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for s in range(0, steps, 2):
            t0, t1 = s / steps, min(1.0, (s + 1) / steps)
            start = (ax + (bx - ax) * t0, ay + (by - ay) * t0)
            end = (ax + (bx - ax) * t1, ay + (by - ay) * t1)
            draw.line([start, end], fill=color, width=width)


NOT_LOSSES = {"stage", "epoch", "step", "seconds", "map50", "fitted"}  # log.jsonl's other keys


def plot_losses(log_path: str | Path, png_path: str | Path) -> None:
    """Training curves from a run's log.jsonl: each loss term (and mAP50 when evaluated) against
    the training step, one panel per stage; nothing is written when the log is empty."""
    log_path = Path(log_path)
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    records = [json.loads(line) for line in lines]
    stages = list(dict.fromkeys(r["stage"] for r in records))
    if not stages:
        return
    figure = Figure(figsize=(5 * len(stages), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    for column, stage in enumerate(stages, start=1):
        axes = figure.add_subplot(1, len(stages), column)
        rows = [r for r in records if r["stage"] == stage]
        keys = sorted({k for r in rows for k in r} - NOT_LOSSES)
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            axes.plot(*zip(*points, strict=True), label=key, linewidth=1)
        axes.set(title=stage, xlabel="step", ylabel="loss")
        lines = axes.get_lines()
        evaluations = [(r["step"], r["map50"]) for r in rows if "map50" in r]
        if evaluations:  # the mAP curve on its own axis, 0 to 1, in the same legend
            twin = axes.twinx()
            lines += twin.plot(*zip(*evaluations, strict=True), "ko-", label="mAP50")
            twin.set(ylabel="mAP50", ylim=(0, 1))
        if lines:
            axes.legend(handles=lines, fontsize=7)
    figure.savefig(png_path, dpi=110)
