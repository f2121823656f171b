"""The ``rcnn`` command: argument parsing and dispatch; the work lives in the modules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rcnn.errors import RcnnError
from rcnn.runtime import keep_freed_memory

MODELS = ("rcnn", "sppnet", "fast-rcnn", "faster-rcnn")
SVD_HELP = (
    "compress fc6 and fc7 by truncated SVD, keeping R6 and R7 singular values "
    "(e.g. 1024,256 for vgg16, 64,32 for small)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcnn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="built-in shapes -> train Faster R-CNN -> eval -> pictures"
    )
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall time for all of it, training getting what evaluation leaves (default: 10)",
    )
    demo.add_argument(
        "--started",
        type=float,
        default=None,
        metavar="UNIX_TIME",
        help="when the minutes began (default: now); `make demo` passes its own start",
    )

    data = commands.add_parser("data", help="write a built-in data set to disk")
    data_kinds = data.add_subparsers(dest="kind", required=True, metavar="KIND")
    shapes = data_kinds.add_parser("shapes", help="the synthetic shapes set, in the VOC layout")
    shapes.add_argument("--out", required=True, help="directory to write")
    shapes.add_argument("--train", type=int, default=None, help="number of training images")
    shapes.add_argument("--test", type=int, default=None, help="number of test images")
    shapes.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="train a detector")
    train.add_argument("--model", choices=MODELS, required=True)
    train.add_argument("--data", required=True, help="shapes | voc:DIR | coco:ANN.json[:IMAGE_DIR]")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument(
        "--backbone", default="small", help="small (CPU, default), zf, vgg16, resnet18/50/101"
    )
    train.add_argument("--pretrained", default=None, help="torchvision-format weight file")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--time-budget", type=float, default=None, metavar="MINUTES")
    train.add_argument("--config", default=None, help="TOML file of settings")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--resume", action="store_true")
    train.add_argument(
        "--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)"
    )
    train.add_argument("--channels-last", action="store_true", help="NHWC memory layout")
    train.add_argument("--compile", action="store_true", help="torch.compile the trunk")
    _add_on_bad_sample(train)

    pretrain = commands.add_parser(
        "pretrain", help="pre-train a backbone as a classifier of warped regions (R-CNN 2.3)"
    )
    pretrain.add_argument("--backbone", default="small")
    pretrain.add_argument(
        "--data", required=True, help="shapes | voc:DIR | coco:ANN.json[:IMAGE_DIR]"
    )
    pretrain.add_argument(
        "--out", required=True, metavar="FILE", help="weights file (.safetensors)"
    )
    pretrain.add_argument("--epochs", type=int, default=None)
    pretrain.add_argument("--time-budget", type=float, default=None, metavar="MINUTES")

    evaluate = commands.add_parser("eval", help="evaluate a run; writes RUN/metrics.json")
    evaluate.add_argument("run")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", default=None, help="default: test, falling back to val")
    evaluate.add_argument("--svd-rank", default=None, metavar="R6,R7", help=SVD_HELP)
    _add_flip(evaluate)
    _add_on_bad_sample(evaluate)

    detect = commands.add_parser(
        "detect", help="detect objects in images, folders of images or a data set split"
    )
    detect.add_argument("run")
    detect.add_argument("inputs", nargs="+", metavar="IMAGE_OR_SPEC")
    detect.add_argument("--split", default=None)
    detect.add_argument("--out", default=None, help="directory for pictures")
    detect.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="show detections from this score (default 0.5; 0 for R-CNN/SPPNet's SVM margins)",
    )
    detect.add_argument("--json", action="store_true", help="one JSON object per image")
    detect.add_argument(
        "--coco-json",
        default=None,
        metavar="FILE",
        help="write every detection as COCO results (ids listed in FILE.images.json unless coco:)",
    )
    detect.add_argument("--svd-rank", default=None, metavar="R6,R7", help=SVD_HELP)
    _add_flip(detect)
    _add_on_bad_sample(detect)

    proposals = commands.add_parser("proposals", help="region proposals of an image or data set")
    proposals.add_argument("input", metavar="IMAGE_OR_SPEC")
    proposals.add_argument("--split", default=None)
    proposals.add_argument("--method", default="selective-search", choices=("selective-search",))
    proposals.add_argument("--mode", default="fast", choices=("fast", "quality"))
    proposals.add_argument("--recall", action="store_true", help="recall and MABO over a split")
    proposals.add_argument("--json", action="store_true")
    proposals.add_argument(
        "--out", default=None, help="directory for the picture (image) or the cache (data set)"
    )

    lineage = commands.add_parser("lineage", help="the four models side by side")
    lineage.add_argument("--data", required=True, help="e.g. shapes:train=400,test=100")
    lineage.add_argument("--out", required=True)
    lineage.add_argument("--backbone", default="small")
    lineage.add_argument(
        "--time-budget", type=float, default=5.0, metavar="MINUTES", help="training, per model"
    )
    lineage.add_argument(
        "--models", nargs="+", default=None, choices=("rcnn", "sppnet", "fast-rcnn", "faster-rcnn")
    )

    bench = commands.add_parser("bench", help="timings, one table")
    bench.add_argument("what", nargs="?", default="all", choices=("ops", "models", "all"))
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")

    export = commands.add_parser("export", help="export a trained Faster R-CNN")
    export.add_argument("run")
    export.add_argument(
        "--onnx", required=True, metavar="FILE", help="image in, boxes, labels and scores out"
    )
    return parser


def _add_on_bad_sample(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on-bad-sample",
        choices=("error", "skip"),
        default="error",
        help="a bad annotation or image: stop with an error naming it (default) or skip it "
        "with a warning; training skips undecodable images either way and counts them",
    )


def _add_flip(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip testing on (--flip) or off (--no-flip): each proposal also scored on the "
        "mirrored image, the two averaged (Fast/Faster R-CNN); default: as the run was trained",
    )


def _data(args: argparse.Namespace) -> int:
    """``rcnn data shapes``: write the built-in set in the VOC layout."""
    from rcnn.data.shapes import DEFAULT_SIZES, ShapesDataset
    from rcnn.data.voc import export_voc

    sizes = {"train": args.train, "test": args.test}
    for split, size in sizes.items():
        size = DEFAULT_SIZES[split] if size is None else size
        export_voc(ShapesDataset(split, size, args.seed), args.out)
        print(f"wrote {size} {split} images to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from rcnn.runs import resolve_config, train_run

    config = resolve_config(
        args.model,
        args.backbone,
        args.config,
        args.set,
        epochs=args.epochs,
        pretrained=args.pretrained,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    train_run(
        config,
        args.data,
        Path(args.out),
        resume=args.resume,
        time_budget=args.time_budget,
        on_bad_sample=args.on_bad_sample,
    )
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from rcnn.runs import pretrain_command

    pretrain_command(args.backbone, args.data, Path(args.out), args.epochs, args.time_budget)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rcnn.runs import evaluate_run
    from rcnn.svd import parse_ranks

    ranks = None if args.svd_rank is None else parse_ranks(args.svd_rank)
    evaluate_run(
        Path(args.run),
        args.data,
        args.split,
        svd_ranks=ranks,
        on_bad_sample=args.on_bad_sample,
        flip=args.flip,
    )
    return 0


def _detect(args: argparse.Namespace) -> int:
    from rcnn.runs import detect_inputs
    from rcnn.svd import parse_ranks

    out = Path(args.out) if args.out else None
    coco_json = Path(args.coco_json) if args.coco_json else None
    ranks = None if args.svd_rank is None else parse_ranks(args.svd_rank)
    detect_inputs(
        Path(args.run),
        args.inputs,
        args.split,
        out,
        args.score_thresh,
        args.json,
        coco_json,
        ranks,
        args.on_bad_sample,
        args.flip,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rcnn.runs import demo

    demo(Path(args.out), args.minutes, args.started)
    return 0


def _export(args: argparse.Namespace) -> int:
    from rcnn.export import export_run

    export_run(Path(args.run), Path(args.onnx))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from rcnn.bench import print_table

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.what in ("ops", "all"):
        from rcnn.bench.ops import bench_ops

        print_table("rcnn bench ops", bench_ops())
    if args.what in ("models", "all"):
        from rcnn.bench.models import bench_models

        print_table("rcnn bench models", bench_models())
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from rcnn.lineage import MODELS, run_lineage

    run_lineage(args.data, Path(args.out), args.backbone, args.time_budget, args.models or MODELS)
    return 0


def _proposals(args: argparse.Namespace) -> int:
    from rcnn.classic.proposals_command import run_proposals

    return run_proposals(
        args.input,
        split=args.split,
        method=args.method,
        mode=args.mode,
        recall=args.recall,
        as_json=args.json,
        out=args.out,
    )


HANDLERS = {
    "demo": _demo,
    "data": _data,
    "train": _train,
    "pretrain": _pretrain,
    "eval": _eval,
    "detect": _detect,
    "proposals": _proposals,
    "lineage": _lineage,
    "bench": _bench,
    "export": _export,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        return HANDLERS[args.command](args)
    except RcnnError as error:
        print(f"rcnn: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rcnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
