"""The workflows on a run directory: train, evaluate, detect.

A run directory holds config.json (resolved configuration and class names), log.jsonl and
log.csv (losses and evaluations; tensorboard/ too when TensorBoard is installed),
checkpoint.safetensors (the latest state, for --resume), model.safetensors
(the final weights), skipped.json (the bad samples the run skipped), loss.png, metrics.json,
pr_curves.png and detections/ (pictures).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from rcnn import checkpoint, distributed
from rcnn.backbones import build_backbone
from rcnn.classic.proposal_cache import DEFAULT_CACHE_DIR, proposals_for
from rcnn.config import load_file, merge, parse_overrides
from rcnn.data.coco import COCODataset
from rcnn.data.dataset import DetectionDataset, WithProposals
from rcnn.data.images import decode_image, image_files
from rcnn.data.spec import open_dataset
from rcnn.detector import CONFIG, WEIGHTS, Detector, read_run_config, write_run_config
from rcnn.errors import BadSampleError, RcnnError
from rcnn.evaluation.coco import coco_ground_truth, write_coco_results
from rcnn.evaluation.report import evaluate_detections, format_table, plot_pr_curves, write_metrics
from rcnn.files import write_json
from rcnn.inference import DatasetDetections, detect_dataset, gather_detections
from rcnn.logs import LOG
from rcnn.models.build import RunConfig, build_model, preset
from rcnn.pretrain import PretrainConfig, pretrain_backbone, save_backbone
from rcnn.runtime import bfloat16_is_native
from rcnn.structures import Annotation, Detections
from rcnn.svd import compress_fc_layers
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
    the command line's own options (``settings``, e.g. epochs=4, pretrained=PATH, amp=True)."""
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
    switched_on = {k: True for k in ("amp", "channels_last", "compile") if settings.get(k)}
    if switched_on:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **switched_on))
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
    deadline: float | None = None,
) -> dict | None:
    """Train (or resume) a run, save its final weights and loss curve, evaluate it on the
    test split when the data set has one; returns the metrics (None without a test split).
    Started by torchrun, every process trains a share of each batch; rank 0 writes the files
    and returns the metrics (the others None). on_bad_sample: see ``train_model``."""
    world = distributed.setup()
    train_model(config, data, run_dir, resume, time_budget, world, on_bad_sample, deadline)
    test = test_split(data, on_bad_sample)
    if test is None:
        return None
    return evaluate_run(run_dir, data, test, world=world, on_bad_sample=on_bad_sample)


def train_model(
    config: RunConfig,
    data: str,
    run_dir: Path,
    resume: bool = False,
    time_budget: float | None = None,
    world: distributed.World | None = None,
    on_bad_sample: str = "error",
    deadline: float | None = None,
) -> None:
    """Train (or resume) a run; save its final weights and loss curve in ``run_dir`` (rank 0
    of several processes; the others train their share and write nothing).

    on_bad_sample: "error" stops at a bad annotation when the data set is opened, "skip"
    leaves it out; images that cannot be decoded during training are skipped either way.
    What was skipped is summed up at the end and listed in RUN/skipped.json."""
    world = world or distributed.setup()
    if world.is_main:
        prepare_run_dir(run_dir, resume)
    distributed.barrier(world)
    if resume:
        config, _ = read_run_config(run_dir)
    dataset = open_dataset(data, "train", on_bad_sample=on_bad_sample)
    if not resume and world.is_main:
        write_run_config(run_dir, config, dataset.class_names, data)
    # the seed fixes the initial weights and (until a resume restores its state) the target
    # layers' sampling: two runs with one seed end with the same weights on the CPU
    torch.manual_seed(config.train.seed)
    model = build_model(config, len(dataset.class_names))
    skipped_on_opening = dataset.skipped
    mode = getattr(model, "proposal_mode", None)  # R-CNN, SPPNet, Fast R-CNN: selective search
    if mode is not None:
        dataset = WithProposals(dataset, proposals_for(dataset, mode, DEFAULT_CACHE_DIR))
    test = test_split(data, on_bad_sample)
    evaluate = None
    if test and config.train.eval_every > 0:  # mAP50 during training, for the curve
        test_set = open_for_run(data, test, dataset.class_names, on_bad_sample)
        evaluate = evaluator(config, test_set, world)
    trainer = Trainer(
        model, dataset, config, run_dir, model.pixel_stats, evaluate, time_budget, world, deadline
    )
    finished = trainer.run(resume)
    if world.is_main:
        checkpoint.save_model(run_dir / WEIGHTS, trainer.model, {"finished": finished})
        report_skipped(run_dir / SKIPPED, skipped_on_opening, trainer.skipped_images)
        plot_losses(run_dir / LOG, run_dir / "loss.png")
    distributed.barrier(world)


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


