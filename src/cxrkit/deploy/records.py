"""What made an ``infer`` CSV: a record beside it, so ``--resume`` never mixes two models.

``preds.csv`` gets ``preds.csv.json``: the model (the sha256 of the checkpoint file, or of a
bundle's ``model_card.json``, which lists the sha256 of every file), its findings, and the
options that change the numbers (TTA, precision, backend, accepted DICOM modalities), and the
input gate (its threshold and false-alarm rate, or None) with whether flagged images were
refused; and the device it ran on (``"cpu"``, ``"cuda:0"``, ``"mps"``) and how JPEGs were
decoded (``"decode"``: ``"gpu-jpeg"`` in batches on the GPU, ``"cpu"`` by the CPU reader).
``infer --resume`` continues a CSV only when the record matches the run about to start, paths,
the device and the decode aside (the same weights at the same precision give the same numbers
on another machine, within autocast's rounding; GPU-decoded JPEGs differ from the CPU's by at
most one gray level); otherwise it refuses and names what differs. The record saved after a
resume holds the latest run's device and decode.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.files import write_json

FORMAT = "cxrkit-infer-record/1"
#: record entries that may differ between a run and its ``--resume``
NOT_COMPARED = ("model", "device", "decode")


def record_path(out_csv: Path) -> Path:
    """``preds.csv`` -> ``preds.csv.json``."""
    return out_csv.with_name(out_csv.name + ".json")


def model_sha256(predictor: Predictor) -> str | None:
    """sha256 of the checkpoint file, or of a bundle's card; None for an in-memory model."""
    return predictor.loaded.source_sha256


def infer_record(
    predictor: Predictor,
    modalities: Collection[str] | None,
    dicom_tags: Collection[str],
    refuse_ood: bool = False,
    gpu_decode: bool = False,
) -> dict[str, Any]:
    """Everything that decides an ``infer`` CSV's numbers and columns; ``gpu_decode``: JPEGs
    were decoded on the GPU (:mod:`cxrkit.deploy.jpeg_batch`, within a gray level of the CPU)."""
    source = predictor.loaded.source
    gate = predictor.gate
    return {
        "format": FORMAT,
        "model": str(source) if source is not None else None,
        "model_sha256": model_sha256(predictor),
        "findings": list(predictor.findings),
        "tta": predictor.tta,
        "precision": predictor.precision,
        "backend": predictor.backend_name,
        "device": str(predictor.device),
        "decode": "gpu-jpeg" if gpu_decode else "cpu",
        "modalities": None if modalities is None else sorted(modalities),
        "dicom_tags": list(dicom_tags),
        "input_gate": None
        if gate is None
        else {
            "method": gate.entry.get("method"),
            "threshold": gate.threshold,
            "false_alarm_rate": gate.false_alarm_rate,
        },
        "refuse_ood": refuse_ood,
    }


def check_resume(out_csv: Path, record: dict[str, Any]) -> None:
    """A UserError unless ``out_csv``'s record matches ``record`` (:data:`NOT_COMPARED` aside:
    the model's path, the device and the decode)."""
    path = record_path(out_csv)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(
            f"{out_csv} has no readable {path.name}, so it cannot be checked to come from the "
            "same model and options; write to a new --out"
        ) from None
    differ = [k for k in record if k not in NOT_COMPARED and saved.get(k) != record[k]]
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} then, {record[k]!r} now" for k in differ)
        raise UserError(
            f"--resume into {out_csv} would mix two runs ({shown}); resume with the same "
            "model and options, or write to a new --out"
        )


def save_record(out_csv: Path, record: dict[str, Any]) -> None:
    """Write ``record`` beside ``out_csv`` (atomically)."""
    write_json(record_path(out_csv), record)
