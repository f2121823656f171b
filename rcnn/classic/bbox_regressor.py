"""R-CNN's bounding-box regression (R-CNN section 3.4 and appendix C; SPPNet section 4.1).

For each class, a linear map from a region's pool5 features to R-CNN's targets
(t_x, t_y, t_w, t_h) (``rcnn.box_coder``), fitted by ridge regression in closed form:

    w_* = argmin_w  sum_i (t_*^i - w . phi_5(P^i))^2 + lambda |w|^2,    lambda = 1000.

1. Examples: the cached regions (proposals and ground-truth boxes) whose IoU with their
   best-overlapping ground-truth box is at least 0.6 (SPPNet: 0.5); each regresses to that
   box and belongs to its class. Farther regions make the task hopeless (appendix C).
2. Features are scaled to a mean L2 norm of 20, as for the SVMs (R-CNN's code), which gives
   lambda = 1000 its meaning.
3. Closed form, with an unregularised intercept (features and targets centred first):
   ``W = (X^T X + lambda I)^-1 X^T Y``, or ``X^T (X X^T + lambda I)^-1 Y`` when there are fewer
   examples than features (the same matrix, a smaller system). R-CNN's code centres only the
   targets and regularises a bias feature of 1; its whitening of the targets changes nothing
   in a ridge solution, which is linear in the targets.
4. At test time each proposal is moved once, by its class's map, for every class.

Shapes: M examples, F feature size (pool5), T targets (4), K classes, R regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rcnn.box_coder import BoxCoder
from rcnn.classic.svm import mean_norm


@dataclass(frozen=True)
class BoxRegressionConfig:
    """R-CNN's settings; SPPNet uses ``min_iou=0.5``."""

    ridge_lambda: float = 1000.0
    min_iou: float = 0.6
    feature_norm: float = 20.0


def ridge_regression(x: Tensor, y: Tensor, ridge_lambda: float) -> tuple[Tensor, Tensor]:
    """Step 3: ``x (M, F)``, ``y (M, T)`` -> ``weight (F, T)``, ``bias (T,)`` minimising
    ``|x W + b - y|^2 + lambda |W|^2`` (b not regularised), in float64, returned as float32."""
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - x_mean, y - y_mean
    if xc.shape[0] >= xc.shape[1]:  # primal: an F x F system
        gram = xc.t() @ xc + ridge_lambda * torch.eye(xc.shape[1], dtype=x.dtype)
        weight = torch.cholesky_solve(xc.t() @ yc, torch.linalg.cholesky(gram))
    else:  # dual: an M x M system
        kernel = xc @ xc.t() + ridge_lambda * torch.eye(xc.shape[0], dtype=x.dtype)
        weight = xc.t() @ torch.cholesky_solve(yc, torch.linalg.cholesky(kernel))
    bias = y_mean - x_mean @ weight
    return weight.float(), bias.float()


class BoxRegressors(nn.Module):
    """K class-specific box regressors over F pool5 features, as buffers (saved with the
    model): ``forward(features (R, F), boxes (R, 4)) -> (R, K, 4)``, each box moved by each
    class's map (left where it is until ``fit``)."""

    def __init__(self, num_classes: int, feature_size: int):
        super().__init__()
        self.coder = BoxCoder()  # R-CNN's targets, unnormalised
        self.register_buffer("weight", torch.zeros(feature_size, num_classes * 4))
        self.register_buffer("bias", torch.zeros(num_classes * 4))
        self.register_buffer("feature_scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        num_classes = self.bias.shape[0] // 4
        if not self.fitted:
            return boxes[:, None, :].expand(-1, num_classes, 4)
        scaled = features * self.feature_scale.to(features.dtype)
        deltas = scaled @ self.weight.to(features.dtype) + self.bias.to(features.dtype)
        # (R, K*4) deltas -> (R, K*4) boxes -> (R, K, 4)
        return self.coder.decode(deltas, boxes).reshape(-1, num_classes, 4)

    def fit(
        self,
        features: Tensor,
        boxes: Tensor,
        targets: Tensor,
        labels: Tensor,
        config: BoxRegressionConfig = BoxRegressionConfig(),
    ) -> list[dict]:
        """Fit each class on its examples: ``features (M, F)`` of regions ``boxes (M, 4)``
        that regress to ground-truth ``targets (M, 4)`` of class ``labels (M,)``, all already
        chosen by step 1. A class without examples keeps the identity. One summary a class."""
        self.feature_scale.fill_(config.feature_norm / max(mean_norm(features), 1e-12))
        goals = self.coder.encode(boxes, targets)  # (M, 4): t_x, t_y, t_w, t_h
        summaries = []
        for k in range(self.bias.shape[0] // 4):
            rows = torch.nonzero(labels == k + 1).flatten()
            summary = {"examples": rows.numel()}
            if rows.numel() > 0:
                x = features[rows].float() * self.feature_scale
                weight, bias = ridge_regression(x, goals[rows], config.ridge_lambda)
                self.weight[:, 4 * k : 4 * k + 4], self.bias[4 * k : 4 * k + 4] = weight, bias
                residual = x @ weight + bias - goals[rows]
                summary["mean_squared_error"] = residual.square().mean().item()
                summary["target_variance"] = goals[rows].var(dim=0, unbiased=False).mean().item()
            summaries.append(summary)
        self.fitted.fill_(True)
        return summaries
