"""The shortcut audit (``cxrkit eval --audit``): how much of each finding could be guessed
without the image, whether the model still works inside each stratum of a confounder, and
what its embeddings encode. Everything is computed on the evaluated images (``--split``), with
95% intervals from a bootstrap of patients (``--bootstrap`` resamples, ``--seed``).

* **Metadata-only baseline**: an L2 logistic regression per finding on one-hot metadata
  (view, sex, age band, site: :func:`choose_columns`; a missing value is a level of its own),
  cross-validated in folds grouped by patient (:mod:`cxrkit.evaluate.probe`): each image is
  scored by a model fitted on other patients, its score ranked within its fold before the
  folds are pooled (:func:`~cxrkit.evaluate.probe.fold_percentiles`). Its AUROC beside the
  model's, on the same images and the same resamples, and their paired difference (model -
  baseline).
* **Strata**: the model's AUROC within each value of each column,
  :func:`cxrkit.evaluate.results.subgroups` (a value without an AUROC says why).
* **Embedding probe**: :func:`cxrkit.evaluate.probe.embedding_probe`, with a checkpoint only.

``metrics.json["audit"]`` (see :func:`shortcut_audit`; intervals are ``[low, high]`` or null,
NaN figures are null):

* ``columns``: ``requested`` ("default" or the list given), ``used``, ``unavailable``
  (``{column: why}``), ``levels`` (``{column: {value: images}}``, ``(missing)`` counted),
  ``age_bands`` (the bands of ``age_band``).
* ``baseline``: ``features``, ``model``, ``cv`` (``folds``, ``splitter``, ``grouped_by``,
  ``n_patients``), ``per_class`` (``{finding: {n, n_positive, model_auroc, model_auroc_ci,
  baseline_auroc, baseline_auroc_ci, difference, difference_ci, p_value, reason, caution}}``:
  ``reason`` why a figure is null, ``caution`` when the finding has fewer than 10 positives
  or negatives per metadata degree of freedom), ``macro`` (``model_auroc``,
  ``model_auroc_ci``, ``baseline_auroc``, ``baseline_auroc_ci``, ``difference``),
  ``degrees_of_freedom``, ``converged``, ``reason`` (null, or why there is no baseline).
* ``strata``: the :func:`~cxrkit.evaluate.results.subgroups` dict of the used columns, or null.
* ``probe``: ``available``, ``reason`` (``"embedding probe: needs --checkpoint"`` without
  embeddings), and with them ``dim``, ``model`` and ``targets`` (``{column: {values,
  dropped_values, kind, auroc, auroc_ci, per_value_auroc, n, n_patients, folds, converged,
  reason}}``).
* ``bootstrap`` (``n``, ``unit``, ``seed``) and ``notes`` (what the reader must know).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import SITE_COLUMNS
from cxrkit.errors import UserError, did_you_mean
from cxrkit.evaluate.bootstrap import bootstrap_ci, paired_auroc_difference
from cxrkit.evaluate.metrics import roc_auc
from cxrkit.evaluate.probe import embedding_probe, fold_percentiles, out_of_fold, patient_folds
from cxrkit.evaluate.results import (
    AGE_BAND_LABELS,
    add_age_band,
    contain_estimates,
    group_order,
    subgroups,
)
from cxrkit.files import json_float

DEFAULT_COLUMNS = ("view", "sex", "age_band")  #: and the first of SITE_COLUMNS present
NOT_METADATA = ("image_id", "path", "patient_id", "study_id", "split", "cache_index", "key")
NOT_METADATA += ("official_split",)
EVENTS_PER_DOF = 10  #: fewer positives (or negatives) per metadata degree of freedom: a caution
MAX_LEVELS = 30  #: a column with more distinct values is no stratum (band it first)
MISSING = "(missing)"
NO_EMBEDDINGS = "embedding probe: needs --checkpoint (a predictions CSV has no embeddings)"
BASELINE_MODEL = "L2 logistic regression (C=1) per finding on one-hot metadata"


def metadata_columns(table: pd.DataFrame, findings: Sequence[str]) -> list[str]:
    """The columns of a labels ``table`` that ``--audit-columns`` may name: neither an id nor a
    finding; ``age_band`` too when there is an ``age``."""
    names = [c for c in table.columns if c not in NOT_METADATA and c not in set(findings)]
    return sorted(set(names) | ({"age_band"} if "age" in table else set()))


def check_columns(table: pd.DataFrame, findings: Sequence[str], requested: Sequence[str]) -> None:
    """A UserError (one line) for a ``requested`` column the labels ``table`` lacks."""
    available = metadata_columns(table, findings)
    for name in requested:
        if name not in available:
            if not available:
                raise UserError(
                    f"--audit-columns {name!r}: the labels have no metadata column (only "
                    "images, patients and findings)"
                )
            raise did_you_mean(name, available, what="--audit-columns column")


@dataclass
class AuditColumns:
    """The columns an audit uses, those it cannot and why, and the values of each."""

    requested: list[str] | str
    used: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    levels: dict[str, dict[str, int]] = field(default_factory=dict)


def column_values(table: pd.DataFrame, column: str) -> np.ndarray:
    """``(n,)`` object array: each row's value of ``column`` as text, None where missing."""
    raw = table[column].astype(object).where(table[column].notna(), None).to_numpy()
    return np.array([None if v is None or str(v).strip() == "" else str(v) for v in raw], object)


