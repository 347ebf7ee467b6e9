"""Multilabel losses that mask unknown labels (NaN), in a registry.

Every loss takes logits ``(N, C)`` and labels ``(N, C)`` with 1 / 0 / NaN and averages over
the labelled entries only. ``create_loss(cfg, pos_counts, neg_counts)`` builds one by name;
the counts (from the training split) feed ``pos_weight="auto"`` and the class-balanced weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import UserError, did_you_mean
from cxrkit.train.config import LossConfig
from cxrkit.train.rules import LOSS_NAMES


def _masked_mean(elementwise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (elementwise * mask).sum() / mask.sum().clamp(min=1)


class MaskedBCE(nn.Module):
    """BCE-with-logits averaged over labelled entries, each class's positive and negative term
    optionally weighted: ``w_pos * y * -log(p) + w_neg * (1 - y) * -log(1 - p)``.

    ``pos_weight`` alone is exactly :func:`torch.nn.functional.binary_cross_entropy_with_logits`'s.
    """

    def __init__(
        self, pos_weight: torch.Tensor | None = None, neg_weight: torch.Tensor | None = None
    ):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.register_buffer("neg_weight", neg_weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask = ~torch.isnan(labels)
        target = torch.nan_to_num(labels, nan=0.0)
        logits = logits.float()
        pos_term = target * F.softplus(-logits)
        neg_term = (1 - target) * F.softplus(logits)
        if self.pos_weight is not None:
            pos_term = pos_term * self.pos_weight
        if self.neg_weight is not None:
            neg_term = neg_term * self.neg_weight
        return _masked_mean(pos_term + neg_term, mask)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017): ``(1 - p_t)^gamma`` times BCE, masked."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask = ~torch.isnan(labels)
        target = torch.nan_to_num(labels, nan=0.0)
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = torch.exp(-bce)
        return _masked_mean((1 - p_t) ** self.gamma * bce, mask)


_TINY = 1e-12  # floor of the focusing bases: finite gradients for exponents below 1


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (ASL, Ridnik et al., ICCV 2021), masked.

    With ``p = sigmoid(logit)`` and the shifted probability ``p_m = max(p - clip, 0)``::

        positive (y = 1):  -(1 - p)^gamma_pos * log(p)
        negative (y = 0):  -p_m^gamma_neg * log(1 - p_m)

    averaged over labelled entries. ``gamma_neg > gamma_pos`` down-weights the many easy
    negatives of a multilabel problem; ``clip`` discards negatives with ``p <= clip`` entirely
    (and lowers the weight of possibly mislabelled negatives). ``gamma_neg = gamma_pos =
    clip = 0`` is exactly masked BCE. The focusing weights carry gradients, as in the paper.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05):
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0 or not 0 <= clip < 1:
            raise UserError(
                "asymmetric loss needs asl_gamma_neg >= 0, asl_gamma_pos >= 0 and "
                f"0 <= asl_clip < 1; got {gamma_neg}, {gamma_pos}, {clip}"
            )
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` logits and 1 / 0 / NaN labels -> scalar loss."""
        mask = ~torch.isnan(labels)
        target = torch.nan_to_num(labels, nan=0.0)
        logits = logits.float()
        p = torch.sigmoid(logits)
        pos_term = F.softplus(-logits)  # -log(p), stable
        if self.gamma_pos > 0:
            pos_term = (1 - p).clamp(min=_TINY) ** self.gamma_pos * pos_term
        if self.clip > 0:
            p_neg = (p - self.clip).clamp(min=0)
            neg_term = -torch.log1p(-p_neg)  # 1 - p_neg >= clip > 0: finite
        else:
            p_neg, neg_term = p, F.softplus(logits)  # -log(1 - p), stable
        if self.gamma_neg > 0:
            neg_term = p_neg.clamp(min=_TINY) ** self.gamma_neg * neg_term
        return _masked_mean(target * pos_term + (1 - target) * neg_term, mask)


def auto_pos_weight(pos: np.ndarray, neg: np.ndarray, *, max_weight: float = 50.0) -> np.ndarray:
    """``neg / pos`` per class, clipped to ``[1, max_weight]`` (1 where there are no positives)."""
    ratio = np.divide(neg, pos, out=np.ones_like(neg, dtype=np.float64), where=pos > 0)
    return np.clip(ratio, 1.0, max_weight)


def class_balanced_weights(
    pos: np.ndarray, neg: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cui et al. 2019 effective-number weights ``(1-beta)/(1-beta^n)`` for positives and
    negatives of each class, scaled so the two average to 1 per class."""

    def effective(n: np.ndarray) -> np.ndarray:
        return (1 - beta) / (1 - np.power(beta, np.maximum(n, 1)))

    wp, wn = effective(pos), effective(neg)
    scale = 2.0 / (wp + wn)
    return wp * scale, wn * scale


LossFactory = Callable[[LossConfig, np.ndarray, np.ndarray], nn.Module]


def _bce(cfg: LossConfig, pos: np.ndarray, neg: np.ndarray) -> nn.Module:
    if cfg.pos_weight is None:
        return MaskedBCE()
    if cfg.pos_weight != "auto":
        raise UserError(f"loss.pos_weight must be null or 'auto', got {cfg.pos_weight!r}")
    return MaskedBCE(torch.tensor(auto_pos_weight(pos, neg), dtype=torch.float32))


def _class_balanced(cfg: LossConfig, pos: np.ndarray, neg: np.ndarray) -> nn.Module:
    wp, wn = class_balanced_weights(pos, neg, cfg.cb_beta)
    return MaskedBCE(torch.tensor(wp, dtype=torch.float32), torch.tensor(wn, dtype=torch.float32))


LOSSES: dict[str, LossFactory] = {
    "bce": _bce,
    "focal": lambda cfg, pos, neg: FocalLoss(cfg.focal_gamma),
    "class_balanced": _class_balanced,
    "asymmetric": lambda cfg, pos, neg: AsymmetricLoss(
        cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip
    ),
}
assert tuple(LOSSES) == LOSS_NAMES, "train/rules.py LOSS_NAMES must name the LOSSES registry"


def create_loss(cfg: LossConfig, pos_counts: np.ndarray, neg_counts: np.ndarray) -> nn.Module:
    """Build the loss named ``cfg.name`` given per-class positive/negative training counts."""
    if cfg.name not in LOSSES:
        raise did_you_mean(cfg.name, LOSSES, what="loss")
    return LOSSES[cfg.name](cfg, np.asarray(pos_counts, float), np.asarray(neg_counts, float))
