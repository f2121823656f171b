"""R-CNN's object category classifiers: one linear SVM per class, trained with hard negative
mining on cached fc7 features (R-CNN section 2.3 and appendix B; SPPNet section 4.1).

1. Positives of class k are the features of its ground-truth boxes; negatives are the regions
   whose IoU with every ground-truth box of class k is below 0.3 (ground-truth boxes of other
   classes included); the regions in between are left out. SPPNet also drops a negative that
   overlaps another negative of its image by more than 70% (``negative_nms``).
2. Features are scaled by one factor so that their mean L2 norm is 20 (R-CNN's code); the
   weights returned score the unscaled features.
3. Hard negative mining: train on the positives and a random subset of the negatives, score
   ALL the negatives, add those that violate the margin (score > -1) and are not in the set
   yet, retrain; repeat until no negative is added or ``max_rounds`` rounds have added some.
   Once none is added, the set's SVM is also the SVM of all the negatives: a negative outside
   it scores <= -1, so it adds no loss and no gradient.

The solver is ours. R-CNN's liblinear (``-s 3``) minimises the hinge loss in the dual; we
minimise its smooth twin, the squared hinge (L2-loss SVM, liblinear ``-s 1``), in the primal
with L-BFGS, one vectorised pass over the features per evaluation:

    min_w  1/2 |w|^2 + C sum_i c_i max(0, 1 - y_i w.x_i)^2,    c_i = 2 for positives, 1 else,

with R-CNN's settings: C = 0.001, and liblinear's bias as a constant feature of value B = 10,
so that the bias is regularised as B times a weight. The features stay where the caller keeps
them (a memory-mapped float16 cache): only the active set is copied, as float32.

Shapes: P positives, M negatives, D feature size, K classes, B cached regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rcnn.ops import batched_nms

SCORE_CHUNK = 65536  # rows of the cached features scored at a time


@dataclass(frozen=True)
class SVMConfig:
    """R-CNN's SVM training settings (SPPNet's with ``negative_nms=0.7``)."""

    C: float = 0.001
    positive_weight: float = 2.0
    bias_multiplier: float = 10.0
    feature_norm: float = 20.0
    negative_iou: float = 0.3
    negative_nms: float | None = None
    initial_negatives: int = 5000
    hard_threshold: float = -1.0
    max_rounds: int = 10
    solver_iterations: int = 500


def train_svm(
    positives: Tensor,
    negatives: Tensor,
    config: SVMConfig = SVMConfig(),
    start: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The L2-regularised squared-hinge SVM of ``positives (P, D)`` (+1) against
    ``negatives (M, D)`` (-1) -> ``weight (D,)``, ``bias ()`` float32; ``start``: a previous
    (weight, bias) to begin from (mining retrains on a grown set)."""
    x = torch.cat((positives, negatives)).float()
    x = torch.cat((x, x.new_full((x.shape[0], 1), config.bias_multiplier)), dim=1)  # (P+M, D+1)
    y = torch.cat((x.new_ones(len(positives)), -x.new_ones(len(negatives))))
    cost = config.C * torch.where(y > 0, config.positive_weight, 1.0)
    w = x.new_zeros(x.shape[1])
    if start is not None:
        w = torch.cat((start[0].float(), start[1].float()[None] / config.bias_multiplier))
    w.requires_grad_(True)
    solver = torch.optim.LBFGS(
        [w], max_iter=config.solver_iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def objective() -> Tensor:
        solver.zero_grad()
        violation = torch.relu(1 - y * (x @ w))
        loss = 0.5 * w.dot(w) + (cost * violation.square()).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        solver.step(objective)
    w = w.detach()
    return w[:-1], w[-1] * config.bias_multiplier


def linear_scores(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``features (M, D)`` (any float dtype, e.g. a float16 cache) -> ``(M,)`` float32
    scores ``w.x + b``, a chunk of rows at a time."""
    scores = weight.new_empty(features.shape[0])
    for start in range(0, features.shape[0], SCORE_CHUNK):
        scores[start : start + SCORE_CHUNK] = features[start : start + SCORE_CHUNK].float() @ weight
    return scores + bias


@dataclass(frozen=True)
class MiningRound:
    """One round of hard negative mining: the SVM that scored the negatives, and the rows
    ``(A,)`` of the negatives it found violating the margin outside the set, now added."""

    weight: Tensor
    bias: Tensor
    added: Tensor


@dataclass(frozen=True)
class MinedSVM:
    """The final SVM (on unscaled features); whether mining ran out of violators; the rows of
    the random first set of negatives; each round."""

    weight: Tensor
    bias: Tensor
    converged: bool
    initial: Tensor
    rounds: tuple[MiningRound, ...]

    @property
    def used(self) -> Tensor:
        """The rows of every negative the final SVM trained on."""
        return torch.cat([self.initial, *(r.added for r in self.rounds)])


def mine_hard_negatives(
    positives: Tensor,
    features: Tensor,
    negatives: Tensor,
    config: SVMConfig = SVMConfig(),
    feature_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> MinedSVM:
    """Step 3: one class's SVM from ``positives (P, D)`` and the hard ones among the
    negatives, the rows ``negatives (M,)`` of ``features (B, D)`` (the whole cache, never
    copied whole), features multiplied by ``feature_scale`` for training."""
    is_negative = torch.zeros(features.shape[0], dtype=torch.bool)
    is_negative[negatives] = True
    initial = negatives[torch.randperm(negatives.numel(), generator=generator)]
    initial = initial[: config.initial_negatives].sort().values
    used = torch.zeros_like(is_negative)
    used[initial] = True
    scaled_positives = positives.float() * feature_scale

    def train(start: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        chosen = features[torch.nonzero(used).flatten()].float() * feature_scale
        weight, bias = train_svm(scaled_positives, chosen, config, start)
        return weight * feature_scale, bias  # the same scores on unscaled features

    weight, bias = train(None)
    rounds = []
    for _ in range(config.max_rounds):
        violating = linear_scores(features, weight, bias).cpu() > config.hard_threshold
        added = torch.nonzero(violating & is_negative & ~used).flatten()
        rounds.append(MiningRound(weight, bias, added))
        if added.numel() == 0:
            return MinedSVM(weight, bias, True, initial, tuple(rounds))
        used[added] = True
        weight, bias = train((weight / feature_scale, bias))
    return MinedSVM(weight, bias, False, initial, tuple(rounds))


def negative_candidates(
    class_iou: Tensor,
    boxes: Tensor,
    image_index: Tensor,
    config: SVMConfig,
) -> Tensor:
    """Step 1's negatives of one class: indices ``(M,)`` of the regions whose IoU with the
    class's ground truth, ``class_iou (B,)``, is below ``negative_iou``; with ``negative_nms``,
    less those overlapping an earlier negative of their image (``boxes (B, 4)``,
    ``image_index (B,)``) by more than that (SPPNet), keeping earlier (better-ranked) ones."""
    candidates = torch.nonzero(class_iou < config.negative_iou).flatten()
    if config.negative_nms is None or candidates.numel() == 0:
        return candidates
    rank = -torch.arange(candidates.numel(), dtype=torch.float32)  # earlier rows first
    keep = batched_nms(boxes[candidates], rank, image_index[candidates], config.negative_nms)
    return candidates[keep.sort().values]


class LinearSVMs(nn.Module):
    """K linear SVMs over D features, as buffers (saved with the model's weights):
    ``forward(features (R, D)) -> scores (R, K)``; ``fitted`` says whether they were trained."""

    def __init__(self, num_classes: int, feature_size: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, feature_size))
        self.register_buffer("bias", torch.zeros(num_classes))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, features: Tensor) -> Tensor:
        return features @ self.weight.t().to(features.dtype) + self.bias.to(features.dtype)

    def fit(
        self,
        features: Tensor,
        labels: Tensor,
        class_iou: Tensor,
        boxes: Tensor,
        image_index: Tensor,
        config: SVMConfig = SVMConfig(),
        generator: torch.Generator | None = None,
    ) -> list[dict]:
        """Train every class's SVM on the cached regions: ``features (B, D)``, ``labels (B,)``
        (k for a ground-truth box of class k, else 0), ``class_iou (B, K)``, ``boxes (B, 4)``,
        ``image_index (B,)``. Returns one summary per class."""
        scale = config.feature_norm / max(mean_norm(features), 1e-12)  # step 2
        summaries = []
        for k in range(self.weight.shape[0]):
            negatives = negative_candidates(class_iou[:, k], boxes, image_index, config)
            positives = features[torch.nonzero(labels == k + 1).flatten()]
            mined = mine_hard_negatives(positives, features, negatives, config, scale, generator)
            self.weight[k], self.bias[k] = mined.weight, mined.bias
            summaries.append(
                {
                    "positives": positives.shape[0],
                    "negatives": negatives.numel(),
                    "negatives_used": mined.used.numel(),
                    "added_per_round": [r.added.numel() for r in mined.rounds],
                    "converged": mined.converged,
                }
            )
        self.fitted.fill_(True)
        return summaries


def mean_norm(features: Tensor) -> float:
    """The mean L2 norm of the rows of ``features (B, D)``, a chunk at a time (0 if B = 0)."""
    total = 0.0
    for start in range(0, features.shape[0], SCORE_CHUNK):
        total += features[start : start + SCORE_CHUNK].float().norm(dim=1).sum().item()
    return total / max(features.shape[0], 1)
