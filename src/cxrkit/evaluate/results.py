"""The evaluation a clinical audit asks for, on aligned labels and scores (pure numpy).

:func:`evaluate` turns ``y_true`` / ``y_score`` ``(n, C)`` (+ thresholds tuned on the
validation split, patient ids, optional calibrated scores and subgroup columns) into the
``metrics.json`` dict: per-class AUROC, AP, prevalence, operating-point figures at the
threshold (sensitivity, specificity, PPV, NPV, F1), sensitivity at fixed specificities and
specificity at fixed sensitivities, each with a 95% bootstrap interval resampling patients,
DeLong intervals for AUROC (image-level, labelled so), macro / micro / prevalence-weighted
averages, Brier and ECE, and a subgroup table with the largest AUROC gap per finding.

Ranking figures (AUROC, AP, sensitivity at a fixed specificity and the reverse) are always
computed on the **raw** scores: calibration (even isotonic, which ties scores) changes only
the probability figures: Brier, ECE, and the figures at the thresholds, which were tuned on
calibrated validation probabilities.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.errors import UserError
from cxrkit.evaluate.bootstrap import bootstrap_ci
from cxrkit.evaluate.calibration import brier, ece
from cxrkit.evaluate.delong import delong_ci
from cxrkit.evaluate.metrics import (
    confusion_at_thresholds,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
    summarize,
)
from cxrkit.files import json_float

AGE_BANDS = (0, 20, 40, 60, 80, 200)  #: edges in years, left-closed: [0, 20), [20, 40), ...
AGE_BAND_LABELS = ("<20", "20-39", "40-59", "60-79", "80+")  #: ages of 200 or more: no band


def _ci(pair: np.ndarray) -> list[float | None] | None:
    low, high = json_float(pair[0]), json_float(pair[1])
    return None if low is None or high is None else [low, high]


def evaluate(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    classes: Sequence[str],
    thresholds: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    specificities: Sequence[float] = (0.8, 0.9, 0.95),
    sensitivities: Sequence[float] = (0.8, 0.9),
    raw_score: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics with confidence intervals; see the module docstring. ``y_score`` is what the
    model outputs after calibration; ``raw_score`` (optional) the same before calibration:
    the ranking figures are computed on it, and it is the Brier/ECE comparison."""
    classes = list(classes)
    ranking = y_score if raw_score is None else raw_score
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        base = summarize(
            y_true, y_score, classes=classes, thresholds=thresholds, specificity=specificities[0]
        )
        if raw_score is not None:
            _take_ranking(
                base,
                summarize(
                    y_true,
                    ranking,
                    classes=classes,
                    thresholds=thresholds,
                    specificity=specificities[0],
                ),
            )
        conf = confusion_at_thresholds(y_true, y_score, thresholds)
        extra = {
            f"sens_at_spec_{s:g}": sensitivity_at_specificity(y_true, ranking, specificity=s)
            for s in specificities
        }
        extra |= {
            f"spec_at_sens_{s:g}": specificity_at_sensitivity(y_true, ranking, sensitivity=s)
            for s in sensitivities
        }
        options = {
            "thresholds": thresholds,
            "groups": groups,
            "n_boot": n_boot,
            "seed": seed,
            "specificities": specificities,
            "sensitivities": sensitivities,
        }
        ci = bootstrap_ci(y_true, y_score, **options) if n_boot > 0 else {}
        if n_boot > 0 and raw_score is not None:  # the same resamples (same seed and groups)
            ranked = bootstrap_ci(y_true, ranking, **options)
            ci |= {k: v for k, v in ranked.items() if _is_ranking(k)}
        cal = {"brier": brier(y_true, y_score), "ece": ece(y_true, y_score)}
        if raw_score is not None:
            cal = {
                "brier": brier(y_true, raw_score),
                "ece": ece(y_true, raw_score),
                "brier_calibrated": cal["brier"],
                "ece_calibrated": cal["ece"],
            }
        per_class = base["per_class"]
        for j, name in enumerate(classes):
            entry = per_class[name]
            for key in ("ppv", "npv", "f1"):
                entry[key] = json_float(conf[key][j])
            for key, values in {**extra, **cal}.items():
                entry[key] = json_float(values[j])
            for key, interval in ci.items():
                if not key.startswith(("macro_", "micro_")):
                    entry[f"{key}_ci"] = _ci(interval[j])
            mask = ~np.isnan(y_true[:, j])
            if len(np.unique(y_true[mask, j])) == 2:
                _, low, high = delong_ci(y_true[:, j], ranking[:, j])
                entry["auroc_delong_ci"] = [json_float(low), json_float(high)]
    metrics = dict(base)
    if "macro_auroc" in ci:
        metrics["macro"]["auroc_ci"] = _ci(ci["macro_auroc"])
        metrics["macro"]["ap_ci"] = _ci(ci["macro_ap"])
        metrics["micro"]["auroc_ci"] = _ci(ci["micro_auroc"])
    metrics["weighted"] = _weighted(per_class, classes)
    metrics["n_patients"] = int(len(np.unique(groups))) if groups is not None else None
    metrics["bootstrap"] = (
        {
            "n": n_boot,
            "unit": "patient" if groups is not None else "image",
            "seed": seed,
            "interval": "95% percentile",
        }
        if n_boot > 0
        else None
    )
    notes = {str(w.message) for w in caught}
    if 0 < n_boot < MIN_RELIABLE_BOOT:
        notes.add(
            f"intervals from only {n_boot} bootstrap resamples are unreliable; use "
            f"--bootstrap {MIN_RELIABLE_BOOT} or more (default 1000)"
        )
    widened = contain_estimates(
        [per_class[c] for c in classes] + [metrics["macro"], metrics["micro"]]
    )
    if widened:
        notes.add(
            f"{widened} percentile interval(s) did not contain their own estimate (few "
            "resamples or a skewed bootstrap) and were widened to it"
        )
    metrics["warnings"] = sorted(notes)
    return metrics


