"""Per-class probability calibration and calibration metrics.

Fit a :class:`Calibrator` on the **validation split only**, store :meth:`Calibrator.to_dict` in
the model card and apply it unchanged at inference. To pick a method, compare them on validation
(:func:`compare_methods`) and report the chosen one once on test: choosing on test labels makes
the reported calibration optimistic.

Conventions follow :mod:`cxrkit.evaluate.metrics`: ``y_true`` ``(n_samples, n_classes)`` with
1/0/NaN (NaN masked per class), ``probs`` the same shape with probabilities in [0, 1].
Probabilities are clipped to [:data:`EPS`, 1 - :data:`EPS`] before taking logits and log-losses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

from cxrkit.errors import UserError, did_you_mean
from cxrkit.evaluate.metrics import Floats, Ints, json_mean, one_class_columns, validate_inputs
from cxrkit.files import json_float

EPS = 1e-7  #: probabilities are clipped to [EPS, 1 - EPS] before logits and logs
SLOPE_BOUNDS = (1e-2, 1e2)  #: bounds of the temperature T and of the Platt slope a
_Params = dict[str, Any]


def _logit(p: Floats) -> Floats:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _log_loss(u: Floats, t: Floats) -> float:
    """Mean binary log-loss of logits ``u`` against (possibly smoothed) targets ``t``."""
    return float(np.mean(np.logaddexp(0.0, u) - t * u))


def _fit_temperature(y: Floats, p: Floats) -> _Params:
    """T minimising the NLL of ``sigmoid(logit(p) / T)``; bounded search over log T."""
    z = _logit(p)
    lo, hi = np.log(SLOPE_BOUNDS)
    res = minimize_scalar(
        lambda log_t: _log_loss(z * np.exp(-log_t), y),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return {"temperature": float(np.exp(res.x))}


def _fit_platt(y: Floats, p: Floats) -> _Params:
    """(a, b) minimising the NLL of ``sigmoid(a logit(p) + b)`` against Platt's smoothed targets.

    Targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) keep the fit finite on separable data; a is kept
    in :data:`SLOPE_BOUNDS` so the map never reverses the ranking.
    """
    z = _logit(p)
    n_pos = float(y.sum())
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (y.size - n_pos + 2))

    def loss_and_grad(ab: Floats) -> tuple[float, Floats]:
        u = ab[0] * z + ab[1]
        r = expit(u) - t
        return _log_loss(u, t), np.array([np.mean(r * z), np.mean(r)])

    res = minimize(
        loss_and_grad,
        x0=np.array([1.0, 0.0]),
        jac=True,
        method="L-BFGS-B",
        bounds=[SLOPE_BOUNDS, (None, None)],
        options={"ftol": 1e-15, "gtol": 1e-10},
    )
    return {"a": float(res.x[0]), "b": float(res.x[1])}


def _fit_isotonic(y: Floats, p: Floats) -> _Params:
    """Non-decreasing step-linear map: sklearn's IsotonicRegression thresholds."""
    iso = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


_FITTERS: dict[str, Callable[[Floats, Floats], _Params]] = {
    "temperature": _fit_temperature,
    "platt": _fit_platt,
    "isotonic": _fit_isotonic,
}
METHODS = tuple(_FITTERS)
_IDENTITY: dict[str, _Params] = {
    "temperature": {"temperature": 1.0},
    "platt": {"a": 1.0, "b": 0.0},
    "isotonic": {"x": [0.0, 1.0], "y": [0.0, 1.0]},
}


