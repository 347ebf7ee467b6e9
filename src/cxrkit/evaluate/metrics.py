"""Evaluation metrics for multilabel chest X-ray classifiers (pure numpy, sort-based).

* ``y_true`` ``(n_samples, n_classes)``: 1 present, 0 absent, NaN unknown (masked per column).
* ``y_score`` ``(n_samples, n_classes)``: probabilities, logits or any score rising with the
  belief that the finding is present; no NaN. 1-D inputs are one class (results ``(1,)``).
* A column without both positive and negative labels after masking gets NaN ranking metrics
  and one :class:`UserWarning` per call names it (by class name, given ``classes=``).

The ranking core (:func:`weighted_roc_auc`, :func:`weighted_average_precision`) takes weights
``(..., n_samples)``, e.g. bootstrap counts, so many resamples share one sort of the scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cxrkit.files import json_float

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
_Names = Sequence[str] | None

RATE_TOLERANCE = 1e-12  #: slack when comparing a rate with a target: 7/10 counts as >= 0.7


def validate_inputs(y_true: ArrayLike, y_score: ArrayLike) -> tuple[Floats, Floats]:
    """Check and convert labels and scores to float arrays of shape ``(n_samples, n_classes)``.

    Two 1-D inputs of length ``n_samples`` become one column. Raises ``ValueError`` on a shape
    mismatch, labels outside {0, 1, NaN} or NaN scores.
    """
    y, s = _as_float(y_true, "y_true"), _as_float(y_score, "y_score")
    shape_true, shape_score = y.shape, s.shape
    if y.ndim == 1 and s.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(
            "expected y_true and y_score of one shape, (n_samples, n_classes) or (n_samples,); "
            f"got y_true {shape_true} and y_score {shape_score}"
        )
    bad = ~(np.isnan(y) | (y == 0) | (y == 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            "y_true must hold 1 (present), 0 (absent) or NaN (unknown); found "
            f"{np.unique(y[bad])[:5].tolist()}, first at sample {row}, column {col}"
        )
    nan = np.isnan(s)
    if nan.any():
        row, col = np.argwhere(nan)[0]
        raise ValueError(
            "y_score must be a number for every sample and class (mark unknown labels as NaN "
            f"in y_true instead); found {int(nan.sum())} NaN, first at sample {row}, column {col}"
        )
    return y, s


def one_class_columns(
    y_true: Floats, *, what: str, classes: _Names = None, outcome: str = "NaN"
) -> NDArray[np.bool_]:
    """``(n_classes,)`` mask of the columns of ``y_true`` lacking positives or negatives.

    Warns once naming them (``what``: the caller, ``outcome``: what those columns get).
    ``classes`` must have one name per column, else ``ValueError``.
    """
    if classes is not None and len(classes) != y_true.shape[1]:
        raise ValueError(f"expected {y_true.shape[1]} class names, one per column; got {classes}")
    n_pos, n_neg = (y_true == 1).sum(axis=0), (y_true == 0).sum(axis=0)
    bad = (n_pos == 0) | (n_neg == 0)
    if bad.any():
        listed = ", ".join(
            (f"class {str(classes[j])!r} (column {j})" if classes is not None else f"column {j}")
            + f" [{n_pos[j]} positive, {n_neg[j]} negative]"
            for j in np.flatnonzero(bad)
        )
        message = f"{what}: {outcome} for columns lacking positives or negatives: {listed}"
        warnings.warn(message, UserWarning, stacklevel=3)
    return bad


def weighted_roc_auc(
    y_true_1d: ArrayLike, y_score_1d: ArrayLike, weights: ArrayLike | None = None
) -> Floats:
    """AUROC of one class under one or many weightings of the samples (Mann-Whitney U).

    ``y_true_1d``/``y_score_1d`` ``(n_samples,)``; ``weights`` ``(..., n_samples)`` non-negative,
    e.g. bootstrap counts ``(n_resamples, n_samples)``, default all 1; NaN labels are dropped.
    A positive earns the weight of negatives below it plus half of those tied (average ranks),
    which equals ``sklearn.metrics.roc_auc_score(..., sample_weight=w)``. Memory: a few times
    that of ``weights``. Returns ``weights.shape[:-1]`` (``()`` without weights); NaN where the
    positive or negative weight is 0.
    """
    pos_key, neg_key, pos_w, neg_w = _split_sorted(y_true_1d, y_score_1d, weights, sign=1.0)
    neg_cum = _cumsum0(neg_w)
    below = neg_cum[..., np.searchsorted(neg_key, pos_key, side="left")]
    below += neg_cum[..., np.searchsorted(neg_key, pos_key, side="right")]
    u = 0.5 * np.einsum("...i,...i->...", pos_w, below)
    return _ratio(u, pos_w.sum(axis=-1) * neg_cum[..., -1])


def weighted_average_precision(
    y_true_1d: ArrayLike, y_score_1d: ArrayLike, weights: ArrayLike | None = None
) -> Floats:
    """Average precision of one class under one or many weightings of the samples.

    Shapes as in :func:`weighted_roc_auc`. Step-wise definition of scikit-learn: each positive
    adds its share of recall times the precision at its own score, counting every sample tied
    with it as called positive. NaN where the positive or negative weight is 0 (scikit-learn
    instead gives 1.0 when there are no negatives).
    """
    pos_key, neg_key, pos_w, neg_w = _split_sorted(y_true_1d, y_score_1d, weights, sign=-1.0)
    pos_cum, neg_cum = _cumsum0(pos_w), _cumsum0(neg_w)
    tp = pos_cum[..., np.searchsorted(pos_key, pos_key, side="right")]
    fp = neg_cum[..., np.searchsorted(neg_key, pos_key, side="right")]
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp > 0)
    gained = np.einsum("...i,...i->...", pos_w, precision)
    return np.where(neg_cum[..., -1] > 0, _ratio(gained, pos_cum[..., -1]), np.nan)


def roc_auc(y_true: ArrayLike, y_score: ArrayLike, *, classes: _Names = None) -> Floats:
    """Per-class AUROC, ``(n_classes,)``; equals ``sklearn.metrics.roc_auc_score`` per column."""
    y, s = validate_inputs(y_true, y_score)
    one_class_columns(y, what="roc_auc", classes=classes)
    return _per_column(weighted_roc_auc, y, s)


def average_precision(y_true: ArrayLike, y_score: ArrayLike, *, classes: _Names = None) -> Floats:
    """Per-class average precision, ``(n_classes,)``; equals scikit-learn's per column."""
    y, s = validate_inputs(y_true, y_score)
    one_class_columns(y, what="average_precision", classes=classes)
    return _per_column(weighted_average_precision, y, s)