MIN_RELIABLE_BOOT = 200


def contain_estimates(entries: list[dict[str, Any]]) -> int:
    """Widen every ``<figure>_ci`` of ``entries`` (DeLong's aside) to contain ``<figure>``,
    in place; returns how many were widened."""
    widened = 0
    for entry in entries:
        for key, interval in entry.items():
            estimate = entry.get(key.removesuffix("_ci"))
            if not key.endswith("_ci") or "delong" in key or interval is None or estimate is None:
                continue
            low, high = min(interval[0], estimate), max(interval[1], estimate)
            if [low, high] != list(interval):
                entry[key] = [low, high]
                widened += 1
    return widened


RANKING = ("auroc", "ap", "sens_at_spec_", "spec_at_sens_")


def _is_ranking(key: str) -> bool:
    """Whether figure ``key`` (``auroc``, ``macro_ap``, ``sens_at_spec_0.8``, ...) depends only
    on the order of the scores."""
    bare = key.removeprefix("macro_").removeprefix("micro_")
    return bare in ("auroc", "ap") or bare.startswith(RANKING[2:])


def _take_ranking(base: dict[str, Any], ranked: dict[str, Any]) -> None:
    """Copy the ranking figures of ``ranked`` (a :func:`summarize` of the raw scores) over
    those of ``base`` (of the calibrated ones), in place."""
    for name, entry in base["per_class"].items():
        entry |= {k: v for k, v in ranked["per_class"][name].items() if _is_ranking(k)}
    base["macro"], base["micro"] = ranked["macro"], ranked["micro"]
    base["skipped_classes"] = ranked["skipped_classes"]


def _weighted(per_class: dict[str, dict], classes: list[str]) -> dict[str, float | None]:
    """Prevalence-weighted (by positives) averages of AUROC and AP over evaluable classes."""
    out: dict[str, float | None] = {}
    for key in ("auroc", "ap"):
        pairs = [
            (per_class[c][key], per_class[c]["n_positive"])
            for c in classes
            if per_class[c][key] is not None
        ]
        total = sum(w for _, w in pairs)
        out[key] = sum(v * w for v, w in pairs) / total if total else None
    return out


def _group_intervals(
    y: np.ndarray, s: np.ndarray, patients: np.ndarray, n_boot: int, seed: int
) -> np.ndarray | None:
    """``(C, 2)`` patient-bootstrap AUROC intervals of one subgroup (NaN where undefined);
    None without resamples."""
    if n_boot <= 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small groups: NaN intervals, shown as n/a
        return bootstrap_ci(y, s, thresholds=0.5, groups=patients, n_boot=n_boot, seed=seed)[
            "auroc"
        ]


def group_order(value: Any) -> tuple[int, str]:
    """Sort key of a group's value: age bands youngest first, then the rest as text."""
    text = str(value)
    return (AGE_BAND_LABELS.index(text), "") if text in AGE_BAND_LABELS else (99, text)


