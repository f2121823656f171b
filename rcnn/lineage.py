"""``rcnn lineage``: the four detectors of the lineage trained and tested side by side.

R-CNN (2014), SPPNet (2014), Fast R-CNN (2015) and Faster R-CNN (2015) are trained on the same
data, on the same backbone, each within the same time budget, and tested on the same split.
What the table shows is what the papers argued over: accuracy, training time, and test time
per image with the proposals' share (selective search for the first three; the RPN's inside
Faster R-CNN's own time) shown apart. Selective search over the training set is run once,
before the first model, and cached: no model's training time includes it.

Outputs in ``--out DIR``: one run directory per model, ``lineage.json`` (DESIGN.md: per model
``map50``, ``train_seconds``, ``test_seconds_per_image``, ``proposal_seconds_per_image``,
``proposals_per_image``), ``lineage.md`` (the table), ``lineage.png`` (the bar chart) and a
self-contained ``report.html`` (table, chart, and the same test images as each model sees them).
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rcnn.classic.proposal_cache import DEFAULT_CACHE_DIR, proposals_for
from rcnn.data.spec import open_dataset
from rcnn.detector import Detector
from rcnn.errors import RcnnError
from rcnn.files import atomic_write, write_json
from rcnn.models.build import preset
from rcnn.runs import draw_examples, evaluate_run, open_for_run, test_split, train_model

MODELS = ("rcnn", "sppnet", "fast-rcnn", "faster-rcnn")
TITLES = {
    "rcnn": "R-CNN",
    "sppnet": "SPPNet",
    "fast-rcnn": "Fast R-CNN",
    "faster-rcnn": "Faster R-CNN",
}
COLUMNS = (
    ("map50", "mAP50", "{:.3f}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("test_seconds_per_image", "test s/image", "{:.3f}"),
    ("proposal_seconds_per_image", "of which proposals", "{:.3f}"),
    ("proposals_per_image", "proposals/image", "{:.0f}"),
)
PICTURES = 3  # test images shown per model in report.html


def run_lineage(
    data: str, out: Path, backbone: str = "small", minutes: float = 5.0, models=MODELS
) -> dict[str, dict]:
    """Train and test each model of ``models`` on ``data``; write and return the comparison."""
    split = test_split(data)
    if split is None:
        raise RcnnError(f"{data}: the lineage needs a test or val split to compare the models on")
    out.mkdir(parents=True, exist_ok=True)
    if set(models) - {"faster-rcnn"}:  # computed once, outside every model's training time
        print("selective search over the training set (once, cached)")
        proposals_for(open_dataset(data, "train"), "fast", DEFAULT_CACHE_DIR)
    results = {}
    for model in models:
        print(f"\n== {TITLES[model]}: training for at most {minutes:g} minutes")
        results[model] = _train_and_test(model, backbone, data, split, out / model, minutes)
    write_json(out / "lineage.json", results)
    table = format_lineage(results)
    atomic_write(out / "lineage.md", lambda file: file.write(table + "\n"), mode="w")
    chart = _chart_png(results)
    atomic_write(out / "lineage.png", lambda file: file.write(chart))
    report = _report_html(results, table, chart, out, data, split)
    atomic_write(out / "report.html", lambda file: file.write(report), mode="w")
    print(
        "\n" + table + f"\n\nwritten: {out / 'lineage.json'}, lineage.md, lineage.png, report.html"
    )
    return results


def _train_and_test(
    model: str, backbone: str, data: str, split: str, run_dir: Path, minutes: float
) -> dict:
    """One model's row: train within ``minutes``, then test on ``split``."""
    config = preset(model, backbone)
    started = time.perf_counter()
    train_model(config, data, run_dir, time_budget=minutes)
    train_seconds = time.perf_counter() - started
    metrics = evaluate_run(run_dir, data, split)
    proposals = metrics["proposals_per_image"]
    if model == "faster-rcnn":  # the RPN's proposals: its time is inside the model's own
        proposals = config.faster_rcnn.rpn.proposals.post_nms_top_n[1]
    return {
        "map50": metrics["map50"],
        "train_seconds": round(train_seconds, 1),
        "test_seconds_per_image": metrics["seconds_per_image"]
        + metrics["proposal_seconds_per_image"],
        "proposal_seconds_per_image": metrics["proposal_seconds_per_image"],
        "proposals_per_image": proposals,
    }


def format_lineage(results: dict[str, dict]) -> str:
    """The comparison as a markdown table, one row per model."""
    lines = [
        "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for model, row in results.items():
        cells = ["n/a" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append(f"| {TITLES[model]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _chart_png(results: dict[str, dict]) -> bytes:
    """Bars of mAP50 and of test seconds per image (proposals hatched), one bar per model."""
    names = [TITLES[m] for m in results]
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    accuracy, speed = figure.subplots(1, 2)
    accuracy.bar(names, [r["map50"] or 0.0 for r in results.values()], color="tab:blue")
    accuracy.set(ylabel="mAP50", ylim=(0, 1), title="accuracy")
    network = [
        r["test_seconds_per_image"] - r["proposal_seconds_per_image"] for r in results.values()
    ]
    proposals = [r["proposal_seconds_per_image"] for r in results.values()]
    speed.bar(names, network, color="tab:orange", label="network")
    speed.bar(names, proposals, bottom=network, color="tab:gray", hatch="//", label="proposals")
    speed.set(ylabel="seconds per image", yscale="log", title="test time")
    speed.set_ylim(bottom=min((t for t in network if t > 0), default=1e-3) / 2)  # every bar shows
    speed.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _report_html(
    results: dict[str, dict], table: str, chart: bytes, out: Path, data: str, split: str
) -> str:
    """One HTML page, images inlined: the table, the chart, the same test images per model."""
    rows = "".join(
        f"<tr><th>{TITLES[model]}</th>"
        + "".join(f"<td>{_img(png)}</td>" for png in _pictures(out / model, data, split))
        + "</tr>"
        for model in results
    )
    return (
        "<!doctype html><meta charset=utf-8><title>rcnn lineage</title>"
        "<style>body{font-family:sans-serif}td img{max-width:320px}</style>"
        f"<h1>The lineage on {html.escape(data)} ({html.escape(split)})</h1>"
        f"<pre>{html.escape(table)}</pre>{_img(chart)}"
        f"<h2>The same test images, detected by each model</h2><table>{rows}</table>"
    )


def _pictures(run_dir: Path, data: str, split: str) -> list[bytes]:
    """PNGs of the first test images with this run's detections (those its detector shows) and
    the ground truth, also left in ``run_dir/detections``."""
    detector = Detector.load(run_dir)
    dataset = open_for_run(data, split, detector.class_names)
    paths = draw_examples(
        detector, dataset, run_dir / "detections", PICTURES, detector.display_threshold
    )
    return [path.read_bytes() for path in paths]


def _img(png: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'
