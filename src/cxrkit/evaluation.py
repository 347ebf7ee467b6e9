"""``cxrkit eval``: a checkpoint + a prepared dataset -> metrics.json, predictions, thresholds.

Thresholds are tuned on the **validation** split (max F1 or Youden's J), applied unchanged to
the evaluated split, and written back into the checkpoint's model card so ``infer`` and
``serve`` call findings at the same operating points.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.checkpoint import update_card
from cxrkit.errors import UserError
from cxrkit.inference import Predictor
from cxrkit.manifest import load_manifest
from cxrkit.metrics import summarize
from cxrkit.thresholds import tune_thresholds


@dataclass
class EvalResult:
    """The metrics dict written to ``metrics.json`` and where the files went."""

    metrics: dict[str, Any]
    metrics_file: Path
    predictions_file: Path


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    threshold_method: str = "f1",
    specificity: float = 0.8,
    write_thresholds: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Predict ``split`` of the prepared folder ``data``, tune thresholds on ``val``, evaluate.

    Writes ``out/metrics.json`` and ``out/predictions_<split>.csv`` (image id, patient id,
    labels and probabilities) and, with ``write_thresholds``, the tuned thresholds into the
    checkpoint's card.
    """
    if split == "val":
        raise UserError(
            "thresholds are tuned on the val split; evaluate on another split "
            "(--split test or train)"
        )
    predictor = Predictor.from_checkpoint(checkpoint)
    manifest = load_manifest(data)
    findings = predictor.findings
    missing = [f for f in findings if f not in manifest.findings]
    if missing:
        raise UserError(f"{data} has no labels for {', '.join(missing)}, which the model predicts")
    val_rows, rows = manifest.rows("val"), manifest.rows(split)
    val_probs = predictor.predict_manifest(manifest, val_rows, progress=progress)
    probs = predictor.predict_manifest(manifest, rows, progress=progress)
    val_y, y = manifest.labels(val_rows, findings), manifest.labels(rows, findings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thresholds = tune_thresholds(val_y, val_probs, method=threshold_method, classes=findings)
        val_summary = summarize(
            val_y, val_probs, classes=findings, thresholds=thresholds, specificity=specificity
        )
        metrics = summarize(
            y, probs, classes=findings, thresholds=thresholds, specificity=specificity
        )
    metrics["split"] = split
    metrics["threshold_method"] = threshold_method
    metrics["checkpoint"] = str(Path(checkpoint).resolve())
    metrics["data"] = str(Path(data).resolve())
    metrics["warnings"] = sorted({str(w.message) for w in caught})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.json"
    metrics_file.write_text(json.dumps(metrics, indent=2))
    table = pd.DataFrame(
        {"image_id": rows["image_id"].to_numpy(), "patient_id": rows["patient_id"].to_numpy()}
    )
    for j, f in enumerate(findings):
        table[f"label_{f}"] = y[:, j]
        table[f"prob_{f}"] = probs[:, j]
    predictions_file = out / f"predictions_{split}.csv"
    table.to_csv(predictions_file, index=False)
    if write_thresholds:
        update_card(
            checkpoint,
            thresholds={
                "values": {f: float(t) for f, t in zip(findings, thresholds, strict=True)},
                "method": threshold_method,
                "split": "val",
                "n_val_images": len(val_rows),
                "val_metrics": {
                    f: {
                        k: val_summary["per_class"][f][k]
                        for k in ("sensitivity", "specificity", "auroc")
                    }
                    for f in findings
                },
            },
        )
    return EvalResult(metrics=metrics, metrics_file=metrics_file, predictions_file=predictions_file)


def format_table(metrics: dict[str, Any]) -> str:
    """The per-class results table printed by ``eval`` and ``demo``."""
    key = next(
        (k for k in next(iter(metrics["per_class"].values())) if k.startswith("sens_at_spec")),
        "sens_at_spec_0.8",
    )
    spec = key.rsplit("_", 1)[-1]
    lines = [f"{'Class':<20} {'AUROC':>7} {'AP':>7} {'Thr':>6} {'Sen@Spec(' + spec + ')':>16}"]
    lines.append("-" * len(lines[0]))

    def fmt(v: float | None, width: int, digits: int = 3) -> str:
        return f"{v:>{width}.{digits}f}" if v is not None else f"{'n/a':>{width}}"

    for name in metrics["classes"]:
        m = metrics["per_class"][name]
        lines.append(
            f"{name:<20} {fmt(m['auroc'], 7)} {fmt(m['ap'], 7)} "
            f"{fmt(m['threshold'], 6, 2)} {fmt(m[key], 16)}"
        )
    lines.append("-" * len(lines[0]))
    macro, micro = metrics["macro"], metrics["micro"]
    lines.append(f"{'macro':<20} {fmt(macro['auroc'], 7)} {fmt(macro['ap'], 7)}")
    lines.append(f"{'micro':<20} {fmt(micro['auroc'], 7)} {fmt(micro['ap'], 7)}")
    return "\n".join(lines)


def probabilities_ok(probs: np.ndarray) -> bool:
    """True when predictions vary across images (a constant output means a broken model/input)."""
    return bool(probs.size) and bool(np.any(np.ptp(probs, axis=0) > 1e-6))