@dataclass
class Calibrator:
    """Fitted per-class calibration maps; build with :func:`fit_calibrator`.

    ``params[j]`` holds class ``classes[j]``'s map: ``{"temperature": T}`` (``sigmoid(logit(p) /
    T)``), ``{"a", "b"}`` (``sigmoid(a logit(p) + b)``) or ``{"x", "y"}`` (isotonic knots,
    linear in between, constant beyond the ends).
    """

    method: str
    params: list[_Params]
    classes: list[str]

    def apply(self, probs: ArrayLike) -> Floats:
        """Calibrate ``(n_samples, n_classes)`` probabilities; same shape, in [0, 1].

        Each class's map is non-decreasing (strictly increasing for temperature and Platt).
        """
        p = _check_probs(probs, "probs")
        if p.ndim != 2 or p.shape[1] != len(self.classes):
            raise ValueError(
                f"expected probs of shape (n_samples, {len(self.classes)}) for classes "
                f"{self.classes}; got shape {p.shape}"
            )
        if self.method == "isotonic":
            columns = [np.interp(p[:, j], q["x"], q["y"]) for j, q in enumerate(self.params)]
            return np.stack(columns, axis=1)
        if self.method == "temperature":
            a, b = 1.0 / np.array([q["temperature"] for q in self.params]), 0.0
        else:
            a, b = np.array([[q["a"], q["b"]] for q in self.params]).reshape(-1, 2).T
        return expit(a * _logit(p) + b)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"method", "classes", "params"}`` for the model card."""
        params = copy.deepcopy(self.params)
        return {"method": self.method, "classes": list(self.classes), "params": params}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        """Rebuild from :meth:`to_dict`'s output; ``UserError`` if it is malformed."""
        if not isinstance(d, dict) or {"method", "classes", "params"} - set(d):
            raise UserError(f"calibration must be a dict with method, classes, params; got {d!r}")
        method, classes, params = d["method"], list(d["classes"]), list(d["params"])
        if method not in METHODS:
            raise did_you_mean(str(method), METHODS, what="calibration method")
        keys = set(_IDENTITY[method])
        well_formed = (isinstance(q, dict) and set(q) == keys for q in params)
        if len(params) != len(classes) or not all(well_formed):
            raise UserError(
                f"{method} calibration needs one {sorted(keys)} dict per class for "
                f"{len(classes)} classes; got {params!r}"
            )
        return cls(method, [dict(q) for q in params], [str(c) for c in classes])


def fit_calibrator(
    y_true: ArrayLike, probs: ArrayLike, *, method: str, classes: Sequence[str]
) -> Calibrator:
    """Fit one calibration map per class on validation labels ``y_true`` and ``probs``.

    Both ``(n_samples, n_classes)``; NaN labels are masked per class. ``method``: one of
    :data:`METHODS` (``"temperature"``, ``"platt"``, ``"isotonic"``). A class without both
    positive and negative labels gets the identity map and a warning naming it.
    """
    if method not in _FITTERS:
        raise did_you_mean(method, METHODS, what="calibration method")
    y, p = _validate(y_true, probs)
    one_class_columns(
        y, what="fit_calibrator", classes=classes, outcome=f"identity {method} calibration"
    )
    return Calibrator(method, _fit_params(y, p, method), [str(c) for c in classes])


def brier(y_true: ArrayLike, probs: ArrayLike) -> Floats:
    """Per-class ``(n_classes,)`` Brier score, mean of (p - y)^2 over labelled samples.

    NaN for a class with no labelled sample.
    """
    y, p = _validate(y_true, probs)
    return _masked_mean((p - y) ** 2, ~np.isnan(y))


def nll(y_true: ArrayLike, probs: ArrayLike) -> Floats:
    """Per-class ``(n_classes,)`` mean negative log-likelihood (log-loss), probs clipped."""
    y, p = _validate(y_true, probs)
    z = _logit(p)
    return _masked_mean(np.logaddexp(0.0, z) - np.nan_to_num(y) * z, ~np.isnan(y))


def ece(y_true: ArrayLike, probs: ArrayLike, *, n_bins: int = 15) -> Floats:
    """Per-class ``(n_classes,)`` expected calibration error over ``n_bins`` equal-width bins.

    ECE = sum over bins of (bin count / labelled count) * |mean prob - positive rate|. Bins are
    [0, 1/n], (1/n, 2/n], ..., as ``sklearn.calibration.calibration_curve``. NaN for a class
    with no labelled sample.
    """
    y, p = _validate(y_true, probs)
    count, sum_p, sum_y = _binned(y, p, n_bins)
    with np.errstate(invalid="ignore"):
        return np.abs(sum_p - sum_y).sum(axis=1) / count.sum(axis=1)


def reliability_curve(
    y_true_1d: ArrayLike, probs_1d: ArrayLike, *, n_bins: int = 15
) -> tuple[Floats, Floats, Ints]:
    """One class's reliability diagram: ``(mean_prob, observed_frequency, count)`` per bin.

    Inputs ``(n_samples,)``, NaN labels dropped; bins as in :func:`ece`, empty ones dropped, so
    each output is ``(n_nonempty_bins,)``.
    """
    y, p = _validate(y_true_1d, probs_1d)
    if y.shape[1] != 1:
        raise ValueError(f"expected one class, shape (n_samples,); got shape {y.shape}")
    count, sum_p, sum_y = (a[0] for a in _binned(y, p, n_bins))
    keep = count > 0
    return sum_p[keep] / count[keep], sum_y[keep] / count[keep], count[keep]