def choose_columns(table: pd.DataFrame, requested: Sequence[str] | None = None) -> AuditColumns:
    """Resolve ``requested`` (None: :data:`DEFAULT_COLUMNS` and a site column) on ``table``
    (with ``age_band`` added): a column absent, all missing, single-valued or with more than
    :data:`MAX_LEVELS` values is unavailable, with the reason."""
    if requested is None:
        site = next((c for c in SITE_COLUMNS if c in table), None)
        names, chosen = [*DEFAULT_COLUMNS, site or "site"], AuditColumns("default")
    else:
        names, chosen = list(dict.fromkeys(requested)), AuditColumns(list(requested))
    for name in names:
        if name not in table:
            chosen.unavailable[name] = {
                "site": f"no site or scanner column in the labels ({', '.join(SITE_COLUMNS)})",
                "age_band": "no age column in the labels",
            }.get(name, "not in the labels")
            continue
        values = column_values(table, name)
        missing = np.array([v is None for v in values], bool)
        counts = pd.Series(values[~missing], dtype=object).value_counts()
        ordered = sorted(counts.items(), key=lambda kv: group_order(kv[0]))
        chosen.levels[name] = {str(k): int(v) for k, v in ordered}
        if missing.any():
            chosen.levels[name][MISSING] = int(missing.sum())
        if counts.empty:
            chosen.unavailable[name] = "every value is missing"
        elif len(counts) == 1:
            chosen.unavailable[name] = (
                f"a single value ({counts.index[0]}) for every image: nothing to contrast"
            )
        elif len(counts) > MAX_LEVELS:
            chosen.unavailable[name] = f"{len(counts)} distinct values, more than {MAX_LEVELS}"
        else:
            chosen.used.append(name)
    return chosen


