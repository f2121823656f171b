"""Supervised pre-training (R-CNN section 2.3): a backbone first learns to classify warped
regions, then learns to detect.

Every detector of the lineage starts from a CNN pre-trained as an ImageNet classifier and is
then fine-tuned for detection. Where no such weights exist (the small CPU backbone, or a
domain far from ImageNet), ``pretrain_backbone`` does the same on the training set's own
objects, the way R-CNN fine-tunes on warped proposals:

1. each ground-truth box, dilated by R-CNN's context padding (16 pixels around a 227-pixel
   warp, ~7% per side), is warped to S x S; a few windows that overlap no object (IoU < 0.3)
   are warped too, as background;
2. the warped regions go through the trunk, RoI pooling over the whole region (pool5) and the
   head (fc6, fc7), and a temporary (K + 1)-way classifier, trained with the log loss;
3. S is drawn per batch from several sizes, so the features serve objects of many sizes;
4. the classifier is dropped (as ImageNet's fc8 is); the trunk and head are what a detector
   starts from (``--pretrained FILE``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from rcnn import checkpoint
from rcnn.backbones import Backbone
from rcnn.boxes import box_iou, to_rois
from rcnn.data.dataset import DetectionDataset
from rcnn.data.loader import make_loader
from rcnn.data.transforms import normalize
from rcnn.ops import roi_align, roi_pool

CONTEXT = 16 / 227  # R-CNN's context padding, as a fraction of the warped size (per side)


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 20
    images_per_batch: int = 8
    crop_sizes: tuple[int, ...] = (32, 48, 64, 96)
    background_per_image: int = 2
    learning_rate: float = 0.002  # AdamW: from scratch, it learns far faster than SGD here
    weight_decay: float = 1e-4
    workers: int = 2
    seed: int = 0


class RegionClassifier(nn.Module):
    """trunk -> RoI pooling of the whole warped region (pool5) -> head (fc6, fc7) -> K + 1."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.trunk, self.head = backbone.trunk, backbone.head
        self.pool_size, self.stride = backbone.pool_size, backbone.stride
        self.classifier = nn.Linear(backbone.representation_size, num_classes + 1)

    def forward(self, regions: Tensor) -> Tensor:
        """regions (R, 3, S, S), normalised -> class logits (R, K+1)."""
        features = self.trunk(regions)
        height, width = regions.shape[-2:]
        whole = regions.new_tensor([[0.0, 0.0, width, height]]).expand(len(regions), 4)
        rois = to_rois(list(whole[:, None]))
        pooled = roi_pool(features, rois, self.pool_size, 1.0 / self.stride)
        return self.classifier(self.head(pooled))


def warp_regions(images: Tensor, boxes: list[Tensor], size: int) -> Tensor:
    """Warp each box (with context padding) of the (N, 3, H, W) images to ``size`` x ``size``
    (bilinear, as R-CNN's affine warp) -> (R, 3, size, size)."""
    padded = []
    for b in boxes:
        pad = (b[:, 2:] - b[:, :2]) * CONTEXT / (1 - 2 * CONTEXT)  # (R_i, 2): context per side
        padded.append(torch.cat((b[:, :2] - pad, b[:, 2:] + pad), dim=1))
    return roi_align(images, to_rois(padded), size, 1.0, sampling_ratio=2, aligned=True)


def background_windows(
    annotation_boxes: Tensor, image_size: tuple[int, int], count: int, generator
) -> Tensor:
    """Up to ``count`` random windows (sides 10-60% of the image) whose IoU with every box is
    below 0.3 -> (B, 4)."""
    height, width = image_size
    wh = torch.rand(4 * count, 2, generator=generator) * 0.5 + 0.1
    wh = wh * torch.tensor([width, height])
    xy = torch.rand(4 * count, 2, generator=generator) * (torch.tensor([width, height]) - wh)
    windows = torch.cat((xy, xy + wh), dim=1)
    if len(annotation_boxes):
        windows = windows[box_iou(annotation_boxes, windows).max(dim=0).values < 0.3]
    return windows[:count]