def threshold_counts(y_true_1d: ArrayLike, y_score_1d: ArrayLike) -> tuple[Floats, Ints, Ints]:
    """``(thresholds, tp, fp)``, each ``(n_distinct,)``, for one class's labelled samples.

    Thresholds are the distinct scores, descending; tp/fp count ``score >= threshold`` calls, so
    ``tp[-1]`` and ``fp[-1]`` are the numbers of positives and negatives.
    """
    y, s = _one_column(y_true_1d, y_score_1d)
    keep = ~np.isnan(y)
    order = np.argsort(-s[keep], kind="stable")
    s, tp = s[keep][order], np.cumsum(y[keep][order] == 1)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], s.size > 0])  # last index of each tie group
    return s[last], tp[last], last + 1 - tp[last]


def roc_curve(y_true_1d: ArrayLike, y_score_1d: ArrayLike) -> tuple[Floats, Floats, Floats]:
    """ROC curve of one class: ``(fpr, tpr, thresholds)``, each ``(n_distinct + 1,)``.

    As ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: threshold ``inf`` (all
    negative), then each distinct labelled score, descending. A rate with no class is NaN.
    """
    y, s = _one_column(y_true_1d, y_score_1d)
    one_class_columns(y[:, None], what="roc_curve")
    thresholds, tp, fp = threshold_counts(y, s)
    tp, fp = np.r_[0, tp], np.r_[0, fp]
    return _ratio(fp, fp[-1]), _ratio(tp, tp[-1]), np.r_[np.inf, thresholds]


def sensitivity_at_specificity(
    y_true: ArrayLike, y_score: ArrayLike, *, specificity: float = 0.8, classes: _Names = None
) -> Floats:
    """Per-class ``(n_classes,)`` highest sensitivity at specificity >= ``specificity``.

    The maximum is over the ROC operating points (one per distinct labelled score, plus the
    point calling everything negative, so one always qualifies); no interpolation between
    points. Specificity is compared with a slack of :data:`RATE_TOLERANCE`.
    """
    y, s = validate_inputs(y_true, y_score)
    one_class_columns(y, what="sensitivity_at_specificity", classes=classes)
    return _rate_at_rate(y, s, fixed="specificity", target=specificity)


