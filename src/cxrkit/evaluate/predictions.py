"""Predictions from any tool, matched to labels from a manifest or a dataset's metadata.

A predictions CSV needs an image key column (``image_id``, ``Image Index``, ``path``,
``filename``, ``image`` or ``id``; a path is reduced to its file name) and one probability
column per finding. Finding columns are matched case-insensitively, ignoring ``_``/space
differences and a prefix such as ``prob_``, ``p_``, ``pred_`` or ``score_``.
Images present in one file and not the other are counted and reported, never silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import BASE_COLUMNS, get_dataset
from cxrkit.data.manifest import HEADER_NAME, load_manifest
from cxrkit.errors import UserError

KEY_COLUMNS = ("image_id", "image index", "path", "filename", "file", "image", "id", "dicom_id")
PREFIXES = ("prob_", "prob-", "p_", "pred_", "score_", "probability_")


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def image_key(values: pd.Series) -> pd.Series:
    """File name of each id or path (``a/b/00000001_000.png`` -> ``00000001_000.png``)."""
    return (
        values.astype(str)
        .str.strip()
        .str.replace("\\", "/", regex=False)
        .str.rsplit("/", n=1)
        .str[-1]
    )


@dataclass
class LabelSource:
    """Labels keyed by image: ``table`` has ``key, patient_id`` (+ metadata, ``split``) and
    one float column per finding (NaN = unknown)."""

    table: pd.DataFrame
    findings: list[str]
    origin: str


def load_labels(source: str | Path, *, dataset: str | None = None) -> LabelSource:
    """Labels from a prepared folder (``manifest.json``) or, with ``dataset``, from that
    dataset's own metadata file (e.g. ``--dataset nih --labels Data_Entry_2017.csv``)."""
    source = Path(source)
    if dataset is None:
        if not (source / HEADER_NAME).is_file():
            raise UserError(
                f"--labels {source} is not a prepared folder; give --dataset NAME "
                "to read a dataset's own label file"
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
    table["key"] = image_key(table["image_id"])
    if table["key"].duplicated().any():
        dup = table.loc[table["key"].duplicated(), "key"].iloc[0]
        raise UserError(f"{source}: image {dup!r} appears twice; image ids must be unique")
    return LabelSource(table=table, findings=list(findings), origin=str(source))


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


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions CSV with a ``key`` column added; clear errors for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file {path} does not exist")
    table = pd.read_csv(path)
    lower = {c.strip().lower(): c for c in table.columns}
    key_col = next((lower[k] for k in KEY_COLUMNS if k in lower), None)
    if key_col is None:
        raise UserError(f"{path} has no image column; expected one of {', '.join(KEY_COLUMNS)}")
    if "status" in lower:  # cxrkit infer output: skip the rows of unreadable files
        table = table[table[lower["status"]].astype(str) == "ok"]
    table = table.assign(key=image_key(table[key_col]))
    if table["key"].duplicated().any():
        raise UserError(
            f"{path}: image {table.loc[table['key'].duplicated(), 'key'].iloc[0]!r} has two rows"
        )
    return table


def match(
    predictions: pd.DataFrame,
    labels: LabelSource,
    *,
    where: str,
    findings: list[str] | None = None,
    known: set[str] | None = None,
) -> Matched:
    """Align predictions with labels on the image key; count the images only one side has.

    ``known``: every labelled key (all splits) when ``labels`` is one split of them, so that a
    prediction for an image of another split is not counted as unlabelled."""
    wanted = findings or labels.findings
    columns = match_columns([c for c in predictions.columns if c != "key"], wanted, where=where)
    names = [f for f in wanted if f in columns]
    joined = labels.table.merge(
        predictions[["key", *columns.values()]], on="key", how="inner", suffixes=("", "__pred")
    )
    pred_only = sorted(set(predictions["key"]) - (known or set(labels.table["key"])))
    label_only = len(labels.table) - len(joined)
    if joined.empty:
        raise UserError(
            f"no image of {where} is in the labels ({labels.origin}); e.g. {pred_only[:3]}"
        )
    score_cols = [columns[f] + ("__pred" if columns[f] in labels.table else "") for f in names]
    y_score = joined[score_cols].to_numpy(np.float64)
    if np.isnan(y_score).any():
        raise UserError(f"{where} has empty probabilities for some matched images")
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
        },
    )
