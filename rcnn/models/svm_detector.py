"""What R-CNN and SPPNet share: R-CNN's recipe for training and testing a detector on the
features of region proposals. The two differ only in how a region's features are computed
(``region_features``: R-CNN warps each region through the whole network, SPPNet pools it
from the feature map of the whole image), and in a few settings.

Training, in three stages:
1. "finetune" (SGD): the network learns an (N+1)-way softmax classifier on regions (the
   ground-truth boxes and the proposals of each image): IoU >= 0.5 with a ground-truth box
   is a positive of that box's class, the rest (R-CNN; SPPNet: IoU in [0.1, 0.5)) is
   background; mini-batches of 128 regions, 32 positives and 96 background, sampled
   uniformly over the regions of the batch's images;
2. "svm" (fitted): one linear SVM per class on the fc7 features, with hard negative mining
   (``rcnn.classic.svm``);
3. "bbox-regression" (fitted): one ridge regressor per class on the pool5 features
   (``rcnn.classic.bbox_regressor``).
Stages 2 and 3 read the features of every training region from one cache, computed once
(``rcnn.classic.feature_cache``).

Test: the features of every proposal (at most ``max_proposals[1]`` per image), one score
per class from the SVMs (or from the softmax, before the SVMs are fitted or when
``classifier="softmax"``, R-CNN appendix B's comparison), each box regressed by each class's
regressor, then per-class NMS (IoU 0.3), 100 detections an image. SVM scores are margins,
not probabilities: > 0 is on the object side; the default threshold keeps all above -1.

Shapes: N images, G ground-truth boxes, P proposals, R regions, D = fc7 size, F = pool5
size, K object classes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rcnn.boxes import box_iou, clip_boxes, remove_small_boxes
from rcnn.classic.bbox_regressor import BoxRegressionConfig, BoxRegressors
from rcnn.classic.feature_cache import CachedRegions, RegionCacheWriter, read_region_cache
from rcnn.classic.svm import LinearSVMs, SVMConfig
from rcnn.files import write_json
from rcnn.matching import match_boxes, matched_labels, sample_balanced
from rcnn.postprocess import DetectionConfig, select_detections
from rcnn.structures import Detections, ImageBatch

FITTED_STAGES = ("svm", "bbox-regression")


@dataclass(frozen=True)
class FinetuneConfig:
    """Regions for the softmax fine-tuning: R-CNN's (SPPNet: ``background_iou=(0.1, 0.5)``)."""

    batch_size: int = 128
    positive_fraction: float = 0.25
    positive_iou: float = 0.5
    background_iou: tuple[float, float] = (0.0, 0.5)


@dataclass(frozen=True)
class SVMDetectorConfig:
    """The settings R-CNN and SPPNet share. ``max_proposals``: at most this many proposals
    per image (train, test), in selective search's order; R-CNN used about 2,000."""

    max_proposals: tuple[int, int] = (2000, 2000)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)
    regression: BoxRegressionConfig = field(default_factory=BoxRegressionConfig)
    detection: DetectionConfig = field(default_factory=lambda: DetectionConfig(-1.0))
    classifier: Literal["svm", "softmax"] = "svm"
    seed: int = 0  # of the SVMs' first random negatives