def evaluator(config: RunConfig, test_set: DetectionDataset, world: distributed.World):
    """model -> its mAP50 on ``test_set`` (NaN on the ranks other than 0), for the trainer."""

    def evaluate(model) -> float:
        detector = Detector(model, config, test_set.class_names, model.pixel_stats)
        shard = (world.rank, world.size)
        found = detect_dataset(detector, test_set, config.train.workers, False, shard)
        found = gather_detections(found, world)
        return float("nan") if found is None else score_detections(found, test_set).metrics["map50"]

    return evaluate


def score_detections(found: DatasetDetections, dataset: DetectionDataset):
    """The VOC and COCO evaluation of detections over ``dataset``."""
    indices = sorted(found.detections)
    return evaluate_detections(
        [found.detections[i] for i in indices],
        [dataset.annotation(i) for i in indices],
        list(dataset.class_names),
        [dataset.image_size(i) for i in indices],
        found.seconds_per_image,
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


def load_detector(
    run_dir: Path,
    svd_ranks: tuple[int, int] | None = None,
    device="cpu",
    flip: bool | None = None,
) -> Detector:
    """The run's detector on ``device``; with ``svd_ranks``, its fc6 and fc7 replaced by their
    truncated SVDs (Fast R-CNN section 3.1), what changed said on stderr; with ``flip``, flip
    testing on or off rather than as the run was trained."""
    detector = Detector.load(run_dir, device)
    if svd_ranks is not None:
        for line in compress_fc_layers(detector.model, svd_ranks):
            print(f"truncated SVD: {line}", file=sys.stderr)
    if flip is not None:
        try:
            detector.set_flip_testing(flip)
        except RcnnError as error:
            raise RcnnError(f"{run_dir}: {error}") from None
    return detector


def evaluate_run(
    run_dir: Path,
    data: str,
    split: str | None = None,
    workers: int = 2,
    world: distributed.World | None = None,
    svd_ranks: tuple[int, int] | None = None,
    on_bad_sample: str = "error",
    flip: bool | None = None,
) -> dict | None:
    """Detect over a split (with on_bad_sample="skip", bad entries and images that cannot be
    decoded left out), print the table, write metrics.json and pr_curves.png; with
    ``svd_ranks`` (fc6 and fc7 compressed) metrics_svd_R6_R7.json and pr_curves_svd_R6_R7.png,
    and with ``flip`` set (flip testing on or off) metrics_flip.json or metrics_noflip.json
    and their curves, so that the run's own figures stay beside them. Over several processes
    (torchrun, or ``world``) each detects a shard and rank 0 evaluates them all (the others
    return None)."""
    split = split or test_split(data, on_bad_sample)
    if split is None:
        raise RcnnError(f"{data}: no test or val split to evaluate on; name one with --split")
    world = world or distributed.setup()
    detector = load_detector(run_dir, svd_ranks, world.device(), flip)
    dataset = open_for_run(data, split, detector.class_names, on_bad_sample)
    found = gather_detections(
        detect_dataset(detector, dataset, workers, shard=(world.rank, world.size)), world
    )
    if found is None:
        return None
    evaluation = score_detections(found, dataset)
    metrics = evaluation.metrics | {
        "proposal_seconds_per_image": found.proposal_seconds_per_image,
        "proposals_per_image": found.proposals_per_image,
    }
    print(format_table(metrics))
    if detector.proposal_mode is not None:
        print(proposal_summary(found, detector.proposal_mode))
    suffix = ""
    if svd_ranks is not None:
        metrics["svd_rank"], suffix = list(svd_ranks), "_svd_{}_{}".format(*svd_ranks)
    if flip is not None:
        metrics["flip"], suffix = flip, suffix + ("_flip" if flip else "_noflip")
    write_metrics(run_dir / f"metrics{suffix}.json", metrics)
    plot_pr_curves(evaluation.voc, detector.class_names, run_dir / f"pr_curves{suffix}.png")
    return metrics


def proposal_summary(found: DatasetDetections, mode: str) -> str:
    """One line: selective search's proposals and seconds per image, timed apart from the
    detector (they are computed once per data set and cached)."""
    return (
        f"selective search ({mode}), not in the s/image above: "
        f"{found.proposals_per_image:.0f} proposals and "
        f"{found.proposal_seconds_per_image:.3f} s per image"
    )


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
    score: float | None,
    as_json: bool,
    coco_json: Path | None = None,
    svd_ranks: tuple[int, int] | None = None,
    on_bad_sample: str = "error",
    flip: bool | None = None,
) -> None:
    """``rcnn detect``: image files, folders of them, or one SPEC's split (on_bad_sample
    applies to it; image files named one by one must all load); JSON lines,
    pictures or a summary of the detections above ``score`` (default: the detector's display
    threshold), and with ``coco_json`` every
    detection in COCO's results format (see ``write_coco_detections``); with ``svd_ranks``,
    by the model with fc6 and fc7 compressed; with ``flip``, flip testing on or off."""
    detector = load_detector(run_dir, svd_ranks, flip=flip)
    score = detector.display_threshold if score is None else score
    dataset = _spec_split(detector, inputs, split, on_bad_sample)
    found = []  # (index, path, (H, W), Detections) per image, for the COCO results
    for index, path, image, detections in _detections_of(detector, inputs, dataset):
        found.append((index, path, (image.shape[-2], image.shape[-1]), detections))
        keep = detections.scores >= score
        kept = Detections(detections.boxes[keep], detections.scores[keep], detections.labels[keep])
        _report(path, image, kept, detector.class_names, out, as_json)
    if coco_json is not None:
        write_coco_detections(coco_json, found, detector.class_names, dataset)