def one_hot(table: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``(n, F)`` 0/1 design of ``columns`` (one indicator per value, :data:`MISSING` being a
    value) and the ``F`` feature names, ``column=value``."""
    blocks, names = [], []
    for column in columns:
        values = np.array([MISSING if v is None else v for v in column_values(table, column)])
        levels = sorted(set(values))
        blocks.append(values[:, None] == np.array(levels)[None])
        names += [f"{column}={v}" for v in levels]
    return np.concatenate(blocks, axis=1).astype(np.float64), names


@dataclass
class Baseline:
    """Metadata-only ``scores`` ``(n, C)``: the out-of-fold ``probabilities`` ``(n, C)`` as
    percentiles within their fold (:func:`~cxrkit.evaluate.probe.fold_percentiles`), what
    the audit ranks; the ``folds`` ``(n,)`` and the one-hot ``features``."""

    scores: np.ndarray
    probabilities: np.ndarray
    folds: np.ndarray
    features: list[str]
    converged: bool


def metadata_baseline(
    table: pd.DataFrame,
    y_true: np.ndarray,
    columns: Sequence[str],
    groups: np.ndarray,
    *,
    n_folds: int = 5,
) -> Baseline:
    """The metadata-only baseline: per finding (column of ``y_true`` ``(n, C)``, NaN unknown),
    the out-of-fold probability of a logistic regression on :func:`one_hot` ``columns`` of
    ``table``, in ``n_folds`` folds grouped by ``groups`` ``(n,)`` (patients)."""
    features, names = one_hot(table, columns)
    folds = patient_folds(groups, n_folds)
    targets = np.where(np.isnan(y_true), -1, y_true).astype(np.int64)
    proba, converged = out_of_fold(features, targets, folds, n_classes=2, categorical=True)
    return Baseline(
        scores=fold_percentiles(proba[..., 1], folds),
        probabilities=proba[..., 1],
        folds=folds,
        features=names,
        converged=converged,
    )


def _interval(pair: np.ndarray | None) -> list[float] | None:
    low, high = (None, None) if pair is None else (json_float(pair[0]), json_float(pair[1]))
    return None if low is None or high is None else [low, high]


def compare_baseline(
    y_true: np.ndarray,
    y_score: np.ndarray,
    baseline: np.ndarray,
    *,
    classes: Sequence[str],
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Per finding and macro: the model's AUROC (``y_score`` ``(n, C)``) and the baseline's
    (``baseline`` ``(n, C)``) with intervals from the same patient resamples, and the paired
    difference model - baseline with its interval and two-sided p-value."""
    ci: dict[str, Any] = {}
    with warnings.catch_warnings():
        # one-label findings get a reason below; the other figures bootstrap_ci warns about
        # (PPV at 0.5, ...) are not reported here
        warnings.simplefilter("ignore", UserWarning)
        model_auc, base_auc = roc_auc(y_true, y_score), roc_auc(y_true, baseline)
        if n_boot > 0:
            options = {"thresholds": 0.5, "groups": groups, "n_boot": n_boot, "seed": seed}
            ci["model"] = bootstrap_ci(y_true, y_score, **options)
            ci["base"] = bootstrap_ci(y_true, baseline, **options)
            ci["diff"] = paired_auroc_difference(
                y_true, y_score, baseline, groups=groups, n_boot=n_boot, seed=seed
            )
    per_class = {}
    for j, name in enumerate(classes):
        y = y_true[~np.isnan(y_true[:, j]), j]
        n_pos = int((y == 1).sum())
        entry = {
            "n": int(y.size),
            "n_positive": n_pos,
            "model_auroc": json_float(model_auc[j]),
            "model_auroc_ci": _interval(ci["model"]["auroc"][j]) if ci else None,
            "baseline_auroc": json_float(base_auc[j]),
            "baseline_auroc_ci": _interval(ci["base"]["auroc"][j]) if ci else None,
            "difference": json_float(model_auc[j] - base_auc[j]),
            "difference_ci": (
                _interval([ci["diff"]["ci_low"][j], ci["diff"]["ci_high"][j]]) if ci else None
            ),
            "p_value": json_float(ci["diff"]["p_value"][j]) if ci else None,
            "reason": None,
        }
        if n_pos == 0 or n_pos == y.size:
            label = "positive" if n_pos == 0 else "negative"
            entry["reason"] = f"no {label} label among the evaluated images: no AUROC"
        elif ci and entry["model_auroc_ci"] is None:
            entry["reason"] = "too few resamples with both labels for an interval"
        per_class[name] = entry
    defined = ~np.isnan(model_auc)
    macro = {
        "model_auroc": json_float(np.mean(model_auc[defined])) if defined.any() else None,
        "model_auroc_ci": _interval(ci["model"]["macro_auroc"]) if ci else None,
        "baseline_auroc": json_float(np.mean(base_auc[defined])) if defined.any() else None,
        "baseline_auroc_ci": _interval(ci["base"]["macro_auroc"]) if ci else None,
    }
    both = macro["model_auroc"] is not None and macro["baseline_auroc"] is not None
    macro["difference"] = macro["model_auroc"] - macro["baseline_auroc"] if both else None
    contain_estimates([*per_class.values(), macro])
    return {"per_class": per_class, "macro": macro}


def shortcut_audit(
    table: pd.DataFrame,
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    classes: Sequence[str],
    groups: np.ndarray | None = None,
    columns: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    n_folds: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    min_size: int = 10,
) -> dict[str, Any]:
    """The ``metrics.json["audit"]`` dict (module docstring) of one evaluation.

    ``table`` rows align with ``y_true`` ``(n, C)`` (1/0/NaN) and ``y_score`` ``(n, C)`` (the
    model's ranking scores, uncalibrated); ``groups`` ``(n,)`` patient ids (None: each image its
    own patient); ``columns`` as ``--audit-columns`` (None: the defaults); ``embeddings``
    ``(n, D)`` the model's, or None (no probe). Strata under ``min_size`` images get counts."""
    classes, table = list(classes), add_age_band(table.reset_index(drop=True))
    chosen = choose_columns(table, columns)
    patients = np.arange(len(table)) if groups is None else np.asarray(groups).astype(str)
    notes = [f"{c}: {why}" for c, why in chosen.unavailable.items()]
    audit: dict[str, Any] = {
        "columns": {**vars(chosen), "age_bands": list(AGE_BAND_LABELS)},
        "bootstrap": {
            "n": n_boot,
            "unit": "patient" if groups is not None else "image",
            "seed": seed,
        }
        if n_boot > 0
        else None,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        audit["baseline"] = _baseline(
            table, y_true, y_score, classes, chosen.used, patients, groups, n_folds, n_boot, seed
        )
        audit["strata"] = (
            subgroups(
                table,
                y_true,
                y_score,
                classes=classes,
                by=chosen.used,
                groups=groups,
                n_boot=n_boot,
                seed=seed,
                min_size=min_size,
            )
            if chosen.used
            else None
        )
    if embeddings is None:
        audit["probe"] = {"available": False, "reason": NO_EMBEDDINGS, "targets": {}}
    else:
        audit["probe"] = embedding_probe(
            embeddings, table, chosen.used, patients, n_folds=n_folds, n_boot=n_boot, seed=seed
        )
    notes += sorted({str(w.message) for w in caught})
    if audit["baseline"].get("converged") is False:
        notes.append("a baseline logistic regression did not converge: read it with care")
    audit["notes"] = notes
    return audit


def _baseline(
    table: pd.DataFrame,
    y_true: np.ndarray,
    y_score: np.ndarray,
    classes: list[str],
    used: list[str],
    patients: np.ndarray,
    groups: np.ndarray | None,
    n_folds: int,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The ``baseline`` entry, or one with a ``reason`` when it cannot be fitted."""
    n_patients = int(len(np.unique(patients)))
    out: dict[str, Any] = {"features": used, "model": BASELINE_MODEL, "reason": None}
    out["cv"] = {
        "folds": min(n_folds, n_patients),
        "splitter": "GroupKFold",
        "grouped_by": "patient" if groups is not None else "image",
        "n_patients": n_patients,
    }
    if not used:
        return out | {"per_class": {}, "macro": {}, "reason": "no usable metadata column"}
    if n_patients < 2:
        return out | {"per_class": {}, "macro": {}, "reason": "fewer than 2 patients"}
    fitted = metadata_baseline(table, y_true, used, patients, n_folds=n_folds)
    compared = compare_baseline(
        y_true, y_score, fitted.scores, classes=classes, groups=groups, n_boot=n_boot, seed=seed
    )
    dof = len(fitted.features) - len(used)  # one level of each column is the reference
    for entry in compared["per_class"].values():
        events = min(entry["n_positive"], entry["n"] - entry["n_positive"])
        entry["caution"] = (
            f"{events} {'positive' if events == entry['n_positive'] else 'negative'} image(s) "
            f"for {dof} metadata degrees of freedom (under {EVENTS_PER_DOF} each): the baseline "
            "overfits; its AUROC is noisy and can fall below 0.5 by chance"
            if 0 < events < EVENTS_PER_DOF * dof
            else None
        )
    return out | compared | {"converged": fitted.converged, "degrees_of_freedom": dof}
