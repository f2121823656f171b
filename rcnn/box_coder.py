"""Bounding-box regression targets: R-CNN's parameterisation (R-CNN appendix C).

A proposal P (centre P_x, P_y, size P_w, P_h) and a ground-truth box G are related by

    t_x = (G_x - P_x) / P_w        t_y = (G_y - P_y) / P_h
    t_w = log(G_w / P_w)           t_h = log(G_h / P_h)

and a prediction d is applied as G^_x = P_w d_x + P_x, G^_w = P_w exp(d_w) (likewise y, h).
Fast R-CNN normalises the targets to zero mean and unit variance; its published statistics
are means 0 and stds (0.1, 0.1, 0.2, 0.2), the defaults of ``BoxCoder.fast_rcnn()``.
Before exp, d_w and d_h are clamped at log(1000 / 16) so that no box can explode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rcnn.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

BBOX_XFORM_CLIP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class BoxCoder:
    """Encodes boxes as regression targets relative to reference boxes, and back.

    means/stds normalise the targets: stored targets are ``(t - mean) / std``.
    """

    means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    @classmethod
    def fast_rcnn(cls) -> BoxCoder:
        """The detection head's coder: Fast R-CNN's normalisation (stds 0.1, 0.1, 0.2, 0.2)."""
        return cls(stds=(0.1, 0.1, 0.2, 0.2))

    def encode(self, reference: Tensor, boxes: Tensor) -> Tensor:
        """Targets t (B, 4) that take ``reference (B, 4)`` boxes P to ``boxes (B, 4)`` G."""
        p = xyxy_to_cxcywh(reference)
        g = xyxy_to_cxcywh(boxes)
        t = torch.stack(
            (
                (g[:, 0] - p[:, 0]) / p[:, 2],
                (g[:, 1] - p[:, 1]) / p[:, 3],
                torch.log(g[:, 2] / p[:, 2]),
                torch.log(g[:, 3] / p[:, 3]),
            ),
            dim=1,
        )
        return (t - t.new_tensor(self.means)) / t.new_tensor(self.stds)

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """Apply ``deltas (B, 4)`` or class-specific ``(B, K*4)`` to ``reference (B, 4)``.

        Returns boxes of the same shape as ``deltas``.
        """
        b = reference.shape[0]
        d = deltas.reshape(b, deltas.shape[1] // 4, 4)  # (B, K*4) -> (B, K, 4)
        d = d * d.new_tensor(self.stds) + d.new_tensor(self.means)
        p = xyxy_to_cxcywh(reference)[:, None, :]  # (B, 1, 4): broadcast over K
        centre = d[..., :2] * p[..., 2:] + p[..., :2]
        size = torch.exp(d[..., 2:].clamp(max=BBOX_XFORM_CLIP)) * p[..., 2:]
        return cxcywh_to_xyxy(torch.cat((centre, size), dim=-1)).reshape(deltas.shape)