def specificity_at_sensitivity(
    y_true: ArrayLike, y_score: ArrayLike, *, sensitivity: float = 0.8, classes: _Names = None
) -> Floats:
    """Per-class ``(n_classes,)`` highest specificity at sensitivity >= ``sensitivity``.

    Mirror of :func:`sensitivity_at_specificity`; calling everything positive always qualifies.
    """
    y, s = validate_inputs(y_true, y_score)
    one_class_columns(y, what="specificity_at_sensitivity", classes=classes)
    return _rate_at_rate(y, s, fixed="sensitivity", target=sensitivity)


def confusion_at_thresholds(
    y_true: ArrayLike, y_score: ArrayLike, thresholds: ArrayLike
) -> dict[str, NDArray[Any]]:
    """Confusion counts and rates per class when calling ``score >= threshold`` positive.

    ``thresholds`` is ``(n_classes,)`` (a scalar applies to every class). Returns ``(n_classes,)``
    arrays: int ``"tp"``, ``"fp"``, ``"tn"``, ``"fn"`` over labelled samples and float
    ``"sensitivity"``, ``"specificity"``, ``"ppv"``, ``"npv"``, ``"f1"`` (NaN where undefined).
    """
    y, s = validate_inputs(y_true, y_score)
    t = _as_float(thresholds, "thresholds")
    if t.shape not in ((), (y.shape[1],)) or np.isnan(t).any():
        raise ValueError(
            f"expected one non-NaN threshold per class, shape ({y.shape[1]},); got shape "
            f"{t.shape} with {int(np.isnan(t).sum())} NaN"
        )
    called, pos, neg = s >= t, y == 1, y == 0
    tp, fp = (called & pos).sum(axis=0), (called & neg).sum(axis=0)
    fn, tn = (~called & pos).sum(axis=0), (~called & neg).sum(axis=0)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn} | {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def micro_roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """AUROC over all labelled (sample, class) pairs pooled into one ranking."""
    y, s = _pooled(y_true, y_score, what="micro_roc_auc")
    return float(weighted_roc_auc(y, s))


def micro_average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision over all labelled (sample, class) pairs pooled into one ranking."""
    y, s = _pooled(y_true, y_score, what="micro_average_precision")
    return float(weighted_average_precision(y, s))


@dataclass(frozen=True)
class Summary:
    """Figures of one evaluation, built by :func:`summarize`; arrays are ``(n_classes,)``.

    ``sensitivity``/``specificity`` are at ``threshold``, ``sens_at_spec`` at specificity >=
    ``target_specificity``. Classes with NaN AUROC (one label value) are skipped in macro means.
    """

    classes: list[str]
    auroc: Floats
    ap: Floats
    threshold: Floats
    sensitivity: Floats
    specificity: Floats
    sens_at_spec: Floats
    target_specificity: float
    n_labelled: Ints
    n_positive: Ints
    micro_auroc: float
    micro_ap: float
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict returned by :func:`summarize`; NaN becomes ``None``."""
        rows = {
            "auroc": self.auroc,
            "ap": self.ap,
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            f"sens_at_spec_{self.target_specificity:g}": self.sens_at_spec,
            "prevalence": _ratio(self.n_positive, self.n_labelled),
        }
        per_class = {
            name: {key: json_float(values[j]) for key, values in rows.items()}
            | {"n_labelled": int(self.n_labelled[j]), "n_positive": int(self.n_positive[j])}
            for j, name in enumerate(self.classes)
        }
        return {
            "classes": list(self.classes),
            "per_class": per_class,
            "macro": {"auroc": json_mean(self.auroc), "ap": json_mean(self.ap)},
            "micro": {"auroc": json_float(self.micro_auroc), "ap": json_float(self.micro_ap)},
            "n_images": int(self.n_images),
            "skipped_classes": [self.classes[j] for j in np.flatnonzero(np.isnan(self.auroc))],
        }


def summarize(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    classes: Sequence[str],
    thresholds: ArrayLike,
    specificity: float = 0.8,
) -> dict[str, Any]:
    """Evaluation report as a JSON-ready dict (:meth:`Summary.to_dict`); NaN becomes ``None``.

    Shape: ``{"classes", "per_class": {name: {"auroc", "ap", "threshold", "sensitivity",
    "specificity", "sens_at_spec_<specificity>", "prevalence", "n_labelled", "n_positive"}},
    "macro": {"auroc", "ap"}, "micro": {"auroc", "ap"}, "n_images", "skipped_classes"}``.
    ``thresholds`` (n_classes,) must be tuned on the validation split, never the test split.
    """
    y, s = validate_inputs(y_true, y_score)
    if len(set(classes)) != len(classes):
        raise ValueError(f"expected unique class names; got {list(classes)}")
    one_class_columns(y, what="summarize", classes=classes)
    confusion = confusion_at_thresholds(y, s, thresholds)
    labelled = ~np.isnan(y)
    return Summary(
        classes=[str(c) for c in classes],
        auroc=_per_column(weighted_roc_auc, y, s),
        ap=_per_column(weighted_average_precision, y, s),
        threshold=np.broadcast_to(_as_float(thresholds, "thresholds"), y.shape[1:]).copy(),
        sensitivity=confusion["sensitivity"],
        specificity=confusion["specificity"],
        sens_at_spec=_rate_at_rate(y, s, fixed="specificity", target=specificity),
        target_specificity=float(specificity),
        n_labelled=labelled.sum(axis=0),
        n_positive=(y == 1).sum(axis=0),
        micro_auroc=float(weighted_roc_auc(y[labelled], s[labelled])),
        micro_ap=float(weighted_average_precision(y[labelled], s[labelled])),
        n_images=y.shape[0],
    ).to_dict()


def _as_float(x: ArrayLike, name: str) -> Floats:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric; could not convert it to float: {err}") from err


def _one_column(y_true_1d: ArrayLike, y_score_1d: ArrayLike) -> tuple[Floats, Floats]:
    y, s = validate_inputs(y_true_1d, y_score_1d)
    if y.shape[1] != 1:
        raise ValueError(f"expected one class, shape (n_samples,); got shape {y.shape}")
    return y[:, 0], s[:, 0]


def _split_sorted(
    y_true_1d: ArrayLike, y_score_1d: ArrayLike, weights: ArrayLike | None, *, sign: float
) -> tuple[Floats, Floats, Floats, Floats]:
    """Ascending keys ``sign * score`` of positives, of negatives, and their weights."""
    y, s = _one_column(y_true_1d, y_score_1d)
    w = np.ones_like(s) if weights is None else _as_float(weights, "weights")
    if w.shape[-1:] != s.shape or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(
            f"expected finite non-negative weights of shape (..., {s.size}); got shape {w.shape}"
            f" with values in [{w.min(initial=np.inf)}, {w.max(initial=-np.inf)}]"
        )
    key = sign * s
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pos, neg = pos[np.argsort(key[pos], kind="stable")], neg[np.argsort(key[neg], kind="stable")]
    return key[pos], key[neg], w[..., pos], w[..., neg]


def _cumsum0(w: Floats) -> Floats:
    """Cumulative sum along the last axis with a leading 0: ``(..., n + 1)``."""
    out = np.zeros(w.shape[:-1] + (w.shape[-1] + 1,))
    np.cumsum(w, axis=-1, out=out[..., 1:])
    return out


def _ratio(num: ArrayLike, den: ArrayLike) -> Floats:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    return np.divide(num, den, out=out, where=den > 0)


def _per_column(metric: Callable[[Floats, Floats], Floats], y: Floats, s: Floats) -> Floats:
    return np.array([float(metric(y[:, j], s[:, j])) for j in range(y.shape[1])])


def _rate_at_rate(y: Floats, s: Floats, *, fixed: str, target: float) -> Floats:
    """Per column, the best other rate over operating points whose ``fixed`` rate >= target."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"expected {fixed} between 0 and 1; got {target!r}")
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        _, tp, fp = threshold_counts(y[:, j], s[:, j])
        tp, fp = np.r_[0, tp], np.r_[0, fp]
        if tp[-1] > 0 and fp[-1] > 0:
            sens, spec = tp / tp[-1], (fp[-1] - fp) / fp[-1]
            given, best = (spec, sens) if fixed == "specificity" else (sens, spec)
            out[j] = best[given >= target - RATE_TOLERANCE].max()
    return out


def _pooled(y_true: ArrayLike, y_score: ArrayLike, *, what: str) -> tuple[Floats, Floats]:
    y, s = validate_inputs(y_true, y_score)
    labelled = ~np.isnan(y)
    y, s = y[labelled], s[labelled]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        message = f"{what}: NaN, the pooled labels have {n_pos} positive, {n_neg} negative"
        warnings.warn(message, UserWarning, stacklevel=3)
    return y, s


def json_mean(x: Floats) -> float | None:
    """Mean over the non-NaN entries, ``None`` if there are none (for JSON)."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None
