"""Faster R-CNN's proposal layer: from the RPN's outputs to a few hundred RoIs per image.

For each image (py-faster-rcnn's proposal_layer, in its order):
1. decode every anchor's predicted deltas into a box;
2. clip the boxes to the image;
3. drop boxes with a side under the minimum size (in the original image's pixels);
4. keep the top pre_nms_top_n (12,000 train / 6,000 test) by objectness;
5. non-maximum suppression at IoU 0.7;
6. keep the top post_nms_top_n (2,000 train / 300 test).
The selection is made without gradients. The returned boxes are gathered from the decoded
boxes, so they carry the deltas' gradient when the caller wants one (non-approximate joint
training) and none when the caller passes detached deltas (approximate joint training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.box_coder import BoxCoder
from rcnn.boxes import clip_boxes, remove_small_boxes
from rcnn.ops import nms


@dataclass(frozen=True)
class ProposalConfig:
    """(train, test) pairs as py-faster-rcnn publishes them."""

    pre_nms_top_n: tuple[int, int] = (12000, 6000)
    post_nms_top_n: tuple[int, int] = (2000, 300)
    nms_threshold: float = 0.7
    min_size: float = 16.0  # in original-image pixels

    def top_n(self, training: bool) -> tuple[int, int]:
        phase = 0 if training else 1
        return self.pre_nms_top_n[phase], self.post_nms_top_n[phase]


def propose(
    anchors: Tensor,
    objectness: Tensor,
    deltas: Tensor,
    image_size: tuple[int, int],
    image_scale: float,
    config: ProposalConfig,
    training: bool,
    coder: BoxCoder = BoxCoder(),
) -> tuple[Tensor, Tensor]:
    """One image's proposals ``(P, 4)`` and their objectness logits ``(P,)``, best first.

    anchors (B, 4), objectness (B,) logits and deltas (B, 4) of that image; image_size = (H, W)
    of the resized image; image_scale = resized / original size (for the minimum size).
    """
    pre_nms, post_nms = config.top_n(training)
    # 1-2. decode and clip
    boxes = clip_boxes(coder.decode(deltas, anchors), image_size)
    with torch.no_grad():
        # 3. drop small boxes
        keep = remove_small_boxes(boxes, config.min_size * image_scale)
        # 4. top-N by objectness; equal scores in anchor order (flat backgrounds give many),
        # so that every device, and ONNX's TopK, takes the same ones
        keep = keep[top_n(objectness.detach()[keep], pre_nms)]
        # 5-6. NMS, stopping once it has the top N
        kept = nms(
            boxes.detach()[keep], objectness.detach()[keep], config.nms_threshold, top_k=post_nms
        )
        keep = keep[kept]
    return boxes[keep], objectness[keep]


def top_n(scores: Tensor, n: int) -> Tensor:
    """Indices of the ``n`` highest of ``scores (B,)``, best first, equal scores in index
    order: a stable descending sort's first ``n``, without sorting all B (8,640 anchors'
    scores for a 320 x 427 image: 0.5 -> 0.1 ms here)."""
    if torch.compiler.is_exporting() or not 0 < n < scores.numel():  # export: one TopK node
        return torch.sort(scores, descending=True, stable=True).indices[:n]
    nth = torch.topk(scores, n, sorted=False).values.min()  # the n-th highest score
    above = torch.nonzero(scores > nth).flatten()  # fewer than n, in index order
    tied = torch.nonzero(scores == nth).flatten()[: n - above.numel()]
    chosen = torch.cat((above, tied))
    return chosen[torch.sort(scores[chosen], descending=True, stable=True).indices]
