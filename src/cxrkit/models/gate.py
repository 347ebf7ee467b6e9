"""The feature-space input gate: how far an image's features lie from the training data's.

Fitted on the penultimate features (pooled pre-logits, ``(N, D)`` float) of a model's training
split, :class:`FeatureGate` scores a new feature vector ``x`` by a probabilistic-PCA
Mahalanobis distance:

* ``z = U (x - mean)``: the ``k`` leading principal components of the training features
  (``U`` is ``(k, D)``, orthonormal rows; ``k`` at most :data:`MAX_COMPONENTS`, and small
  enough that the card stays under about 1.5 MB of JSON);
* the ``k``-dimensional part ``sum(z**2 / v)``, with ``v`` the per-component variances from a
  Ledoit-Wolf shrinkage covariance of the projected training features (shrunk towards their
  mean variance, so a few hundred images give a stable estimate);
* the residual part ``|x - mean - U^T z|**2 / r``, with ``r`` the mean variance per dimension
  left outside the ``k`` components: what an image has that no training image had;
* ``score = sqrt(k part + residual part)``, a distance (about ``sqrt(D)`` for typical training
  images).

The threshold (:mod:`cxrkit.models.gate_threshold`) is set on calibration scores of images the
fit did not see: each training image scored by a gate fitted on the other patients' images
(5 folds by patient) and every validation image scored by the full gate. It is the
:func:`~cxrkit.models.gate_threshold.pac_threshold` of those: with probability
``confidence`` (default 90%) over the draw of those images, a new image exchangeable with them
(same population, same acquisition) is flagged with probability at most ``false_alarm_rate``.
When the validation images exceed that threshold implausibly often (the network knows its
training images better than new ones, so their held-out scores run low), or there are too few
patients for folds, too few calibration scores for the promise, or one patient with so many
films that a fold would fit on under 60% of the rows, it falls back to the conformal quantile
of the validation scores alone, a promise on average over the draw only. The card's
``threshold_rule`` says which rule set it.

The gate knows nothing of images: it is numpy on feature arrays, serialised to a JSON-ready
dict (:meth:`FeatureGate.to_dict`, arrays as base64 little-endian float32).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrkit.errors import UserError
from cxrkit.models.gate_threshold import (
    DEFAULT_CONFIDENCE,
    RULE_PAC,
    RULE_VAL,
    RULE_VAL_FALLBACK,
    RULE_VAL_FEW,
    check_confidence,
    conformal_threshold,
    exceeds_too_often,
    min_calibration_images,
    out_of_fold_scores,
    pac_threshold,
)

METHOD = "ppca-mahalanobis/1"
MAX_COMPONENTS = 64  #: principal components kept at most
MAX_CARD_FLOATS = 1 << 18  #: k * D at most: 1 MiB of float32, about 1.4 MB of base64 JSON
DEFAULT_FALSE_ALARM_RATE = 0.05


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """An array as ``{"dtype": "float32", "shape": [...], "base64": ...}`` (little endian)."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(a.shape), "base64": base64.b64encode(a).decode()}