def add_age_band(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``age_band`` (``<20``, ``20-39``, ..., ``80+``) from ``age`` when it exists."""
    if "age" not in table:
        return table
    band = pd.cut(
        pd.to_numeric(table["age"], errors="coerce"),
        AGE_BANDS,
        right=False,
        labels=list(AGE_BAND_LABELS),
    )
    return table.assign(age_band=band.astype(object).where(band.notna(), None))


def subgroups(
    table: pd.DataFrame,
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    classes: Sequence[str],
    by: Sequence[str],
    min_size: int = 10,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per group of each ``by`` column: n, positives, patients and AUROC with a 95% interval
    per finding, and per finding the largest AUROC gap between two groups of one column.

    ``table`` rows align with ``y_true``; ``groups`` ``(n,)`` are patient ids. The interval
    (``auroc_ci``) is a bootstrap resampling the group's **patients** (``n_boot`` resamples;
    images when ``groups`` is None); DeLong's image-level interval is kept beside it as
    ``auroc_delong_ci``. Groups smaller than ``min_size`` images are listed with counts only
    (an AUROC on a handful of images is noise); a row without an AUROC says why in ``reason``
    (:func:`no_auroc_reason`), None on the others."""
    table = add_age_band(table.reset_index(drop=True))
    unknown = [c for c in by if c not in table.columns]
    if unknown:
        raise UserError(
            f"--by {', '.join(unknown)}: no such column; available: "
            f"{', '.join(c for c in table.columns if table[c].nunique() < 50)}"
        )
    patients = np.arange(len(table)) if groups is None else np.asarray(groups)
    rows: list[dict[str, Any]] = []
    gaps: dict[str, dict[str, Any]] = {}
    for column in by:
        values = table[column].astype(object).where(table[column].notna(), None)
        for group in sorted({v for v in values if v not in (None, "")}, key=group_order):
            mask = (values == group).to_numpy()
            intervals = (
                _group_intervals(y_true[mask], y_score[mask], patients[mask], n_boot, seed)
                if mask.sum() >= min_size  # smaller groups get counts only
                else None
            )
            for j, name in enumerate(classes):
                y, s = y_true[mask, j], y_score[mask, j]
                labelled = ~np.isnan(y)
                n_pos = int((y[labelled] == 1).sum())
                row = {
                    "column": column,
                    "group": str(group),
                    "finding": name,
                    "n": int(labelled.sum()),
                    "n_positive": n_pos,
                    "n_patients": int(len(np.unique(patients[mask][labelled]))),
                    "auroc": None,
                    "auroc_ci": None,
                    "auroc_delong_ci": None,
                    "reason": no_auroc_reason(int(labelled.sum()), n_pos, min_size),
                }
                if row["reason"] is None:
                    auc, low, high = delong_ci(y, s)
                    row["auroc"] = json_float(auc)
                    row["auroc_ci"] = _ci(intervals[j]) if intervals is not None else None
                    row["auroc_delong_ci"] = [json_float(low), json_float(high)]
                rows.append(row)
        for name in classes:
            scored = [
                r
                for r in rows
                if r["column"] == column and r["finding"] == name and r["auroc"] is not None
            ]
            if len(scored) >= 2:
                low_r = min(scored, key=lambda r: r["auroc"])
                high_r = max(scored, key=lambda r: r["auroc"])
                gap = high_r["auroc"] - low_r["auroc"]
                if name not in gaps or gap > gaps[name]["gap"]:
                    gaps[name] = {
                        "column": column,
                        "gap": gap,
                        "low_group": low_r["group"],
                        "high_group": high_r["group"],
                    }
    return {"by": list(by), "min_size": min_size, "rows": rows, "largest_gap": gaps}


def no_auroc_reason(n: int, n_positive: int, min_size: int) -> str | None:
    """Why a group of ``n`` labelled images, ``n_positive`` of them positive, gets no AUROC in
    :func:`subgroups`; None when it gets one (at least ``min_size`` images, 2 of each label)."""
    n_negative = n - n_positive
    if n < min_size:
        return f"{n} labelled image(s), fewer than {min_size}: counts only"
    if n_positive == 0 or n_negative == 0:
        return f"no {'positive' if n_positive == 0 else 'negative'} image in this group"
    if min(n_positive, n_negative) < 2:
        return f"a single {'positive' if n_positive == 1 else 'negative'} image: no AUROC"
    return None


def per_class_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """``per_class.csv``: one row per finding, CI pairs split into ``_low``/``_high``."""
    records = []
    for name in metrics["classes"]:
        entry = {"finding": name}
        for key, value in metrics["per_class"][name].items():
            if isinstance(value, list):
                entry[f"{key}_low"], entry[f"{key}_high"] = value
            else:
                entry[key] = value
        records.append(entry)
    return pd.DataFrame.from_records(records)


def format_table(metrics: dict[str, Any]) -> str:
    """The per-class results table printed by ``eval`` and ``demo``."""
    first = next(iter(metrics["per_class"].values()))
    key = next(
        (k for k in first if k.startswith("sens_at_spec") and not k.endswith("_ci")),
        "sens_at_spec_0.8",
    )
    spec = key.rsplit("_", 1)[-1]
    sens_head = f"Sen@Spec({spec})"
    head = f"{'Class':<20} {'AUROC':>7} {'95% CI':>15} {'AP':>7} {'Thr':>6} {sens_head:>16}"
    lines = [head, "-" * len(head)]

    def fmt(v: float | None, width: int, digits: int = 3) -> str:
        return f"{v:>{width}.{digits}f}" if v is not None else f"{'n/a':>{width}}"

    def ci(v: list | None) -> str:
        return f"{v[0]:.3f}-{v[1]:.3f}".rjust(15) if v else f"{'':>15}"

    for name in metrics["classes"]:
        m = metrics["per_class"][name]
        lines.append(
            f"{name:<20} {fmt(m['auroc'], 7)} {ci(m.get('auroc_ci'))} {fmt(m['ap'], 7)} "
            f"{fmt(m['threshold'], 6, 2)} {fmt(m[key], 16)}"
        )
    lines.append("-" * len(head))
    for avg in ("macro", "micro"):
        row = metrics[avg]
        lines.append(
            f"{avg:<20} {fmt(row['auroc'], 7)} {ci(row.get('auroc_ci'))} {fmt(row['ap'], 7)}"
        )
    return "\n".join(lines)