def jitter(boxes: Tensor, generator: torch.Generator, amount: float = 0.05) -> Tensor:
    """Shift and scale each box by up to ``amount`` of its size: a detector's regions are
    never exactly the ground truth. (B, 4) -> (B, 4)."""
    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + (
        torch.rand(size.shape, generator=generator) * 2 - 1
    ) * amount * size
    size = size * (1 + (torch.rand(size.shape, generator=generator) * 2 - 1) * amount)
    return torch.cat((centre - size / 2, centre + size / 2), dim=1)


def make_regions(
    samples, backbone: Backbone, config: PretrainConfig, size: int, generator
) -> tuple[Tensor, Tensor]:
    """A batch of Samples -> warped, normalised, randomly flipped regions (R, 3, size, size) and
    their labels (R,): the ground-truth objects (jittered) and background windows (label 0)."""
    boxes, labels = [], []
    for sample in samples:
        keep = ~sample.annotation.difficult
        objects = jitter(sample.annotation.boxes[keep], generator)
        image_size = tuple(sample.image.shape[-2:])
        background = background_windows(
            sample.annotation.boxes, image_size, config.background_per_image, generator
        )
        boxes.append(torch.cat((objects, background)))
        labels.append(
            torch.cat(
                (sample.annotation.labels[keep], torch.zeros(len(background), dtype=torch.int64))
            )
        )
    images = [normalize(s.image, backbone.pixel_mean, backbone.pixel_std) for s in samples]
    height = max(i.shape[-2] for i in images)
    width = max(i.shape[-1] for i in images)
    batch = torch.stack(
        [F.pad(i, (0, width - i.shape[-1], 0, height - i.shape[-2])) for i in images]
    )
    regions = warp_regions(batch, boxes, size)
    flip = torch.rand(len(regions), generator=generator) < 0.5
    regions = torch.where(flip[:, None, None, None], regions.flip(-1), regions)
    return regions, torch.cat(labels)


def pretrain_backbone(
    backbone: Backbone,
    dataset: DetectionDataset,
    config: PretrainConfig = PretrainConfig(),
    time_budget: float | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``backbone`` (trunk and head) as a region classifier on ``dataset``'s objects, for
    ``config.epochs`` or until ``time_budget`` minutes pass; returns a log, a dict per epoch."""
    torch.manual_seed(config.seed)
    model = RegionClassifier(backbone, len(dataset.class_names)).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), config.learning_rate, weight_decay=config.weight_decay
    )
    loader = make_loader(dataset, config.images_per_batch, None, True, config.seed, config.workers)
    generator = torch.Generator().manual_seed(config.seed)
    total, started, step, log = config.epochs * len(loader), time.perf_counter(), 0, []
    for epoch in range(config.epochs):
        loader.sampler.set_epoch(epoch)
        correct = seen = 0
        for samples in tqdm(
            loader, desc=f"pretrain {epoch + 1}/{config.epochs}", leave=False, disable=not progress
        ):
            elapsed = time.perf_counter() - started
            done = max(step / total, elapsed / (60 * time_budget) if time_budget else 0.0)
            if done >= 1:
                return log
            for group in optimizer.param_groups:  # cosine decay, as far as the run has gone
                group["lr"] = config.learning_rate * 0.5 * (1 + math.cos(math.pi * done))
            size = config.crop_sizes[
                int(torch.randint(len(config.crop_sizes), (1,), generator=generator))
            ]
            regions, labels = make_regions(samples, backbone, config, size, generator)
            logits = model(regions)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        log.append(
            {
                "epoch": epoch + 1,
                "accuracy": correct / max(1, seen),
                "seconds": time.perf_counter() - started,
            }
        )
    return log


def save_backbone(backbone: Backbone, path: str | Path, about: dict) -> None:
    """The backbone's weights (trunk and head), in the layout ``--pretrained`` reads."""
    checkpoint.save(path, dict(backbone.state_dict()), {"pretrained": about})