def compare_methods(
    y_val: ArrayLike,
    p_val: ArrayLike,
    *,
    classes: Sequence[str],
    n_folds: int = 5,
    groups: ArrayLike | None = None,
) -> dict[str, Any]:
    """Validation Brier, ECE and NLL of the uncalibrated probabilities and of each method.

    Each method is scored on out-of-fold predictions: samples are dealt into ``n_folds``
    interleaved folds (sample i in fold i % n_folds; with ``groups`` ``(n_samples,)``, patient
    ids, the k-th patient to appear and all its images in fold k % n_folds, so no patient is
    on both sides of a fold) and each fold is calibrated by a map fitted on the others, so
    flexible maps (isotonic) are not rewarded for fitting the labels they are scored on.
    ``n_folds=1`` fits and scores on the whole split (in-sample, optimistic).
    Choose the method here, on validation; then fit it on the whole validation split with
    :func:`fit_calibrator` and report calibration on test once.

    Returns ``{"classes", "n_folds", "methods": {name: {"brier", "ece", "nll": [per class],
    "macro": {"brier", "ece", "nll"}}}}`` for ``"uncalibrated"`` and each of :data:`METHODS`;
    NaN becomes ``None``.
    """
    y, p = _validate(y_val, p_val)
    if not 1 <= n_folds <= y.shape[0]:
        raise ValueError(f"expected 1 <= n_folds <= n_samples ({y.shape[0]}); got {n_folds}")
    one_class_columns(y, what="compare_methods", classes=classes, outcome="identity calibration")
    order = np.arange(y.shape[0]) if groups is None else pd.factorize(np.asarray(groups))[0]
    fold = order % n_folds
    calibrated = {"uncalibrated": p}
    for method in METHODS:
        out = np.empty_like(p)
        for k in range(n_folds):
            test = fold == k
            train = ~test if n_folds > 1 else test  # one fold: fit on all, in-sample
            fitted = Calibrator(method, _fit_params(y[train], p[train], method), list(classes))
            out[test] = fitted.apply(p[test])
        calibrated[method] = out
    report: dict[str, Any] = {}
    for name, q in calibrated.items():
        scores = {"brier": brier(y, q), "ece": ece(y, q), "nll": nll(y, q)}
        report[name] = {key: [json_float(v) for v in s] for key, s in scores.items()}
        report[name]["macro"] = {key: json_mean(s) for key, s in scores.items()}
    return {"classes": [str(c) for c in classes], "n_folds": n_folds, "methods": report}


def _check_probs(probs: ArrayLike, name: str) -> Floats:
    p = np.asarray(probs, dtype=np.float64)
    if not ((p >= 0) & (p <= 1)).all():
        bad = p[~((p >= 0) & (p <= 1))]
        raise ValueError(
            f"{name} must be probabilities in [0, 1] (apply a sigmoid to logits first); found "
            f"{bad.size} values outside, e.g. {bad[:3].tolist()}"
        )
    return p


def _validate(y_true: ArrayLike, probs: ArrayLike) -> tuple[Floats, Floats]:
    y, p = validate_inputs(y_true, probs)
    return y, _check_probs(p, "probs")


def _fit_params(y: Floats, p: Floats, method: str) -> list[_Params]:
    """One parameter dict per column; identity for columns lacking positives or negatives."""
    params = []
    for j in range(y.shape[1]):
        keep = ~np.isnan(y[:, j])
        yj, pj = y[keep, j], p[keep, j]
        two_classes = (yj == 1).any() and (yj == 0).any()
        params.append(_FITTERS[method](yj, pj) if two_classes else dict(_IDENTITY[method]))
    return params


def _masked_mean(values: Floats, mask: np.ndarray) -> Floats:
    n = mask.sum(axis=0)
    total = np.where(mask, values, 0.0).sum(axis=0)
    return np.divide(total, n, out=np.full(total.shape, np.nan), where=n > 0)


def _binned(y: Floats, p: Floats, n_bins: int) -> tuple[Ints, Floats, Floats]:
    """``(count, sum_prob, sum_label)``, each ``(n_classes, n_bins)``, over labelled samples."""
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"expected a positive integer n_bins; got {n_bins!r}")
    rows, cols = np.nonzero(~np.isnan(y))
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p[rows, cols])
    flat, size = cols * n_bins + bins, y.shape[1] * n_bins
    count = np.bincount(flat, minlength=size)
    sum_p = np.bincount(flat, weights=p[rows, cols], minlength=size)
    sum_y = np.bincount(flat, weights=y[rows, cols], minlength=size)
    shape = (y.shape[1], n_bins)
    return count.reshape(shape), sum_p.reshape(shape), sum_y.reshape(shape)
