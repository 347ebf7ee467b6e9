"""DeLong intervals and paired tests for AUROC.

DeLong, DeLong & Clarke-Pearson (1988) estimate the variance of the empirical AUROC from its
structural components; Sun & Xu (2014) compute them from midranks in O(n log n). The bootstrap
(``bootstrap_ci`` for every figure, resampling patients) is :mod:`cxrkit.evaluate.bootstrap`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata

from cxrkit.evaluate.metrics import Floats, validate_inputs

__all__ = ["delong_ci", "delong_test"]


def delong_ci(
    y_true_1d: ArrayLike, y_score_1d: ArrayLike, *, alpha: float = 0.05
) -> tuple[float, float, float]:
    """``(auc, low, high)``: AUROC with its DeLong ``1 - alpha`` interval.

    ``y_true_1d``/``y_score_1d`` ``(n_samples,)``, NaN labels masked. Normal approximation on
    the AUROC scale (no logit transform), clipped to [0, 1]. NaN auc and interval, with a
    :class:`UserWarning`, when the labels lack positives or negatives; a NaN interval when
    there are fewer than 2 of either (no variance estimate).
    """
    z = _z(alpha)
    parts = _components(y_true_1d, [y_score_1d], what="delong_ci")
    if parts is None:
        return math.nan, math.nan, math.nan
    v10, v01 = parts
    auc = float(v10.mean())
    half = z * math.sqrt(_variance(v10[0], v01[0]))
    return auc, max(auc - half, 0.0), min(auc + half, 1.0)


def delong_test(
    y_true_1d: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, *, alpha: float = 0.05
) -> dict[str, Any]:
    """Paired two-sided DeLong test of AUROC(a) = AUROC(b) on the same labelled samples.

    Inputs ``(n_samples,)``, NaN labels masked. Returns floats ``"auc_a"``, ``"auc_b"``,
    ``"diff"`` (a - b), ``"z"``, ``"p_value"`` and ``"ci_diff"``, the ``1 - alpha`` interval
    of the difference as ``(low, high)`` clipped to [-1, 1]. Identical rankings give ``z`` 0 and
    ``p_value`` 1. All NaN, with a :class:`UserWarning`, when the labels lack positives or
    negatives.
    """
    z_alpha = _z(alpha)
    parts = _components(y_true_1d, [score_a, score_b], what="delong_test")
    if parts is None:
        keys = ("auc_a", "auc_b", "diff", "z", "p_value")
        return dict.fromkeys(keys, math.nan) | {"ci_diff": (math.nan, math.nan)}
    v10, v01 = parts
    auc_a, auc_b = (float(a) for a in v10.mean(axis=1))
    diff = auc_a - auc_b
    variance = _variance(v10[0] - v10[1], v01[0] - v01[1])
    if variance > 0:
        z = diff / math.sqrt(variance)
    elif variance == 0:  # identical structural components: the difference has no spread
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = math.nan
    half = z_alpha * math.sqrt(variance)
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "diff": diff,
        "z": z,
        "p_value": float(2.0 * norm.sf(abs(z))),
        "ci_diff": (max(diff - half, -1.0), min(diff + half, 1.0)),
    }


def _components(
    y_true_1d: ArrayLike, scores: list[ArrayLike], *, what: str
) -> tuple[Floats, Floats] | None:
    """Structural components ``(v10 (k, m), v01 (k, n))`` of ``k`` scorings (Sun & Xu 2014).

    ``v10[r, i]``: share of the ``n`` negatives scored below positive ``i`` by scoring ``r``,
    ties counting half; ``v01[r, j]``: share of the ``m`` positives scored above negative ``j``.
    The AUROC is the mean of either. None, after a warning, without both labels.
    """
    columns = [validate_inputs(y_true_1d, score) for score in scores]
    for y, s in columns:
        if y.shape[1] != 1:
            raise ValueError(f"{what}: expected one class, shape (n_samples,); got {s.shape}")
    y = columns[0][0][:, 0]
    keep = ~np.isnan(y)
    s = np.stack([s[keep, 0] for _, s in columns])
    positive = y[keep] == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        message = f"{what}: NaN, the labels have {m} positive and {n} negative samples"
        warnings.warn(message, UserWarning, stacklevel=3)
        return None
    if m < 2 or n < 2:
        message = f"{what}: NaN variance, it needs 2 positives and 2 negatives; got {m} and {n}"
        warnings.warn(message, UserWarning, stacklevel=3)
    pos, neg = s[:, positive], s[:, ~positive]
    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks among all
    v10 = (ranks[:, :m] - rankdata(pos, axis=1)) / n
    v01 = 1.0 - (ranks[:, m:] - rankdata(neg, axis=1)) / m
    return v10, v01


def _variance(v10: Floats, v01: Floats) -> float:
    """DeLong variance ``S10 / m + S01 / n`` from components ``(m,)`` and ``(n,)``."""
    if v10.size < 2 or v01.size < 2:
        return math.nan
    return float(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)


def _z(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"expected alpha between 0 and 1; got {alpha!r}")
    return float(norm.ppf(1.0 - alpha / 2.0))