class SVMDetector(nn.Module):
    """A trunk and head computing (pool5, fc7) per region (``region_features``, in the
    subclass), a softmax classifier for fine-tuning, per-class SVMs and box regressors."""

    proposal_mode = "fast"  # selective search's mode, for the training set and new images
    fitted_stages = FITTED_STAGES

    def __init__(
        self,
        trunk: nn.Module,
        head: nn.Module,
        sizes: tuple[int, int],
        num_classes: int,
        config: SVMDetectorConfig,
        stage_parts: dict[str, tuple[str, ...]],
    ):
        """sizes: (F, D), the pool5 and fc7 sizes of a region's features; stage_parts: the
        SGD stages in order, each with the top-level modules it trains."""
        super().__init__()
        self.trunk, self.head, self.config = trunk, head, config
        self.stage_parts = stage_parts
        pool5_size, representation_size = sizes
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)  # SPPNet's fc8 initialisation
        nn.init.zeros_(self.cls_score.bias)
        self.svms = LinearSVMs(num_classes, representation_size)
        self.regressors = BoxRegressors(num_classes, pool5_size)
        self.frozen = {name for name, p in self.named_parameters() if not p.requires_grad}
        self.stages = (*self.stage_parts, *FITTED_STAGES)
        self.stage = self.stages[0]

    def region_features(self, batch: ImageBatch, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per image boxes ``[(R_i, 4), ...]`` in the batch's pixels -> pool5 ``(R, F)`` and
        fc7 ``(R, D)`` of all of them, image after image."""
        raise NotImplementedError

    def forward(self, batch: ImageBatch) -> dict[str, Tensor] | list[Detections]:
        """Training: the fine-tuning loss. Evaluation: one Detections per image."""
        return self.finetune_loss(batch) if self.training else self.detect(batch)

    def set_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise ValueError(f"{stage!r} is not a stage of {type(self).__name__}: {self.stages}")
        parts = self.stage_parts.get(stage, ())
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.split(".")[0] in parts and name not in self.frozen)
        self.stage = stage

    def regions(self, batch: ImageBatch, limit: int) -> list[Tensor]:
        """Each image's proposals: clipped, at most ``limit``, none under a pixel -> (P_i, 4)."""
        if batch.proposals is None:
            raise ValueError(f"{type(self).__name__} needs region proposals in the batch")
        regions = []
        for proposals, size in zip(batch.proposals, batch.image_sizes, strict=True):
            proposals = clip_boxes(proposals[:limit].to(batch.images.dtype), size)
            regions.append(proposals[remove_small_boxes(proposals, 1.0)])
        return regions

    def training_regions(self, batch: ImageBatch, limit: int) -> tuple[list[Tensor], ...]:
        """Each image's ground-truth boxes followed by its proposals -> regions [(G_i + P_i,
        4), ...], with the ground truth they came from: boxes [(G_i, 4)], labels [(G_i,)]."""
        gt_boxes, gt_labels = batch.training_targets()
        proposals = self.regions(batch, limit)
        regions = [torch.cat((g.to(p.dtype), p)) for g, p in zip(gt_boxes, proposals, strict=True)]
        return regions, gt_boxes, gt_labels

    def finetune_loss(self, batch: ImageBatch) -> dict[str, Tensor]:
        """Stage 1: cross-entropy of the (K+1)-way softmax on 128 regions sampled over the
        batch's images."""
        regions, gt_boxes, gt_labels = self.training_regions(batch, self.config.max_proposals[0])
        sampling = self.config.finetune
        labels = []
        for boxes, gt, classes in zip(regions, gt_boxes, gt_labels, strict=True):
            iou = box_iou(gt.to(boxes.dtype), boxes)  # (G, R_i)
            matches = match_boxes(iou, sampling.positive_iou, sampling.background_iou)
            labels.append(matched_labels(matches, classes))  # class, 0 background, -1 unused
        labels = torch.cat(labels)
        positive, background = sample_balanced(
            labels, sampling.batch_size, sampling.positive_fraction
        )
        if positive.numel() + background.numel() == 0:  # nothing to learn: a zero loss
            return {"cls": self.cls_score.weight.sum() * 0.0}
        chosen = torch.zeros_like(labels, dtype=torch.bool)
        chosen[torch.cat((positive, background))] = True
        counts = [len(boxes) for boxes in regions]
        sampled = [boxes[c] for boxes, c in zip(regions, chosen.split(counts), strict=True)]
        _, fc7 = self.region_features(batch, sampled)
        return {"cls": F.cross_entropy(self.cls_score(fc7), labels[chosen])}

    def detect(self, batch: ImageBatch) -> list[Detections]:
        """Score every proposal, regress it once per class, per-class NMS, image by image."""
        regions = self.regions(batch, self.config.max_proposals[1])
        pool5, fc7 = self.region_features(batch, regions)
        scores = self.class_scores(fc7)  # (R, K)
        boxes = self.regressors(pool5, torch.cat(regions))  # (R, K, 4)
        counts = [len(r) for r in regions]
        return [
            select_detections(b, s, size, self.config.detection)
            for b, s, size in zip(
                boxes.split(counts), scores.split(counts), batch.image_sizes, strict=True
            )
        ]

    @property
    def display_threshold(self) -> float:
        """Scores worth showing: the object side of the SVMs' margin (> 0), or the softmax's
        more-likely-than-not (0.5)."""
        return 0.0 if self.config.classifier == "svm" and self.svms.fitted else 0.5

    def class_scores(self, fc7: Tensor) -> Tensor:
        """fc7 ``(R, D)`` -> ``(R, K)``: the SVMs' margins, or the softmax's probabilities
        before the SVMs are fitted (or with ``classifier="softmax"``)."""
        if self.config.classifier == "svm" and self.svms.fitted:
            return self.svms(fc7)
        return torch.softmax(self.cls_score(fc7), dim=1)[:, 1:]

    def fit_stage(self, stage: str, context) -> None:
        """Stages 2 and 3 on the cached features of every training region; a summary per
        class goes to ``RUN/{stage}.json``."""
        cached = self.cached_regions(context)
        if stage == "svm":
            generator = torch.Generator().manual_seed(self.config.seed)
            summary = self.svms.fit(
                cached.features,
                cached.labels,
                cached.class_iou,
                cached.boxes,
                cached.image_index,
                self.config.svm,
                generator,
            )
        else:
            summary = self.regressors.fit(
                cached.pool5,
                cached.example_boxes,
                cached.example_targets,
                cached.example_labels,
                self.config.regression,
            )
        write_json(context.run_dir / f"{stage}.json", {"per_class": summary})

    @torch.no_grad()
    def cached_regions(self, context) -> CachedRegions:
        """The features of every training region (ground truth and proposals), computed once
        in ``RUN/features`` and read back by every later fitted stage and resumed run."""
        directory = context.run_dir / "features"
        key = self.feature_key(context)
        cached = read_region_cache(directory, key)
        if cached is not None:
            return cached
        num_classes = self.svms.weight.shape[0]
        writer = RegionCacheWriter(directory, key, num_classes, self.config.regression.min_iou)
        device = self.cls_score.weight.device
        for batch in context.batches(1, "features"):
            batch = batch.to(device)
            limit = self.config.max_proposals[0]  # the training set's cap
            regions, gt_boxes, gt_labels = self.training_regions(batch, limit)
            pool5, fc7 = self.region_features(batch, regions)
            counts = [len(r) for r in regions]
            for parts in zip(
                regions, gt_boxes, gt_labels, pool5.split(counts), fc7.split(counts), strict=True
            ):
                writer.add(*parts)
        return writer.finish()

    def feature_key(self, context) -> str:
        """A digest of what the cached features depend on: the network's weights (not the
        SVMs' nor the regressors'), the settings, the images and their transform."""
        digest = hashlib.sha256()
        for name, tensor in self.state_dict().items():
            if not name.startswith(("svms.", "regressors.")):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy())
        images = [str(context.dataset.image_id(i)) for i in range(len(context.dataset))]
        settings = [repr(self.config), repr(context.transform), images]
        digest.update(json.dumps(settings).encode())
        return digest.hexdigest()
