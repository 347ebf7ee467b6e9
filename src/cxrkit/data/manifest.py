"""The manifest: the one file later stages need to know about a prepared dataset.

``PREP/manifest.csv`` has one row per image: ``image_id, path, patient_id, study_id, view,
sex, age, split, cache_index`` and one float column per finding (1 / 0 / empty = unknown).
``PREP/manifest.json`` is its header: source dataset and folder, findings, label policy, split
policy, seed and per-split patient hashes, cache file and size, counts and failures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.data.cache import open_cache
from cxrkit.data.datasets.base import BASE_COLUMNS
from cxrkit.data.splits import check_no_leakage
from cxrkit.errors import UserError
from cxrkit.files import write_json

FORMAT = "cxrkit-manifest/1"
CSV_NAME, HEADER_NAME = "manifest.csv", "manifest.json"


@dataclass
class Manifest:
    """A prepared dataset: ``table`` (one row per image) and its ``header``."""

    folder: Path
    table: pd.DataFrame
    header: dict[str, Any]

    @property
    def findings(self) -> list[str]:
        return list(self.header["findings"])

    def rows(self, split: str | None) -> pd.DataFrame:
        """The rows of one split (all rows when ``split`` is None)."""
        if split is None:
            return self.table
        if split not in set(self.table["split"]):
            raise UserError(
                f"split {split!r} is empty or unknown in {self.folder}; "
                f"splits: {', '.join(sorted(set(self.table['split'])))}"
            )
        return self.table[self.table["split"] == split]

    def labels(self, rows: pd.DataFrame, findings: list[str]) -> np.ndarray:
        """``(len(rows), len(findings))`` float32 labels, NaN = unknown."""
        return rows[findings].to_numpy(dtype=np.float32)

    def cache(self) -> np.memmap:
        """The ``(n_slots, size, size)`` uint8 image cache, read-only."""
        c = self.header["cache"]
        return open_cache(self.folder / c["file"], c["n"], c["size"])


def write_manifest(folder: Path, table: pd.DataFrame, header: dict[str, Any]) -> None:
    """Write ``manifest.csv`` and ``manifest.json`` (header last, so its presence = complete)."""
    check_no_leakage(table)
    table.to_csv(folder / CSV_NAME, index=False)
    write_json(folder / HEADER_NAME, {"format": FORMAT, **header})


def load_manifest(folder: str | Path) -> Manifest:
    """Load and validate a prepared folder; runs the leakage check every time."""
    folder = Path(folder)
    header_file, csv_file = folder / HEADER_NAME, folder / CSV_NAME
    if not header_file.is_file() or not csv_file.is_file():
        raise UserError(
            f"{folder} is not a prepared dataset: expected {HEADER_NAME} and {CSV_NAME} "
            "(made by `cxrkit prepare`)"
        )
    header = json.loads(header_file.read_text())
    if header.get("format") != FORMAT:
        raise UserError(
            f"{header_file}: unknown format {header.get('format')!r}, expected {FORMAT}"
        )
    dtypes = {
        c: str for c in ("image_id", "path", "patient_id", "study_id", "view", "sex", "split")
    }
    numeric = [*header["findings"], "age"]
    table = pd.read_csv(
        csv_file, dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in numeric}
    )
    expected = [*BASE_COLUMNS, "split", "cache_index", *header["findings"]]
    missing = [c for c in expected if c not in table.columns]
    if missing:
        raise UserError(f"{csv_file} lacks the column(s) {', '.join(missing)}")
    check_no_leakage(table)
    return Manifest(folder=folder, table=table, header=header)
