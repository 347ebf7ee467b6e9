"""The embedding folder: each image's frozen embedding, written once, read by many probes.

``cxrkit embed`` (:mod:`cxrkit.deploy.embed`) writes it; a probe run (``cxrkit train --config
probe``, :mod:`cxrkit.train.probe`) reads it. This module is the store alone (numpy, no
model), so both sides share one definition of the layout::

    EMB/embeddings.f16        raw (N, D) float16 memmap, row i = rows.csv row i
    EMB/embeddings.state      (N,) uint8: 0 = to do, 1 = written (an interrupted run resumes)
    EMB/rows.csv              image_id, patient_id, split, cache_index of the N rows
    EMB/embeddings.json       the record: what made the embeddings (model and its sha256 or
                              backbone, input size, normalisation, precision), the manifest
                              they came from and its fingerprint, N, D, complete or not
    EMB/encoder.safetensors   the encoder (with the head it had), so a probe becomes a full
    EMB/encoder_card.json     model even when the source checkpoint is gone; its sha256 here

``settings`` in the record are what must agree for a run to resume a folder (:func:`start`):
another model, other data, other splits or another precision is another folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.data.manifest import CSV_NAME, Manifest
from cxrkit.errors import UserError
from cxrkit.files import MARKER, claim_folder, folder_kind, write_json

FORMAT = "cxrkit-embeddings/1"
KIND = "embeddings"  # the kind in the folder's cxrkit.files.MARKER
ARRAY, STATE, ROWS, RECORD = "embeddings.f16", "embeddings.state", "rows.csv", "embeddings.json"
ENCODER, ENCODER_CARD = "encoder.safetensors", "encoder_card.json"
ROW_COLUMNS = ("image_id", "patient_id", "split", "cache_index")
TODO, DONE = 0, 1


def manifest_fingerprint(manifest: Manifest) -> str:
    """sha256 of a prepared folder's ``manifest.csv`` bytes and its header: any change to
    images, labels, splits or the cache description changes it."""
    digest = hashlib.sha256((manifest.folder / CSV_NAME).read_bytes())
    digest.update(json.dumps(manifest.header, sort_keys=True).encode())
    return digest.hexdigest()


def is_embedding_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is an embedding folder (its marker, or its record)."""
    folder = Path(folder)
    return folder.is_dir() and (folder_kind(folder) == KIND or (folder / RECORD).is_file())


@dataclass
class Embeddings:
    """An embedding folder opened for reading: ``array`` ``(N, D)`` float16 (read-only
    memmap), ``rows`` (one per array row) and the ``record``."""

    folder: Path
    array: np.ndarray
    rows: pd.DataFrame
    record: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.record["dim"])

    def split(self, name: str) -> np.ndarray:
        """Positions ``(n,)`` of the rows of split ``name`` (in row order)."""
        return np.flatnonzero(self.rows["split"].to_numpy() == name)


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record of ``folder``; None when there is none yet (or it is unreadable)."""
    try:
        value = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and value.get("format") == FORMAT else None


def open_embeddings(folder: str | Path) -> Embeddings:
    """Open a complete embedding folder; one-line errors for anything else."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        raise UserError(
            f"{folder} is a prepared folder, not an embedding folder: make one with `cxrkit "
            f"embed --backbone NAME|--checkpoint CKPT --data {folder} --out EMB`, then --data EMB"
        )
    record = read_record(folder)
    if record is None:
        raise UserError(
            f"{folder} is not an embedding folder (no {RECORD} of format {FORMAT}); "
            "make one with `cxrkit embed`"
        )
    if not record.get("complete"):
        raise UserError(
            f"{folder} is incomplete (an interrupted `cxrkit embed`); run the same command "
            "again to finish it"
        )
    n, dim = int(record["n"]), int(record["dim"])
    array = np.memmap(folder / ARRAY, dtype=np.float16, mode="r", shape=(max(n, 1), dim))[:n]
    rows = pd.read_csv(folder / ROWS, dtype={"image_id": str, "patient_id": str, "split": str})
    if len(rows) != n:
        raise UserError(f"{folder / ROWS} has {len(rows)} rows, {RECORD} says {n}")
    return Embeddings(folder, array, rows, record)


@dataclass
class Writer:
    """An embedding folder being written: ``array`` and ``state`` open read-write; ``todo``
    the row positions still to embed (all of them for a new folder)."""

    folder: Path
    array: np.memmap
    state: np.memmap
    record: dict[str, Any]
    todo: np.ndarray

    def write(self, positions: np.ndarray, values: np.ndarray) -> None:
        """Store ``values`` ``(k, D)`` at row ``positions`` ``(k,)``, flushed, then mark them
        written (so a kill between the two redoes these rows, never skips them)."""
        self.array[positions] = values.astype(np.float16)
        self.array.flush()
        self.state[positions] = DONE
        self.state.flush()

    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Mark the folder complete (the record last); returns the record."""
        if not bool(np.all(self.state[: int(self.record["n"])] == DONE)):
            raise UserError(f"{self.folder}: rows left unwritten; run the command again")
        self.record.update(extra, complete=True)
        write_json(self.folder / RECORD, self.record)
        return self.record


def start(
    out: str | Path,
    settings: dict[str, Any],
    rows: pd.DataFrame,
    record: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Writer | None:
    """Open ``out`` to write ``len(rows)`` embeddings of ``record["dim"]`` values.

    A folder made with the same ``settings`` resumes (None when it is already complete); one
    made with other settings is refused unless ``overwrite`` (then it is made anew), and a
    non-empty folder cxrkit did not make as an embedding folder is never touched."""
    out = Path(out)
    old = read_record(out) if out.is_dir() else None
    if old is not None and old.get("settings") == settings and not overwrite:
        if old.get("complete"):
            return None
        return _open(out, old)
    if old is not None and not overwrite:
        differ = [k for k in settings if settings[k] != (old.get("settings") or {}).get(k)]
        raise UserError(
            f"{out} holds embeddings made with other {', '.join(differ) or 'settings'}; "
            "pass --overwrite to replace them, or choose another --out"
        )
    if old is None and out.is_dir() and (out / MARKER).is_file() and folder_kind(out) == KIND:
        overwrite = True  # our own folder, killed before its record: start it over
    claim_folder(out, KIND, overwrite=overwrite)
    n, dim = len(rows), int(record["dim"])
    np.memmap(out / ARRAY, dtype=np.float16, mode="w+", shape=(max(n, 1), dim)).flush()
    np.memmap(out / STATE, dtype=np.uint8, mode="w+", shape=(max(n, 1),)).flush()
    rows.loc[:, list(ROW_COLUMNS)].to_csv(out / ROWS, index=False)
    full = {"format": FORMAT, **record, "n": n, "settings": settings, "complete": False}
    write_json(out / RECORD, full)
    return _open(out, full)


def _open(out: Path, record: dict[str, Any]) -> Writer:
    n, dim = int(record["n"]), int(record["dim"])
    array = np.memmap(out / ARRAY, dtype=np.float16, mode="r+", shape=(max(n, 1), dim))
    state = np.memmap(out / STATE, dtype=np.uint8, mode="r+", shape=(max(n, 1),))
    todo = np.flatnonzero(np.asarray(state[:n]) != DONE)
    return Writer(out, array, state, record, todo)
