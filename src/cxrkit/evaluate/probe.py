"""Logistic regressions cross-validated by patient, for the shortcut audit
(:mod:`cxrkit.evaluate.audit`).

* :func:`patient_folds` gives each image a fold such that all images of one patient share it
  (scikit-learn's ``GroupKFold``, or ``StratifiedGroupKFold`` given a target), so no patient is
  ever in both the training and the held-out part of a fold.
* :func:`out_of_fold` fits a logistic regression on the other folds and scores each fold's
  images with it: every image gets a score from a model that never saw its patient. With
  categorical features (one-hot metadata) identical rows are pooled into weighted ones first,
  which gives the same fit (the loss is a sum over images) in a fraction of the time.
* The fits run on one thread: on a shared 2-core machine, OpenMP and BLAS threads spinning
  for busy cores made a small multinomial fit 20 times slower (and a 20,000 x 1,024 one 8
  times slower) than one thread.
* :func:`fold_percentiles` makes the folds' scores comparable before they are pooled into
  one AUROC (see there why).
* :func:`embedding_probe` is the linear probe: from the model's embeddings ``(n, D)``, predict
  a metadata column (sex, view, age band); AUROC one-vs-rest, macro over its values (for two
  values, the plain AUROC), with a patient-bootstrap interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from cxrkit.evaluate.bootstrap import bootstrap_ci
from cxrkit.evaluate.metrics import roc_auc
from cxrkit.evaluate.results import group_order
from cxrkit.files import json_float

MAX_ITER = 1000  #: lbfgs iterations of every fit
PROBE_C = 1.0  #: inverse L2 strength of the probe (on standardised embeddings)


def patient_folds(
    groups: np.ndarray, n_folds: int, *, target: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """``(n,)`` fold index (0 .. k-1) of each image; ``groups`` ``(n,)`` are patient ids and all
    images of one patient share a fold. ``k = min(n_folds, number of patients)``.

    Without ``target``: ``GroupKFold`` (deterministic, folds of balanced image counts). With
    ``target`` ``(n,)`` (class codes): ``StratifiedGroupKFold`` shuffled with ``seed``, so each
    fold holds every class in about its overall share. Raises ``ValueError`` with fewer than 2
    patients."""
    groups = np.asarray(groups)
    k = min(n_folds, len(np.unique(groups)))
    if k < 2:
        raise ValueError(f"cross-validation by patient needs 2 patients or more; got {k}")
    folds = np.full(len(groups), -1, dtype=np.int64)
    if target is None:
        splitter = GroupKFold(n_splits=k).split(groups, groups=groups)
    else:
        strat = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a class in fewer patients than folds
            splitter = list(strat.split(groups, target, groups=groups))
    for fold, (_, held_out) in enumerate(splitter):
        folds[held_out] = fold
    return folds


def out_of_fold(
    features: np.ndarray,
    target: np.ndarray,
    folds: np.ndarray,
    *,
    n_classes: int,
    categorical: bool = False,
    C: float = 1.0,
) -> tuple[np.ndarray, bool]:
    """Out-of-fold class probabilities and whether every fit converged.

    ``features`` ``(n, F)``; ``target`` ``(n,)`` class codes 0 .. n_classes-1, or -1 for an
    unlabelled image (never trained on, scored all the same), or ``(n, T)``: T targets fitted
    one by one on the same features; ``folds`` ``(n,)`` from :func:`patient_folds`. Returns
    ``(n, n_classes)``, or ``(n, T, n_classes)`` for a 2-D ``target``. Each fold is scored by a
    logistic regression (L2, ``C``) trained on the labelled images of the other folds:
    standardised features, or, with ``categorical``, the distinct rows of a 0/1 design weighted
    by how often each (row, class) occurs. A training part with a single class scores every
    image 1 for it."""
    features = np.asarray(features, dtype=np.float64)
    targets = np.asarray(target).reshape(len(features), -1)
    out = np.zeros((*targets.shape, n_classes))
    rows, row_of = (
        np.unique(features, axis=0, return_inverse=True) if categorical else (features, None)
    )
    converged = True
    with threadpool_limits(limits=1):  # see the module docstring
        for t in range(targets.shape[1]):
            converged &= _fit_folds(rows, row_of, targets[:, t], folds, out[:, t], n_classes, C)
    return (out[:, 0] if np.ndim(target) == 1 else out), converged


def _fit_folds(
    rows: np.ndarray,
    row_of: np.ndarray | None,
    target: np.ndarray,
    folds: np.ndarray,
    out: np.ndarray,
    n_classes: int,
    C: float,
) -> bool:
    """Fill ``out`` ``(n, n_classes)`` with the out-of-fold probabilities of one target
    (:func:`out_of_fold`); whether every fit converged."""
    converged = True
    for fold in np.unique(folds):
        held = folds == fold
        train = ~held & (target >= 0)
        present = np.unique(target[train])
        if present.size < 2:
            out[np.ix_(held, present)] = 1.0
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            scores = _fit_score(rows, row_of, target, train, held, n_classes, C)
        converged &= not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        out[np.ix_(held, present)] = scores
    return converged


def _fit_score(
    rows: np.ndarray,
    row_of: np.ndarray | None,
    target: np.ndarray,
    train: np.ndarray,
    held: np.ndarray,
    n_classes: int,
    C: float,
) -> np.ndarray:
    """``(held.sum(), classes present in training)`` probabilities of the held-out images from
    a fit on the ``train`` images: on the images' own ``rows`` (``row_of`` None), or on the
    distinct ``rows`` weighted by their counts, ``row_of`` ``(n,)`` mapping images to rows."""
    if row_of is None:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER))
        return model.fit(rows[train], target[train]).predict_proba(rows[held])
    counts = np.bincount(
        row_of.reshape(-1)[train] * n_classes + target[train], minlength=len(rows) * n_classes
    ).reshape(len(rows), n_classes)
    r, c = np.nonzero(counts)
    model = LogisticRegression(C=C, max_iter=MAX_ITER)
    model.fit(rows[r], c, sample_weight=counts[r, c])
    return model.predict_proba(rows)[row_of.reshape(-1)[held]]


def fold_percentiles(scores: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """``scores`` ``(n, ...)`` as their percentile (average rank / fold size, in (0, 1]) among
    the images of their fold, per column; ``folds`` ``(n,)``.

    Out-of-fold scores come from one model per fold, and each model's base rate is its training
    part's prevalence, which in cross-validation is anti-correlated with the held-out part's
    (they share one total). Pooled as they are, a finding the features cannot predict gets an
    AUROC below 0.5 (0.46 on average with 120 patients and 5% prevalence, simulated), and a real
    signal is underestimated. Within a fold the order is the model's and is kept; across folds
    the percentiles are comparable, and AUROC on them stays at 0.5 without signal."""
    out = np.empty(np.shape(scores))
    for fold in np.unique(folds):
        held = folds == fold
        out[held] = rankdata(scores[held], method="average", axis=0) / held.sum()
    return out


def one_vs_rest_auroc(
    codes: np.ndarray, proba: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int
) -> tuple[float, list[float] | None, np.ndarray]:
    """``(macro AUROC, its 95% patient-bootstrap interval or None, per-class AUROC (K,))`` of
    class probabilities ``proba`` ``(n, K)`` for class codes ``codes`` ``(n,)``: each class
    against the rest (:func:`cxrkit.evaluate.metrics.roc_auc`), averaged; for K = 2 both
    classes give the plain AUROC. ``groups`` ``(n,)`` are the patients resampled."""
    onehot = (codes[:, None] == np.arange(proba.shape[1])[None]).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class absent: NaN, left out of the mean
        per_class = roc_auc(onehot, proba)
        interval = None
        if n_boot > 0:
            pair = bootstrap_ci(
                onehot, proba, thresholds=0.5, groups=groups, n_boot=n_boot, seed=seed
            )["macro_auroc"]
            low, high = json_float(pair[0]), json_float(pair[1])
            interval = None if low is None or high is None else [low, high]
    return float(np.nanmean(per_class)), interval, per_class


def embedding_probe(
    embeddings: np.ndarray,
    table: pd.DataFrame,
    columns: Sequence[str],
    groups: np.ndarray,
    *,
    n_folds: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Can a linear model read each of ``columns`` off the embeddings? ``embeddings`` ``(n, D)``
    align with ``table``'s rows and ``groups`` ``(n,)`` (patient ids).

    Per column: images with a value (missing ones left out), values held by fewer than
    ``n_folds`` patients dropped (named in ``dropped_values``), out-of-fold probabilities
    (:func:`out_of_fold`, folds stratified on the value) and their one-vs-rest macro AUROC
    with a patient-bootstrap interval (:func:`one_vs_rest_auroc`). A column left with one value
    gets ``auroc`` None and a ``reason``."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) != len(table):
        raise ValueError(
            f"expected embeddings of shape ({len(table)}, D), one row per image; got "
            f"{embeddings.shape}"
        )
    groups = np.asarray(groups)
    targets: dict[str, Any] = {}
    for column in columns:
        values = table[column].astype(object).where(table[column].notna(), None).to_numpy()
        known = np.array([v not in (None, "") for v in values])
        per_value = pd.Series(groups[known]).groupby(values[known].astype(str)).nunique()
        kept = sorted((v for v, n in per_value.items() if n >= n_folds), key=group_order)
        dropped = {v: int(n) for v, n in per_value.items() if n < n_folds}
        entry: dict[str, Any] = {
            "values": kept,
            "dropped_values": dropped,
            "kind": "binary" if len(kept) == 2 else "one-vs-rest macro",
            "auroc": None,
            "auroc_ci": None,
            "per_value_auroc": {},
            "n": 0,
            "n_patients": 0,
            "folds": None,
            "converged": None,
            "reason": None,
        }
        targets[column] = entry
        use = known & np.isin(values.astype(str), kept)
        if len(kept) < 2:
            entry["reason"] = (
                f"fewer than 2 values held by {n_folds} patients or more "
                f"({', '.join(f'{v}: {n}' for v, n in per_value.items()) or 'no value'})"
            )
            continue
        codes = pd.Categorical(values[use].astype(str), categories=kept).codes.astype(np.int64)
        folds = patient_folds(groups[use], n_folds, target=codes, seed=seed)
        proba, converged = out_of_fold(
            embeddings[use], codes, folds, n_classes=len(kept), C=PROBE_C
        )
        proba = fold_percentiles(proba, folds)
        auroc, interval, per_class = one_vs_rest_auroc(
            codes, proba, groups[use], n_boot=n_boot, seed=seed
        )
        entry |= {
            "auroc": json_float(auroc),
            "auroc_ci": interval,
            "per_value_auroc": dict(zip(kept, map(json_float, per_class), strict=True)),
            "n": int(use.sum()),
            "n_patients": int(len(np.unique(groups[use]))),
            "folds": int(folds.max() + 1),
            "converged": converged,
        }
    return {
        "available": True,
        "reason": None,
        "dim": int(embeddings.shape[1]),
        "model": f"standardised embeddings, L2 logistic regression (C={PROBE_C:g})",
        "targets": targets,
    }
