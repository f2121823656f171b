"""A trained run, ready for images: ``Detector.load(RUN)(image)``.

It resizes and normalises images as the model was trained, runs the model, and returns boxes
in the original image's pixels with class names. The run directory holds ``config.json``
(the resolved RunConfig and the class names) and ``model.safetensors`` (the final weights)
or, for a run that has not finished, ``checkpoint.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from rcnn import checkpoint
from rcnn.classic.selective_search import selective_search
from rcnn.config import from_dict, to_dict
from rcnn.data.dataset import Sample
from rcnn.data.images import decode_image
from rcnn.data.transforms import TrainTransform, make_batch
from rcnn.errors import RcnnError
from rcnn.files import write_json
from rcnn.models.build import RunConfig, build_model
from rcnn.postprocess import rescale
from rcnn.structures import Annotation, Detections

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
FLIP_TESTING_MODELS = ("fast-rcnn", "faster-rcnn")  # the models whose RoI head scores both views


def write_run_config(
    run_dir: Path, config: RunConfig, class_names: Sequence[str], data: str
) -> None:
    write_json(
        run_dir / CONFIG,
        {"config": to_dict(config), "class_names": list(class_names), "data": data},
    )


def read_run_config(run_dir: Path) -> tuple[RunConfig, list[str]]:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RcnnError(
            f"{run_dir}: not a run directory (no {CONFIG}); train one with `rcnn train`"
        )
    try:
        meta = json.loads(path.read_text())
        return from_dict(RunConfig, meta["config"], "config"), list(meta["class_names"])
    except (ValueError, KeyError, TypeError) as error:
        raise RcnnError(f"{path}: not a valid run configuration ({error})") from error


class Detector:
    def __init__(
        self, model: nn.Module, config: RunConfig, class_names: Sequence[str], pixel_stats
    ):
        self.model = model.eval()
        self.config = config
        self.class_names = list(class_names)
        self.pixel_stats = pixel_stats
        self.transform = TrainTransform((config.input.test_size,), config.input.max_size, 0.0)
        # the run's layout: a run trained channels-last (the demo) detects channels-last too,
        # which oneDNN's CPU convolutions run faster (the demo's flip-tested 384x512 image on
        # the AVX2 host: 56 against 67 ms; 25 against 26 without flip testing)
        if config.train.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> Detector:
        run_dir = Path(run_dir)
        config, class_names = read_run_config(run_dir)
        model = build_model(config, len(class_names), load_pretrained=False)
        weights = run_dir / WEIGHTS if (run_dir / WEIGHTS).is_file() else run_dir / CHECKPOINT
        checkpoint.load_model(weights, model)
        return cls(model.to(device), config, class_names, model.pixel_stats)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, image) -> dict:
        """One image (path, PIL image, uint8 HxWx3 array or uint8 (3, H, W) tensor) ->
        {"boxes" (D, 4), "labels" (D,) in [1, K], "scores" (D,), "class_names" [D names]}."""
        detections = self.detect([to_tensor(image)])[0]
        names = [self.class_names[label - 1] for label in detections.labels.tolist()]
        return {
            "boxes": detections.boxes,
            "labels": detections.labels,
            "scores": detections.scores,
            "class_names": names,
        }

    @property
    def proposal_mode(self) -> str | None:
        """Selective search's mode for the models that take proposals from outside, else None."""
        return getattr(self.model, "proposal_mode", None)

    @property
    def display_threshold(self) -> float:
        """The score from which a detection is shown (pictures, ``rcnn detect``): 0.5 for class
        probabilities; the model says otherwise where its scores are not (SVM margins)."""
        return getattr(self.model, "display_threshold", 0.5)

    def set_flip_testing(self, flip: bool) -> None:
        """Flip testing (``DetectionConfig.flip``: each proposal also scored on the mirrored
        image, the two views averaged) on or off, whatever the run was trained with."""
        if self.config.model not in FLIP_TESTING_MODELS:
            raise RcnnError(
                f"flip testing is for {' and '.join(FLIP_TESTING_MODELS)} runs, "
                f"not {self.config.model}"
            )
        config = self.model.config
        detection = dataclasses.replace(config.detection, flip=flip)
        self.model.config = dataclasses.replace(config, detection=detection)

    def detect(self, images: Sequence[Tensor]) -> list[Detections]:
        """uint8 (3, H, W) images -> their Detections in their own pixels (R-CNN, SPPNet and
        Fast R-CNN first run selective search on each image)."""
        samples = [
            Sample(image, Annotation.empty(), i, proposals=self.propose(image))
            for i, image in enumerate(images)
        ]
        return self.detect_samples([self.transform(sample) for sample in samples])

    def propose(self, image: Tensor) -> Tensor | None:
        mode = self.proposal_mode
        return None if mode is None else selective_search(image, mode)

    @torch.no_grad()
    def detect_samples(self, samples: Sequence[Sample]) -> list[Detections]:
        """Samples already passed through ``self.transform`` -> Detections in original pixels."""
        mean, std = self.pixel_stats
        config = self.config
        layout = config.train.channels_last  # the layout the model was put in
        batch = make_batch(samples, mean, std, config.input.size_divisible, layout).to(self.device)
        detections = self.model(batch)
        return [rescale(d, s.scale) for d, s in zip(detections, samples, strict=True)]


def to_tensor(image) -> Tensor:
    """A path, PIL image, uint8 (H, W, 3) array or uint8 (3, H, W) tensor -> uint8 (3, H, W)."""
    if isinstance(image, (str, Path)):
        return decode_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise RcnnError(
                f"expected a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if (
        isinstance(image, Tensor)
        and image.dim() == 3
        and image.shape[0] == 3
        and image.dtype == torch.uint8
    ):
        return image
    raise RcnnError(
        f"cannot read an image from {type(image).__name__}; give a path, PIL image, array or tensor"
    )
