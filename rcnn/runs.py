"""The workflows on a run directory: train, evaluate, detect.

A run directory holds config.json (resolved configuration and class names), log.jsonl (losses
and evaluations), checkpoint.safetensors (the latest state, for --resume), model.safetensors
(the final weights), skipped.json (the bad samples the run skipped), loss.png, metrics.json,
pr_curves.png and detections/ (pictures).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from rcnn import checkpoint
from rcnn.backbones import build_backbone
from rcnn.config import load_file, merge, parse_overrides
from rcnn.data.dataset import DetectionDataset
from rcnn.data.images import decode_image
from rcnn.data.spec import open_dataset
from rcnn.detector import CONFIG, WEIGHTS, Detector, read_run_config, write_run_config
from rcnn.errors import BadSampleError, RcnnError
from rcnn.evaluation.report import evaluate_detections, format_table, plot_pr_curves, write_metrics
from rcnn.files import write_json
from rcnn.inference import detect_dataset
from rcnn.models.build import RunConfig, build_model, preset
from rcnn.pretrain import PretrainConfig, pretrain_backbone, save_backbone
from rcnn.train import CHECKPOINT, Trainer
from rcnn.visualize import draw_detections, plot_losses

MIN_FREE_BYTES = 1 << 30  # refuse to start training with less free disk than this
SKIPPED = "skipped.json"


def resolve_config(
    model: str,
    backbone: str,
    config_file: str | None = None,
    overrides: list[str] = (),
    **settings,
) -> RunConfig:
    """The preset for model and backbone, then a config file, then ``--set`` overrides, then
    the command line's own options (``settings``, e.g. epochs=4, pretrained=PATH)."""
    config = preset(model, backbone)
    if config_file:
        config = merge(config, load_file(config_file))
    config = merge(config, parse_overrides(list(overrides)))
    if settings.get("epochs") is not None:
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, epochs=settings["epochs"])
        )
    if settings.get("pretrained") is not None:
        config = dataclasses.replace(config, pretrained=settings["pretrained"])
    return config


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create the run directory, or check it can be resumed; refuse to overwrite a run, an
    unwritable directory, or a disk without room, before any training starts."""
    if resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise RcnnError(
                f"{run_dir}: nothing to resume (no {CHECKPOINT}); start without --resume"
            )
    elif (run_dir / CONFIG).exists() or (run_dir / CHECKPOINT).exists():
        raise RcnnError(
            f"{run_dir}: a run is already there; use --resume to continue it or another --out"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise RcnnError(f"{run_dir}: cannot write the run directory ({error.strerror})") from error
    if shutil.disk_usage(run_dir).free < MIN_FREE_BYTES:
        raise RcnnError(f"{run_dir}: less than 1 GiB of free disk; checkpoints would not fit")


def pretrain_command(
    backbone_name: str, data: str, out: Path, epochs: int | None, time_budget: float | None
) -> None:
    """``rcnn pretrain``: a backbone pre-trained on a data set's warped objects, in ``out``."""
    if out.suffix != ".safetensors":
        raise RcnnError(f"{out}: the weights file must end in .safetensors")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RcnnError(f"{out.parent}: cannot create the directory ({error.strerror})") from error
    dataset = open_dataset(data, "train")
    backbone = build_backbone(backbone_name)
    config = PretrainConfig() if epochs is None else PretrainConfig(epochs=epochs)
    log = pretrain_backbone(backbone, dataset, config, time_budget)
    save_backbone(backbone, out, {"backbone": backbone_name, "data": data, "log": log})
    last = log[-1] if log else {"epoch": 0, "accuracy": float("nan"), "seconds": 0.0}
    accuracy = last["accuracy"]
    print(f"{out}: {backbone_name} after {last['epoch']} epochs, region accuracy {accuracy:.3f}")


