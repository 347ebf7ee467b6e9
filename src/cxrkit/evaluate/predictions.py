"""Predictions from any tool, matched to labels from a manifest, a dataset's metadata or a
plain labels CSV.

A predictions CSV needs an image key column (``image_id``, ``Image Index``, ``path``,
``filename``, ``image`` or ``id``, first found in that order) and one probability column per
finding. Keys are matched to the labelled images by path (:mod:`cxrkit.evaluate.image_keys`:
relative path, else an unambiguous trailing part of it, down to a unique file name).
Finding columns are matched case-insensitively, ignoring ``_``/space differences and a prefix
such as ``prob_``, ``p_``, ``pred_`` or ``score_``. Images present in one file and not the
other are counted and reported, never silently dropped.

A plain labels CSV (``--labels truth.csv``, no images needed) has an image column, an optional
patient column and one 0/1/blank column per finding; its other columns are metadata.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import BASE_COLUMNS, get_dataset
from cxrkit.data.manifest import HEADER_NAME, load_manifest
from cxrkit.errors import UserError, did_you_mean
from cxrkit.evaluate.image_keys import match_keys, normalise_key

KEY_COLUMNS = ("image_id", "image index", "path", "filename", "file", "image", "id", "dicom_id")
PREFIXES = ("prob_", "prob-", "p_", "pred_", "score_", "probability_")


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


@dataclass
class LabelSource:
    """Labels keyed by image: ``table`` has ``key, patient_id`` (+ metadata, ``split``) and
    one float column per finding (NaN = unknown)."""

    table: pd.DataFrame
    findings: list[str]
    origin: str
    notes: list[str] = field(default_factory=list)  # what the report must say about them


def load_labels(
    source: str | Path, *, dataset: str | None = None, patient_col: str | None = None
) -> LabelSource:
    """Labels from a prepared folder (``manifest.json``), from a dataset's own metadata file
    with ``dataset`` (e.g. ``--dataset nih --labels Data_Entry_2017.csv``), or from a plain
    labels CSV (:func:`read_label_csv`, ``patient_col`` naming its patient column)."""
    source = Path(source)
    notes: list[str] = []
    if patient_col is not None and not (dataset is None and source.is_file()):
        raise UserError("--patient-col is for a plain labels CSV; this --labels has patients")
    if dataset is None and source.is_file():
        table, findings, notes = read_label_csv(source, patient_col=patient_col)
    elif dataset is None:
        if not (source / HEADER_NAME).is_file():
            raise UserError(
                f"--labels {source} is neither a prepared folder nor a CSV file; give a "
                "prepared folder, a labels CSV, or --dataset NAME with the dataset's label file"
            )
        m = load_manifest(source)
        table, findings = m.table.copy(), m.findings
    else:
        spec = get_dataset(dataset)
        if spec.read_labels is None:
            raise UserError(
                f"dataset {dataset!r} cannot read labels without its images yet; "
                "prepare it and pass the prepared folder as --labels"
            )
        table = spec.read_labels(source)
        findings = [c for c in table.columns if c not in _META and table[c].dtype.kind == "f"]
    table["key"] = table["image_id"].map(normalise_key)
    if table["key"].duplicated().any():
        dup = table.loc[table["key"].duplicated(), "image_id"].iloc[0]
        raise UserError(f"{source}: image {dup!r} appears twice; image ids must be unique")
    return LabelSource(table=table, findings=list(findings), origin=str(source), notes=notes)


PATIENT_COLUMNS = ("patient_id", "patient id", "patientid", "patient")


def read_label_csv(
    path: Path, *, patient_col: str | None = None
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """A plain labels CSV -> ``(table, findings, notes)``: ``table`` has ``image_id``,
    ``patient_id`` and one float column per finding (1 / 0 / NaN for blank).

    The image column is the first of :data:`KEY_COLUMNS`; the patient column is
    ``patient_col``, else one named as in :data:`PATIENT_COLUMNS`, else none: each image is
    then its own patient and ``notes`` says so (intervals then ignore patients). Finding
    columns are those whose values are all 0, 1 or blank; other columns are metadata, and a
    column that looks like labels but holds other values (``-1``, ``0.7``) is named in notes.
    """
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path} is not a readable CSV: {err}") from None
    image_col = image_column(list(raw.columns), path)
    if patient_col is not None and patient_col not in raw.columns:
        raise did_you_mean(patient_col, raw.columns, what=f"--patient-col of {path}")
    patient_col = patient_col or first_column(list(raw.columns), PATIENT_COLUMNS)
    notes = []
    table = pd.DataFrame({"image_id": raw[image_col].str.strip()})
    if patient_col is None:
        table["patient_id"] = table["image_id"]
        notes.append(
            f"{path.name} has no patient column: each image is treated as its own patient "
            "(intervals are too narrow if patients have several images; pass --patient-col)"
        )
    else:
        table["patient_id"] = raw[patient_col].str.strip()
    findings, odd = [], []
    for col in raw.columns:
        if col in (image_col, patient_col):
            continue
        values = raw[col].str.strip()
        filled = values[values != ""]
        numbers = pd.to_numeric(filled, errors="coerce")
        if filled.empty or numbers.isna().any():
            continue  # text metadata (sex, view, ...) or an empty column
        if numbers.isin([0, 1]).all():
            findings.append(col.strip())
            table[col.strip()] = pd.to_numeric(values.replace("", np.nan)).astype(np.float64)
        elif numbers.nunique() <= 3 and numbers.isin([-1, 0, 1]).all():
            odd.append(col.strip())
    if odd:
        notes.append(
            f"{path.name}: columns {', '.join(odd)} hold values other than 0/1/blank (e.g. -1 "
            "for uncertain) and were not evaluated; map them to 0/1/blank first"
        )
    if not findings:
        raise UserError(f"{path} has no finding column (0/1/blank values); columns: {list(raw)}")
    return table, findings, notes


_META = {*BASE_COLUMNS, "split", "cache_index", "key"}


def match_columns(columns: list[str], findings: list[str], *, where: str) -> dict[str, str]:
    """Map each finding to its column in ``columns`` (see module docstring for the rules)."""
    by_norm: dict[str, str] = {}
    for col in columns:
        name = col.strip()
        for prefix in PREFIXES:
            if name.lower().startswith(prefix):
                name = name[len(prefix) :]
                break
        by_norm.setdefault(_norm(name), col)
    found = {f: by_norm[_norm(f)] for f in findings if _norm(f) in by_norm}
    if not found:
        raise UserError(
            f"{where} has no column for any of the findings "
            f"{', '.join(findings)}; columns: {', '.join(columns)}"
        )
    return found


@dataclass
class Matched:
    """Predictions and labels aligned row by row."""

    keys: np.ndarray  # (n,)
    findings: list[str]
    y_true: np.ndarray  # (n, C)
    y_score: np.ndarray  # (n, C)
    labels: pd.DataFrame  # the label rows, aligned (patient_id, metadata, split)
    missing: dict[str, Any] = field(default_factory=dict)


def first_column(columns: list[str], names: Sequence[str]) -> str | None:
    """The column of ``columns`` named like the first of ``names`` that has one (case and
    surrounding spaces ignored), else None."""
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def image_column(columns: list[str], path: Path) -> str:
    """The image column of CSV ``path`` (:data:`KEY_COLUMNS`); a UserError without one."""
    found = first_column(columns, KEY_COLUMNS)
    if found is None:
        raise UserError(f"{path} has no image column; expected one of {', '.join(KEY_COLUMNS)}")
    return found


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions CSV with a ``key`` column added; clear errors for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file {path} does not exist")
    table = pd.read_csv(path)
    key_col = image_column(list(table.columns), path)
    status = first_column(list(table.columns), ("status",))
    if status is not None:  # cxrkit infer output: skip the rows of unreadable files
        table = table[table[status].astype(str) == "ok"]
    table = table.assign(key=table[key_col].astype(str).map(normalise_key))
    if table["key"].duplicated().any():
        raise UserError(
            f"{path}: image {table.loc[table['key'].duplicated(), key_col].iloc[0]!r} has two "
            "rows; if they are different images with one file name, give their paths relative "
            "to the dataset root (image identity is the path)"
        )
    return table


def match(
    predictions: pd.DataFrame,
    labels: LabelSource,
    *,
    where: str,
    findings: list[str] | None = None,
    within: LabelSource | None = None,
) -> Matched:
    """Align predictions with the rows of ``labels`` by image (:func:`match_keys`); count the
    images only one side has.

    ``within``: all the labelled images (every split) when ``labels`` is one split of them:
    keys are matched against all of them, so that a prediction for an image of another split
    is neither counted as unlabelled nor matched to a look-alike of this split."""
    universe = within if within is not None else labels
    wanted = findings or labels.findings
    columns = match_columns([c for c in predictions.columns if c != "key"], wanted, where=where)
    names = [f for f in wanted if f in columns]
    ids = universe.table["key"].to_numpy()
    found = match_keys(
        predictions["key"].tolist(), ids.tolist(), where=where, labels_where=universe.origin
    )
    pred_only = sorted(predictions["key"].to_numpy()[found < 0].tolist())
    rows = predictions[found >= 0].assign(key=ids[found[found >= 0]])
    joined = labels.table.merge(
        rows[["key", *columns.values()]], on="key", how="inner", suffixes=("", "__pred")
    )
    label_only = len(labels.table) - len(joined)
    if joined.empty:
        raise UserError(
            f"no image of {where} is in the labels ({labels.origin}); e.g. {pred_only[:3]}"
        )
    score_cols = [columns[f] + ("__pred" if columns[f] in labels.table else "") for f in names]
    y_score = probabilities(joined, score_cols, names, columns, where)
    return Matched(
        keys=joined["key"].to_numpy(),
        findings=names,
        y_true=joined[names].to_numpy(np.float64),
        y_score=y_score,
        labels=joined,
        missing={
            "in_predictions_only": len(pred_only),
            "in_labels_only": int(label_only),
            "examples": pred_only[:5],
            "not_evaluated_findings": [f for f in wanted if f not in columns],
        },
    )


def probabilities(
    joined: pd.DataFrame,
    score_cols: list[str],
    names: list[str],
    columns: dict[str, str],
    where: str,
) -> np.ndarray:
    """``(n, C)`` float64 scores from ``joined``'s ``score_cols``: a UserError naming the
    column and the image for an empty, non-numeric or out-of-[0, 1] value."""
    out = np.empty((len(joined), len(score_cols)))
    for j, (col, name) in enumerate(zip(score_cols, names, strict=True)):
        values = pd.to_numeric(joined[col], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            found = joined[col].iloc[i]
            shown = repr(found) if isinstance(found, str) else f"{float(found):g}"
            raise UserError(
                f"{where}: column {columns[name]!r} must hold probabilities in [0, 1]; "
                f"{int(bad.sum())} value(s) are not, e.g. {shown} for image "
                f"{joined['image_id'].iloc[i]!r} (apply a sigmoid to logits first)"
            )
        out[:, j] = values
    return out


def split_rows(source: LabelSource, split: str | None) -> LabelSource:
    """The rows of ``split`` when the labels have splits (a manifest); all rows otherwise,
    with a note saying so. An unknown split is a UserError naming the ones there are."""
    if split is None:
        return source
    if "split" not in source.table:
        note = (
            f"{Path(source.origin).name} has no splits: every labelled image with a prediction "
            f"was evaluated (--split {split} does not apply)"
        )
        return LabelSource(source.table, source.findings, source.origin, [*source.notes, note])
    present = sorted(set(source.table["split"]))
    if split not in present:
        raise UserError(f"--split {split!r}: {source.origin} has the splits {', '.join(present)}")
    rows = source.table[source.table["split"] == split]
    return LabelSource(rows, source.findings, source.origin, list(source.notes))