def _report(
    path: str,
    image: Tensor,
    detections: Detections,
    class_names: list[str],
    out: Path | None,
    as_json: bool,
) -> None:
    """One image's detections as a JSON line or a summary line, and a picture in ``out``."""
    boxes, labels, scores = detections.boxes, detections.labels, detections.scores
    names = [class_names[k - 1] for k in labels.tolist()]
    if as_json:
        record = {"image": path, "width": image.shape[-1], "height": image.shape[-2]}
        record |= {"boxes": [[round(v, 2) for v in b] for b in boxes.tolist()], "labels": names}
        print(json.dumps(record | {"scores": [round(s, 4) for s in scores.tolist()]}), flush=True)
    else:
        tqdm.write(
            f"{path}: {len(names)} detections "
            + ", ".join(f"{n} {s:.2f}" for n, s in zip(names, scores.tolist(), strict=True))
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        picture = draw_detections(image, boxes, labels, scores, class_names)
        picture.save(out / f"{Path(path).stem}.png")


def _spec_split(
    detector: Detector, inputs: list[str], split: str | None, on_bad_sample: str
) -> DetectionDataset | None:
    """The split to detect on when the one input is a SPEC, else None (image files)."""
    if len(inputs) != 1 or not is_spec(inputs[0]):
        return None
    split = split or test_split(inputs[0], on_bad_sample)
    return open_for_run(inputs[0], split or "test", detector.class_names, on_bad_sample)


def _detections_of(detector: Detector, inputs: list[str], dataset: DetectionDataset | None):
    """(index, path, image, Detections) for each image of ``dataset`` (its index), or of the
    image files and folders (their images in sorted order) named by ``inputs`` (position)."""
    if dataset is not None:
        found = detect_dataset(detector, dataset)
        for index in sorted(found.detections):
            image = dataset.load_image(index)
            yield index, dataset.image_path(index), image, found.detections[index]
        return
    paths = [path for text in inputs for path in image_files(Path(text))]
    for index, path in enumerate(tqdm(paths, desc="detect", leave=False, dynamic_ncols=True)):
        image = decode_image(path)
        yield index, str(Path(path).resolve()), image, detector.detect([image])[0]


def write_coco_detections(
    path: Path,
    found: list[tuple[int, str, tuple[int, int], Detections]],
    class_names: list[str],
    dataset: DetectionDataset | None,
) -> None:
    """Every detection of ``found`` ((index, path, (H, W), Detections) per image) as COCO
    results at ``path``: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.

    For a ``coco:`` data set the ids are its own, so pycocotools' ``loadRes`` on its
    annotation file takes the file as it is. Otherwise image ``index`` is id ``index + 1``
    (1..N for image files and folders, in sorted order) and label k is category k, listed with
    file names and sizes, as a COCO data set without annotations, in ``PATH.images.json``
    beside it (``results.json`` -> ``results.images.json``).
    """
    detections = [d for _, _, _, d in found]
    if isinstance(dataset, COCODataset):
        ids = [dataset.coco_image_id(index) for index, _, _, _ in found]
        write_coco_results(path, detections, ids, dataset.category_ids)
        return
    ids = [index + 1 for index, _, _, _ in found]
    write_coco_results(path, detections, ids)
    sizes = [size for _, _, size, _ in found]
    listing = coco_ground_truth([Annotation.empty()] * len(found), sizes, class_names, ids)
    for image, (_, image_path, _, _) in zip(listing["images"], found, strict=True):
        image["file_name"] = image_path
    write_json(listing_path(path), listing)


def listing_path(results: Path) -> Path:
    """Where the image and category ids of a COCO results file for image files are listed."""
    return results.with_suffix(".images.json")


def is_spec(text: str) -> bool:
    return text == "shapes" or text.startswith(("voc:", "coco:"))


DEMO_MARKER = ".rcnn-demo"
DEMO_MINUTES = 10.0  # from the start of `make demo`, install included, to the last picture
# held back from training for what follows it: evaluating the 300 test images with flip
# testing, the pictures and the plots took 20-30 s on the bfloat16 host and 30-33 s on the
# AVX2 one, whose speed drifted by up to 1.5x within a day: 60 s keeps the demo inside its
# 10 minutes on such a day, for ~2% of the training steps
DEMO_AFTER_TRAINING = 60.0  # seconds
DEMO_MIN_TRAINING = 60.0  # seconds: with less left, the demo refuses rather than train a guess
# twice the default 2,000 training images: the demo's network sees each ~5 times rather than ~10
# (mAP50 0.900 against 0.889; 8,000: 0.891, its steps slower with 2.8 GB of images cached)
DEMO_DATA = "shapes:train=4000"


def demo(out: Path, minutes: float | None = None, started: float | None = None) -> dict:
    """The main job: train Faster R-CNN (small backbone) on the built-in shapes set, evaluate
    it on the shapes test split, draw detections, say where it all is; all within ``minutes``
    of ``started`` (a ``time.time()``; default now). `make demo` passes its own start, so the
    install counts: training gets what is left once the evaluation's time is set aside."""
    minutes = DEMO_MINUTES if minutes is None else minutes
    now = time.time()
    started = now if started is None else started
    if started > now:
        raise RcnnError(f"--started {started:.0f} is in the future (now {now:.0f})")
    training_deadline = started + 60 * minutes - DEMO_AFTER_TRAINING
    left = training_deadline - now
    if left < DEMO_MIN_TRAINING:
        raise RcnnError(
            f"the demo's {minutes:g} minutes leave {max(left, 0):.0f} s to train once "
            f"{DEMO_AFTER_TRAINING:.0f} s are set aside for evaluation; it needs at least "
            f"{DEMO_MIN_TRAINING:.0f} (give it more --minutes)"
        )
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).exists():
            raise RcnnError(f"{out}: exists and is not a demo run; choose another --out")
        shutil.rmtree(out)  # a previous demo: start afresh
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text(
        "written by `rcnn demo`; the next demo replaces this directory\n"
    )
    config = preset("faster-rcnn", "small")
    # channels-last, and mixed precision where it is native (bfloat16 on this CPU): 2,860
    # steps in the 7 minutes here against 2,310, mAP50 0.710 against 0.667 (README)
    amp = torch.cuda.is_available() or bfloat16_is_native()
    # the images held in memory and prepared in this process rather than by loader workers,
    # whose resizing and hand-over took cores from the steps: 564 and 586 steps in 45 s of
    # training against 517 and 496 with 2 workers (interleaved pairs, this 2-core machine)
    train = dataclasses.replace(
        config.train, channels_last=True, amp=amp, cache_images=True, workers=0
    )
    # flip testing: +0.008 to +0.015 mAP50 on four 7-minute runs, at 1.4x the time per test image
    detection = dataclasses.replace(config.faster_rcnn.detection, flip=True)
    faster_rcnn = dataclasses.replace(config.faster_rcnn, detection=detection)
    config = dataclasses.replace(config, train=train, faster_rcnn=faster_rcnn)
    metrics = train_run(config, DEMO_DATA, out, deadline=training_deadline)
    detector = Detector.load(out)
    test = open_dataset(DEMO_DATA, "test")
    pictures = draw_examples(detector, test, out / "detections", 12, detector.display_threshold)
    print(f"\nmAP50 {metrics['map50']:.3f} on {metrics['images']} shapes test images")
    for what, path in [
        ("metrics", out / "metrics.json"),
        ("loss curve", out / "loss.png"),
        ("precision-recall", out / "pr_curves.png"),
        (f"{len(pictures)} pictures", out / "detections"),
    ]:
        print(f"{what:>18}: {path}")
    took = divmod(round(time.time() - started), 60)
    print(f"{'took':>18}: {took[0]} min {took[1]} s of the {minutes:g} minutes")
    return metrics
