"""A detector's report card: the metrics dictionary, metrics.json, the table, PR curves.

``RUN/metrics.json`` (DESIGN.md) holds:

* ``map50``: VOC all-point AP at IoU 0.5, averaged over the classes with ground truth;
  ``map50_voc07``: the same with the VOC2007 11-point AP;
* ``coco_map``: COCO AP@[.5:.95] from pycocotools; ``coco_ap50``, ``coco_ap75``,
  ``coco_ap_small``, ``coco_ap_medium``, ``coco_ap_large``, ``coco_ar100`` beside it
  (COCO's AP50 interpolates at 101 recall points, so it differs a little from ``map50``);
* ``per_class`` {name: AP50}, ``per_class_voc07`` {name: 11-point AP50},
  ``gt_per_class`` {name: non-difficult ground-truth boxes};
* ``images``: n, ``seconds_per_image``: the caller's timing of the detector.

A number that is undefined (a class without ground truth, COCO's AP of a size that does not
occur) is ``null``: JSON has no NaN.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from rcnn.errors import RcnnError
from rcnn.evaluation.coco import evaluate_coco
from rcnn.evaluation.voc_ap import VocResult, evaluate_voc, precision_envelope
from rcnn.files import write_json
from rcnn.structures import Annotation, Detections

# COCO numbers copied into metrics.json as "coco_<name>" ("ap" itself is "coco_map"),
# with the short labels the papers' tables use
COCO_KEYS = {
    "ap50": "AP50",
    "ap75": "AP75",
    "ap_small": "APs",
    "ap_medium": "APm",
    "ap_large": "APl",
    "ar100": "AR100",
}


@dataclass(frozen=True)
class Evaluation:
    """``metrics``: the content of metrics.json; ``voc``: the all-point VOC result at IoU 0.5
    with its precision/recall curves (what :func:`plot_pr_curves` draws)."""

    metrics: dict
    voc: VocResult


def evaluate_detections(
    detections: Sequence[Detections],
    annotations: Sequence[Annotation],
    class_names: Sequence[str],
    image_sizes: Sequence[tuple[int, int]],
    seconds_per_image: float,
) -> Evaluation:
    """Every metric of one test run: VOC AP (all-point and 11-point) and COCOeval.

    One Detections per Annotation, in the same order; ``image_sizes[i]`` is ``(H, W)``;
    ``seconds_per_image`` is the detector's time, measured by the caller.
    """
    if len(set(class_names)) != len(class_names):
        raise RcnnError(f"class names must be distinct, got {list(class_names)}")
    voc = evaluate_voc(detections, annotations, len(class_names))
    voc07 = voc.with_metric(use_07_metric=True)
    coco = evaluate_coco(detections, annotations, image_sizes, class_names)
    metrics = {
        "map50": _number(voc.map),
        "map50_voc07": _number(voc07.map),
        "coco_map": _number(coco["ap"]),
        **{f"coco_{name}": _number(coco[name]) for name in COCO_KEYS},
        "per_class": _by_class(class_names, voc.ap),
        "per_class_voc07": _by_class(class_names, voc07.ap),
        "gt_per_class": dict(zip(class_names, voc.num_gt.tolist(), strict=True)),
        "images": len(annotations),
        "seconds_per_image": seconds_per_image,
    }
    return Evaluation(metrics, voc)


def write_metrics(path: str | os.PathLike, metrics: dict) -> None:
    """Write ``metrics`` to ``path`` (RUN/metrics.json) atomically: temp file, fsync, rename."""
    write_json(path, metrics)


def format_table(metrics: dict) -> str:
    """The per-class table (class, GT boxes, AP50, AP50 VOC07) and the summary, aligned."""
    names = list(metrics["per_class"])
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'GT':>6}  {'AP50':>6}  {'AP50 VOC07':>10}"]
    for name in names:
        ap, ap07 = metrics["per_class"][name], metrics["per_class_voc07"][name]
        gt = metrics["gt_per_class"][name]
        note = "  (no ground truth: left out of the mean)" if ap is None else ""
        lines.append(f"{name:<{width}}  {gt:>6}  {_cell(ap):>6}  {_cell(ap07):>10}{note}")
    mean_ap, mean_ap07 = _cell(metrics["map50"]), _cell(metrics["map50_voc07"])
    lines.append(f"{'mean':<{width}}  {'':>6}  {mean_ap:>6}  {mean_ap07:>10}")
    coco = [("AP", metrics["coco_map"])]
    coco += [(label, metrics[f"coco_{name}"]) for name, label in COCO_KEYS.items()]
    lines.append("COCO  " + "  ".join(f"{label} {_cell(v)}" for label, v in coco))
    seconds = metrics["seconds_per_image"]
    lines.append(f"{metrics['images']} images, {seconds:.4f} s/image")
    return "\n".join(lines)


def plot_pr_curves(voc: VocResult, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """One PNG with a precision-recall subplot per class: the raw curve, and shaded below
    the devkit's interpolated envelope, whose area is the all-point AP."""
    columns = math.ceil(math.sqrt(len(class_names)))
    rows = math.ceil(len(class_names) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for k, (ax, name) in enumerate(zip(axes, class_names, strict=False)):
        recall, precision = voc.recall[k], voc.precision[k]
        if voc.num_gt[k] == 0:
            ax.set_title(f"{name}: no ground truth", fontsize=9)
        else:
            mrec, mpre = precision_envelope(recall, precision)
            ax.fill_between(mrec.numpy(), mpre.numpy(), step="pre", alpha=0.25)
            ax.plot(recall.numpy(), precision.numpy(), linewidth=1.2)
            ax.set_title(f"{name}: AP {voc.ap[k].item():.3f}", fontsize=9)
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="recall", ylabel="precision")
    for ax in axes[len(class_names) :]:
        ax.set_visible(False)
    figure.savefig(path, dpi=80)


def _by_class(class_names: Sequence[str], values: Tensor) -> dict[str, float | None]:
    return {name: _number(v) for name, v in zip(class_names, values.tolist(), strict=True)}


def _number(value: float) -> float | None:
    """JSON's form of a metric: ``None`` where it is undefined (NaN)."""
    return None if math.isnan(value) else float(value)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
