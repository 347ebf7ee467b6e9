"""Fitting the input gate of a checkpoint (``cxrkit gate``, and the end of ``cxrkit train``).

:func:`fit_gate` computes the penultimate features of a prepared folder's training rows (a
seeded sample of at most ``max_train``) and validation rows through the
:class:`~cxrkit.deploy.predictor.Predictor` (PyTorch, fp32), fits
:class:`cxrkit.models.gate.FeatureGate` (threshold on held-out training scores, folds by
patient, and validation scores) and writes two keys into the checkpoint's card with
:func:`cxrkit.models.checkpoint.update_card`:

* ``gate``: :meth:`FeatureGate.to_dict` plus ``data`` (the prepared folders) and ``seed``;
* ``reference``: each finding's validation probability distribution
  (:func:`cxrkit.models.gate.reference_distribution`; calibrated when the card has a
  calibration at the time of fitting), for drift monitoring.

A bundle's card is fixed at export (its files are checked against their sha256), so a bundle
folder is refused: fit the checkpoint, then export it again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.data.manifest import load_manifest
from cxrkit.data.storage import as_location, is_uri
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.models.checkpoint import load_checkpoint, read_checkpoint, update_card
from cxrkit.models.gate import (
    DEFAULT_FALSE_ALARM_RATE,
    FeatureGate,
    check_false_alarm_rate,
    reference_distribution,
)
from cxrkit.models.gate_threshold import (
    conformal_threshold,
    min_validation_images,
    threshold_summary,
)


@dataclass
class GateFit:
    """What :func:`fit_gate` wrote: the card's ``gate`` and ``reference``, and its time."""

    checkpoint: Path
    gate: dict[str, Any]
    reference: dict[str, Any]
    seconds: float

    def describe(self) -> str:
        """One line: the threshold, what it was set on and the shares measured there."""
        return (
            f"input gate: threshold {threshold_summary(self.gate)}; fitted on "
            f"{self.gate['n_train']} training images in {self.seconds:.0f} s"
        )


SPLITS = ("train", "val")  # what the gate is fitted on and thresholded on


def training_folders(card: dict[str, Any]) -> list[str | Path]:
    """The prepared folders (or ``s3://`` locations) a checkpoint was trained on, as its card
    records them."""
    datasets = (card.get("training_data") or {}).get("datasets") or []
    return [as_location(d["prepared"]) for d in datasets if d.get("prepared")]


def fit_gate(
    checkpoint: str | Path,
    prepared_folder: str | Path | Sequence[str | Path],
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    max_train: int = 10000,
    seed: int = 0,
    progress: bool = True,
) -> GateFit:
    """Fit the input gate of checkpoint file ``checkpoint`` on ``prepared_folder`` (one
    prepared folder, or several: their rows together) and write it into the card."""
    start = time.perf_counter()
    rate = check_false_alarm_rate(false_alarm_rate)
    if max_train < 10:
        raise UserError(f"max_train must be at least 10, got {max_train}")
    path = Path(checkpoint)
    if path.is_dir():
        raise UserError(
            f"{path} is an exported bundle, whose card is fixed at export; fit the gate on the "
            "checkpoint (`cxrkit gate --checkpoint CKPT --data PREP`) and export it again"
        )
    folders = (  # as_location: a URI stays one (Path would fold s3:// into s3:/)
        [as_location(prepared_folder)]
        if isinstance(prepared_folder, str | Path)
        else [as_location(p) for p in prepared_folder]
    )
    if not folders:
        raise UserError("the input gate needs a prepared folder (--data PREP)")
    manifests = [load_manifest(f) for f in folders]
    counts = {s: sum(int((m.table["split"] == s).sum()) for m in manifests) for s in SPLITS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise UserError(
            f"the input gate is fitted on training images and its threshold set with "
            f"validation images; {', '.join(map(str, folders))} has no "
            f"{' and no '.join(empty)} images"
        )
    if counts["val"] < min_validation_images(rate):  # before hours of features, not after
        conformal_threshold(np.zeros(counts["val"]), rate)  # raises, saying what to do
    predictor = Predictor(load_checkpoint(path), backend="torch", precision="fp32")
    total = counts["train"]
    train, patients, val, probs = [], [], [], []
    for k, manifest in enumerate(manifests):
        rows = manifest.rows("train")
        share = max(1, round(max_train * len(rows) / total))
        rows = rows.sample(share, random_state=seed) if len(rows) > share else rows
        train.append(predictor.embed_manifest(manifest, rows, progress=progress))
        patients.append(f"{k}:" + rows["patient_id"].astype(str).to_numpy(dtype=object))
        p, f = predictor.predict_embed_manifest(manifest, manifest.rows("val"), progress=progress)
        probs.append(p)
        val.append(f)
    gate = FeatureGate.fit(
        np.concatenate(train),
        np.concatenate(val),
        false_alarm_rate=rate,
        groups=np.concatenate(patients),  # held-out scores by patient, across folders too
    )
    entry = {
        **gate.to_dict(),
        "data": [str(f) if is_uri(f) else str(Path(f).resolve()) for f in folders],
        "train_sample": {"max_train": max_train, "seed": seed},
    }
    reference = reference_distribution(np.concatenate(probs), predictor.findings, "val")
    update_card(path, gate=entry, reference=reference)
    return GateFit(path, entry, reference, time.perf_counter() - start)


def fit_trained_gate(checkpoint: str | Path, *, progress: bool = False) -> GateFit:
    """:func:`fit_gate` on the prepared folders the checkpoint's card says it was trained on
    (what ``cxrkit train`` runs on its best checkpoint)."""
    folders = training_folders(read_checkpoint(checkpoint)["model_card"])
    if not folders:
        raise UserError(f"{checkpoint}'s card names no prepared folder; run `cxrkit gate`")
    return fit_gate(checkpoint, folders, progress=progress)