def train_run(
    config: RunConfig,
    data: str,
    run_dir: Path,
    resume: bool = False,
    time_budget: float | None = None,
    on_bad_sample: str = "error",
) -> dict | None:
    """Train (or resume) a run, save its final weights and loss curve, evaluate it on the
    test split when the data set has one; returns the metrics (None without a test split).

    on_bad_sample: "error" stops at a bad annotation when the data set is opened, "skip"
    leaves it out; images that cannot be decoded during training are skipped either way.
    What was skipped is summed up at the end and listed in RUN/skipped.json."""
    prepare_run_dir(run_dir, resume)
    if resume:
        config, _ = read_run_config(run_dir)
    dataset = open_dataset(data, "train", on_bad_sample=on_bad_sample)
    if not resume:
        write_run_config(run_dir, config, dataset.class_names, data)
    # the seed fixes the initial weights and (until a resume restores its state) the target
    # layers' sampling: two runs with one seed end with the same weights on the CPU
    torch.manual_seed(config.train.seed)
    model = build_model(config, len(dataset.class_names))
    trainer = Trainer(model, dataset, config, run_dir, model.pixel_stats, time_budget=time_budget)
    finished = trainer.run(resume)
    checkpoint.save_model(run_dir / WEIGHTS, model, {"finished": finished})
    report_skipped(run_dir / SKIPPED, dataset.skipped, trainer.skipped_images)
    plot_losses(run_dir / "log.jsonl", run_dir / "loss.png")
    test = test_split(data, on_bad_sample)
    return evaluate_run(run_dir, data, test, on_bad_sample=on_bad_sample) if test else None


def report_skipped(
    path: Path, opened: list[tuple[str, str]], training: dict[tuple[str, str], int]
) -> None:
    """Write what a run skipped to ``path`` (JSON: ``opened``, the entries left out when the
    data set was opened; ``training``, the images that failed to decode, with how often) and
    say it in one line when anything was."""
    write_json(
        path,
        {
            "opened": [{"path": p, "problem": q} for p, q in opened],
            "training": [{"path": p, "problem": q, "times": n} for (p, q), n in training.items()],
        },
    )
    if opened or training:
        print(
            f"rcnn: skipped {len(opened)} bad annotation entries when the data set was opened "
            f"and {len(training)} images that could not be decoded during training; "
            f"listed in {path}",
            file=sys.stderr,
        )


def test_split(data: str, on_bad_sample: str = "error") -> str | None:
    """The split evaluation uses by default: test, falling back to val; None when neither
    has images. A split that holds bad samples is an error (with on_bad_sample="error"), not
    a reason to fall back."""
    for split in ("test", "val"):
        try:
            if len(open_dataset(data, split, on_bad_sample=on_bad_sample)) > 0:
                return split
        except BadSampleError:
            raise
        except RcnnError:
            continue
    return None


def open_for_run(
    data: str, split: str, class_names: list[str], on_bad_sample: str = "error"
) -> DetectionDataset:
    """A split to evaluate or detect on, checked to have the run's classes."""
    options = {"class_names": class_names} if data.startswith("voc:") else {}
    dataset = open_dataset(data, split, on_bad_sample=on_bad_sample, **options)
    if list(dataset.class_names) != list(class_names):
        found = list(dataset.class_names)
        raise RcnnError(
            f"{data} ({split}) has classes {found}; the run was trained on {class_names}"
        )
    return dataset


def evaluate_run(
    run_dir: Path,
    data: str,
    split: str | None = None,
    workers: int = 2,
    on_bad_sample: str = "error",
) -> dict:
    """Detect over a split, print the table, write metrics.json and pr_curves.png. With
    on_bad_sample="skip", bad entries and images that cannot be decoded are left out."""
    split = split or test_split(data, on_bad_sample)
    if split is None:
        raise RcnnError(f"{data}: no test or val split to evaluate on; name one with --split")
    detector = Detector.load(run_dir)
    dataset = open_for_run(data, split, detector.class_names, on_bad_sample)
    found = detect_dataset(detector, dataset, workers)
    indices = sorted(found.detections)
    evaluation = evaluate_detections(
        [found.detections[i] for i in indices],
        [dataset.annotation(i) for i in indices],
        detector.class_names,
        [dataset.image_size(i) for i in indices],
        found.seconds_per_image,
    )
    metrics = evaluation.metrics | {
        "proposal_seconds_per_image": found.proposal_seconds_per_image,
        "proposals_per_image": found.proposals_per_image,
    }
    print(format_table(metrics))
    write_metrics(run_dir / "metrics.json", metrics)
    plot_pr_curves(evaluation.voc, detector.class_names, run_dir / "pr_curves.png")
    return metrics