def decode_array(d: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`encode_array`: a float64 array of the stored shape."""
    raw = np.frombuffer(base64.b64decode(d["base64"]), dtype="<f4")
    return raw.reshape(d["shape"]).astype(np.float64)


def check_false_alarm_rate(rate: float) -> float:
    """``rate`` as a float in (0, 0.5]; a UserError otherwise."""
    if not (isinstance(rate, int | float) and 0.0 < float(rate) <= 0.5):
        raise UserError(
            f"--false-alarm-rate must be in (0, 0.5] (the share of in-distribution images "
            f"flagged, e.g. 0.05), got {rate}"
        )
    return float(rate)


def ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrinkage of the covariance of centred ``z`` ``(N, k)``: returns the
    ``(k, k)`` estimate and the shrinkage in [0, 1] (the formula of scikit-learn's
    ``ledoit_wolf``, tested against it)."""
    n, k = z.shape
    s = z.T @ z / n
    mu = float(np.trace(s)) / k
    delta = float(((s - mu * np.eye(k)) ** 2).sum()) / k
    sq = (z**2).sum(axis=1)
    beta = float((sq**2).sum() - 2.0 * np.einsum("ni,ij,nj->", z, s, z) + n * (s**2).sum())
    beta = min(beta / (n * n * k), delta)
    shrink = 0.0 if delta == 0.0 else beta / delta
    return shrink * mu * np.eye(k) + (1.0 - shrink) * s, shrink


@dataclass
class FeatureGate:
    """A fitted gate: ``mean`` ``(D,)``, ``basis`` ``(k, D)``, ``variances`` ``(k,)``,
    ``residual_variance``, and the threshold with what it was set on."""

    mean: np.ndarray
    basis: np.ndarray
    variances: np.ndarray
    residual_variance: float
    shrinkage: float
    n_train: int
    threshold: float = math.inf
    false_alarm_rate: float = math.nan
    confidence: float = math.nan  #: NaN for a conformal (average-over-draws) threshold
    threshold_rule: str = RULE_VAL
    n_val: int = 0
    val_false_alarm_rate: float = math.nan
    n_held_out: int = 0  #: held-out training scores among the calibration scores
    held_out_false_alarm_rate: float = math.nan

    @classmethod
    def fit(
        cls,
        train: np.ndarray,
        val: np.ndarray,
        *,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        max_components: int = MAX_COMPONENTS,
        groups: np.ndarray | None = None,
        confidence: float = DEFAULT_CONFIDENCE,
    ) -> FeatureGate:
        """Fit on training features ``(N, D)`` and set the threshold (module docstring) on
        their held-out scores and on validation features ``(M, D)`` (never training rows).
        ``groups`` ``(N,)``: each training row's patient, so that no patient is scored by a
        fit that saw it (None: each row its own patient)."""
        rate = check_false_alarm_rate(false_alarm_rate)
        confidence = check_confidence(confidence)
        train = _features(train, "training")
        val = _features(val, "validation")
        if train.shape[1] != val.shape[1]:
            raise UserError(f"feature widths differ: train {train.shape[1]}, val {val.shape[1]}")
        if len(train) < 10 or len(val) < 10:
            raise UserError(
                f"the input gate needs at least 10 training and 10 validation images, got "
                f"{len(train)} and {len(val)}"
            )
        gate = cls.estimate(train, max_components)
        held_out = cls.held_out_scores(train, groups, max_components)
        gate.set_threshold(gate.score(val), held_out, rate, confidence)
        return gate

    @classmethod
    def held_out_scores(
        cls,
        train: np.ndarray,
        groups: np.ndarray | None = None,
        max_components: int = MAX_COMPONENTS,
    ) -> np.ndarray | None:
        """``(N,)`` scores of training features ``(N, D)``, each by a gate estimated on the
        other folds' patients (``groups`` ``(N,)``; None: a row each); None when too few or
        too unbalanced (:func:`~cxrkit.models.gate_threshold.out_of_fold_scores`)."""
        return out_of_fold_scores(
            lambda rows, others: cls.estimate(rows, max_components).score(others),
            train,
            np.arange(len(train)) if groups is None else np.asarray(groups),
        )

    @classmethod
    def estimate(cls, train: np.ndarray, max_components: int = MAX_COMPONENTS) -> FeatureGate:
        """The mean, components and variances of training features ``(N, D)``; no threshold
        yet (``inf``)."""
        n, d = train.shape
        k = max(1, min(max_components, d - 1, n // 4, MAX_CARD_FLOATS // d))
        mean = train.mean(axis=0)
        centred = train - mean
        _, sing, vt = np.linalg.svd(centred, full_matrices=False)
        eig = sing**2 / n
        basis = vt[:k]
        cov, shrink = ledoit_wolf(centred @ basis.T)
        total = float(eig.sum())
        floor = 1e-6 * total / d + 1e-12
        residual = max((total - float(eig[:k].sum())) / (d - k), floor)
        return cls(  # the arrays as the card stores them (float32), so scores match after loading
            mean=_f32(mean),
            basis=_f32(basis),
            variances=_f32(np.maximum(np.diag(cov), floor)),
            residual_variance=residual,
            shrinkage=shrink,
            n_train=n,
        )

    def set_threshold(
        self, val: np.ndarray, held_out: np.ndarray | None, rate: float, confidence: float
    ) -> None:
        """Set the threshold from validation scores ``(M,)`` and held-out training scores
        ``(N,)`` (None: none), by the rules of the module docstring."""
        pooled = val if held_out is None else np.concatenate([held_out, val])
        rule, threshold = RULE_VAL_FEW, math.nan
        if held_out is not None and len(pooled) >= min_calibration_images(rate, confidence):
            threshold = pac_threshold(pooled, rate, confidence)
            rule = RULE_PAC
            if exceeds_too_often(val, threshold, rate):
                rule = RULE_VAL_FALLBACK
        if rule != RULE_PAC:
            threshold, confidence = conformal_threshold(val, rate), math.nan
        self.threshold, self.false_alarm_rate, self.confidence = threshold, rate, confidence
        self.threshold_rule = rule
        self.n_val, self.val_false_alarm_rate = len(val), float(np.mean(val > threshold))
        pooled_rule = rule == RULE_PAC and held_out is not None  # else none of a previous call
        self.n_held_out = len(held_out) if pooled_rule else 0
        self.held_out_false_alarm_rate = (
            float(np.mean(held_out > threshold)) if pooled_rule else math.nan
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N, D)`` features -> ``(N,)`` float64 distances (NaN for a non-finite row)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise UserError(
                f"the input gate expects (N, {self.mean.shape[0]}) features, got {x.shape}; "
                "was it fitted on another model?"
            )
        centred = x - self.mean
        # einsum without BLAS: a small product, and OpenBLAS's threads would then spin-wait
        # for work and slow the model's next batch (infer measured 2.7 -> 5.8 ms/image on 2
        # cores with ``@``; see benchmarks/bench_gate.py)
        z = np.einsum("nd,kd->nk", centred, self.basis, optimize=False)
        residual = (centred**2).sum(axis=1) - (z**2).sum(axis=1)
        inside = (z**2 / self.variances).sum(axis=1)
        return np.sqrt(inside + np.maximum(residual, 0.0) / self.residual_variance)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """``(N,)`` scores -> ``(N,)`` bool, True where out of distribution (NaN included)."""
        return ~(np.asarray(scores) <= self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """The card's ``gate``: plain JSON types, arrays base64 float32."""
        return {
            "method": METHOD,
            "features": "pooled pre-logits (timm forward_head(pre_logits=True))",
            "score": "sqrt(sum(z^2 / variances) + |residual|^2 / residual_variance)",
            "dim": int(self.mean.shape[0]),
            "components": int(self.basis.shape[0]),
            "shrinkage": float(self.shrinkage),
            "residual_variance": float(self.residual_variance),
            "false_alarm_rate": self.false_alarm_rate,
            "confidence": None if math.isnan(self.confidence) else self.confidence,
            "threshold": float(self.threshold),
            "threshold_rule": self.threshold_rule,
            "n_train": int(self.n_train),
            "n_val": int(self.n_val),
            "val_false_alarm_rate": float(self.val_false_alarm_rate),
            "n_held_out": int(self.n_held_out),
            "held_out_false_alarm_rate": None
            if math.isnan(self.held_out_false_alarm_rate)
            else self.held_out_false_alarm_rate,
            "arrays": {
                "mean": encode_array(self.mean),
                "basis": encode_array(self.basis),
                "variances": encode_array(self.variances),
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureGate:
        """Rebuild a gate from its card entry; a UserError for another method."""
        if d.get("method") != METHOD:
            raise UserError(
                f"the card's input gate has method {d.get('method')!r}; this cxrkit reads "
                f"{METHOD!r} (fit it again with `cxrkit gate`)"
            )
        arrays = d["arrays"]
        optional = {  # absent from cards written before held-out training scores
            "confidence": d.get("confidence"),
            "held_out_false_alarm_rate": d.get("held_out_false_alarm_rate"),
        }
        return cls(
            mean=decode_array(arrays["mean"]),
            basis=decode_array(arrays["basis"]),
            variances=decode_array(arrays["variances"]),
            residual_variance=float(d["residual_variance"]),
            shrinkage=float(d["shrinkage"]),
            n_train=int(d["n_train"]),
            threshold=float(d["threshold"]),
            false_alarm_rate=float(d["false_alarm_rate"]),
            threshold_rule=str(d.get("threshold_rule", RULE_VAL)),
            n_val=int(d["n_val"]),
            val_false_alarm_rate=float(d["val_false_alarm_rate"]),
            n_held_out=int(d.get("n_held_out", 0)),
            **{k: math.nan if v is None else float(v) for k, v in optional.items()},
        )


REFERENCE_BINS = 10


def reference_distribution(probs: np.ndarray, findings: list[str], split: str) -> dict[str, Any]:
    """``(N, C)`` probabilities -> the card's ``reference``: each finding's share of images in
    ten equal probability bins (the last bin includes 1.0), for drift monitoring::

        {"split": "val", "n_images": N, "bin_edges": [0.0, 0.1, ..., 1.0],
         "fractions": {finding: [10 floats summing to 1]}}
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(findings) or not len(probs):
        raise UserError(f"reference needs (N > 0, {len(findings)}) probabilities: {probs.shape}")
    edges = np.linspace(0.0, 1.0, REFERENCE_BINS + 1)
    fractions = {
        f: (np.histogram(np.clip(probs[:, j], 0.0, 1.0), bins=edges)[0] / len(probs)).tolist()
        for j, f in enumerate(findings)
    }
    return {
        "split": split,
        "n_images": len(probs),
        "bin_edges": [round(float(e), 10) for e in edges],
        "fractions": fractions,
    }


def _f32(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to float32 and back: the precision :func:`encode_array` keeps."""
    return a.astype(np.float32).astype(np.float64)


def _features(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` as a finite ``(N, D)`` float64 array; a UserError otherwise."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise UserError(f"{what} features must be (N, D), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise UserError(f"{what} features hold NaN or infinite values")
    return a
