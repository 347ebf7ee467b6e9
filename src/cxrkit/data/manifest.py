"""The manifest: the one file later stages need to know about a prepared dataset.

``PREP/manifest.csv`` has one row per image: ``image_id, path, patient_id, study_id, view,
sex, age``, the dataset's text metadata columns (e.g. ``scanner``; empty = unknown), ``split,
cache_index`` and one float column per finding (1 / 0 / empty = unknown): see
:func:`manifest_columns`. ``PREP/manifest.json`` is its header: source dataset and folder,
findings, metadata columns, label policy, split policy, seed and per-split patient hashes,
cache description, counts and failures. A header without ``metadata`` (written before it
existed) has no metadata column.

The header's ``cache`` says where the images are and in which format: ``"format": "memmap"``
(or no ``format``, as manifests written before LitData shards existed) with a ``file`` relative
to the folder (:mod:`cxrkit.data.cache`), or ``"format": "litdata"`` with a ``location``
(:mod:`cxrkit.data.shards`), relative to the folder or URI the manifest was read from.
A prepared folder may be an object-store URI (``s3://``, ``gs://``): :func:`load_manifest`
downloads its two manifest files to a local folder (:mod:`cxrkit.data.storage`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.data.cache import open_cache
from cxrkit.data.datasets.base import BASE_COLUMNS
from cxrkit.data.shards import FORMAT as LITDATA
from cxrkit.data.shards import ShardReader
from cxrkit.data.splits import check_no_leakage
from cxrkit.data.storage import as_location, download, exists, is_uri, join, local_dir
from cxrkit.errors import UserError
from cxrkit.files import write_json

FORMAT = "cxrkit-manifest/1"
CSV_NAME, HEADER_NAME = "manifest.csv", "manifest.json"
MEMMAP = "memmap"
CACHE_FORMATS = (MEMMAP, LITDATA)


def manifest_columns(findings: Sequence[str], metadata: Sequence[str] = ()) -> list[str]:
    """The columns of ``manifest.csv`` in order: the base columns, the ``metadata`` columns,
    ``split``, ``cache_index``, the ``findings``; a UserError when a name repeats."""
    columns = [*BASE_COLUMNS, *metadata, "split", "cache_index", *findings]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise UserError(
            f"the manifest column(s) {', '.join(repeated)} would appear twice: a metadata "
            "column may not repeat a base column, split, cache_index or a finding"
        )
    return columns


def open_images(cache_format: str, location: str, n: int, size: int) -> np.ndarray | ShardReader:
    """The ``(n, size, size)`` uint8 images of a cache, read-only, indexable by slot arrays:
    the memmap ``location`` (``"memmap"``) or the LitData shards at ``location``
    (``"litdata"``, checked: a missing index or wrong count is a UserError here)."""
    if cache_format == MEMMAP:
        if is_uri(location):
            raise UserError(
                f"{location} is a memmap cache, which is read from a local disk only; copy the "
                "prepared folder to one, or prepare it with --format litdata"
            )
        return open_cache(location, n, size)
    if cache_format == LITDATA:
        return ShardReader(location, n, size).check()
    raise UserError(
        f"unknown image cache format {cache_format!r} (known: {', '.join(CACHE_FORMATS)}); "
        "it was prepared by a newer cxrkit: upgrade, or prepare it again"
    )


@dataclass
class Manifest:
    """A prepared dataset: ``table`` (one row per image) and its ``header``.

    ``folder`` holds the manifest files; ``location`` is the URI they were downloaded from
    (None for a local folder)."""

    folder: Path
    table: pd.DataFrame
    header: dict[str, Any]
    location: str | None = None

    @property
    def origin(self) -> str:
        """Where the prepared dataset is: its URI, or its folder as an absolute path."""
        return self.location or str(self.folder.resolve())

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

    def cache_entry(self) -> tuple[str, str, int, int]:
        """``(format, location, n_slots, size)`` of the image cache, its location resolved
        against the folder (or URI) the manifest came from."""
        c = self.header["cache"]
        cache_format = c.get("format", MEMMAP)
        name = c["location"] if cache_format == LITDATA else c["file"]
        return cache_format, join(self.location or self.folder, name), int(c["n"]), int(c["size"])

    def cache(self) -> np.ndarray | ShardReader:
        """The ``(n_slots, size, size)`` uint8 image cache, read-only (memmap or shards)."""
        return open_images(*self.cache_entry())


def write_manifest(folder: Path, table: pd.DataFrame, header: dict[str, Any]) -> None:
    """Write ``manifest.csv`` and ``manifest.json`` (header last, so its presence = complete)."""
    check_no_leakage(table)
    table.to_csv(folder / CSV_NAME, index=False)
    write_json(folder / HEADER_NAME, {"format": FORMAT, **header})


def load_manifest(folder: str | Path) -> Manifest:
    """Load and validate a prepared folder (or URI); runs the leakage check every time."""
    location = as_location(folder)
    if isinstance(location, str):
        uri = location
        if not exists(join(uri, HEADER_NAME)):
            raise UserError(
                f"{uri} is not a prepared dataset: no {HEADER_NAME} there (check the URI; "
                "`cxrkit prepare` writes it last, so an interrupted one leaves none: run it again)"
            )
        local = local_dir(uri, "manifests")
        for name in (HEADER_NAME, CSV_NAME):
            download(join(uri, name), local / name)
        return _load_local(local, location=uri)
    return _load_local(Path(folder))


def _load_local(folder: Path, location: str | None = None) -> Manifest:
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
    metadata = header.get("metadata", [])
    if not isinstance(metadata, list) or not all(isinstance(c, str) for c in metadata):
        raise UserError(
            f"{header_file}: 'metadata' must be a list of column names, not {metadata!r}"
        )
    expected = manifest_columns(header["findings"], metadata)
    text = ("image_id", "path", "patient_id", "study_id", "view", "sex", *metadata, "split")
    dtypes = {c: str for c in text}
    numeric = [*header["findings"], "age"]
    table = pd.read_csv(
        csv_file, dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in numeric}
    )
    missing = [c for c in expected if c not in table.columns]
    if missing:
        raise UserError(f"{csv_file} lacks the column(s) {', '.join(missing)}")
    check_no_leakage(table)
    return Manifest(folder=folder, table=table, header=header, location=location)