def draw_examples(
    detector: Detector, dataset: DetectionDataset, out_dir: Path, count: int, score: float
) -> list[Path]:
    """Pictures of the first ``count`` images' detections above ``score``, ground truth dashed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(count, len(dataset))):
        image = dataset.load_image(i)
        found = detector.detect([image])[0]
        keep = found.scores >= score
        picture = draw_detections(
            image,
            found.boxes[keep],
            found.labels[keep],
            found.scores[keep],
            detector.class_names,
            dataset.annotation(i),
        )
        paths.append(out_dir / f"{dataset.image_id(i)}.png")
        picture.save(paths[-1])
    return paths


def detect_inputs(
    run_dir: Path,
    inputs: list[str],
    split: str | None,
    out: Path | None,
    score: float,
    as_json: bool,
    on_bad_sample: str = "error",
) -> None:
    """``rcnn detect``: image files, or one SPEC's split; JSON lines, pictures, or a summary.
    on_bad_sample applies to a SPEC's split (image files named one by one must all load)."""
    detector = Detector.load(run_dir)
    for path, image, detections in _detections_of(detector, inputs, split, on_bad_sample):
        keep = detections.scores >= score
        boxes, labels, scores = (
            detections.boxes[keep],
            detections.labels[keep],
            detections.scores[keep],
        )
        names = [detector.class_names[k - 1] for k in labels.tolist()]
        if as_json:
            record = {"image": path, "width": image.shape[-1], "height": image.shape[-2]}
            record |= {"boxes": [[round(v, 2) for v in b] for b in boxes.tolist()], "labels": names}
            print(
                json.dumps(record | {"scores": [round(s, 4) for s in scores.tolist()]}), flush=True
            )
        else:
            print(
                f"{path}: {len(names)} detections "
                + ", ".join(f"{n} {s:.2f}" for n, s in zip(names, scores.tolist(), strict=True))
            )
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            picture = draw_detections(image, boxes, labels, scores, detector.class_names)
            picture.save(out / f"{Path(path).stem}.png")


def _detections_of(detector: Detector, inputs: list[str], split: str | None, on_bad_sample: str):
    """(path, image, Detections) for each image file, or for each image of a SPEC's split."""
    if len(inputs) == 1 and is_spec(inputs[0]):
        split = split or test_split(inputs[0], on_bad_sample)
        dataset = open_for_run(inputs[0], split or "test", detector.class_names, on_bad_sample)
        found = detect_dataset(detector, dataset)
        for index in sorted(found.detections):
            yield dataset.image_path(index), dataset.load_image(index), found.detections[index]
        return
    for path in inputs:
        image = decode_image(path)
        yield str(Path(path).resolve()), image, detector.detect([image])[0]


def is_spec(text: str) -> bool:
    return text == "shapes" or text.startswith(("voc:", "coco:"))


DEMO_MARKER = ".rcnn-demo"
DEMO_MINUTES = 7.0  # training time; with install, evaluation and pictures within 10 minutes here


def demo(out: Path) -> dict:
    """The main job: train Faster R-CNN (small backbone) on the built-in shapes set within a
    fixed time, evaluate it on the shapes test split, draw detections, say where it all is."""
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).exists():
            raise RcnnError(f"{out}: exists and is not a demo run; choose another --out")
        shutil.rmtree(out)  # a previous demo: start afresh
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text(
        "written by `rcnn demo`; the next demo replaces this directory\n"
    )
    config = preset("faster-rcnn", "small")
    metrics = train_run(config, "shapes", out, time_budget=DEMO_MINUTES)
    detector = Detector.load(out)
    pictures = draw_examples(detector, open_dataset("shapes", "test"), out / "detections", 12, 0.5)
    print(f"\nmAP50 {metrics['map50']:.3f} on {metrics['images']} shapes test images")
    for what, path in [
        ("metrics", out / "metrics.json"),
        ("loss curve", out / "loss.png"),
        ("precision-recall", out / "pr_curves.png"),
        (f"{len(pictures)} pictures", out / "detections"),
    ]:
        print(f"{what:>18}: {path}")
    return metrics
