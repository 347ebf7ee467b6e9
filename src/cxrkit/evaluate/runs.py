"""``cxrkit eval``: run an evaluation end to end and write its files (``compare``:
:mod:`cxrkit.evaluate.compare`).

Outputs in ``OUT/``: ``metrics.json`` (see :mod:`cxrkit.evaluate.results`), ``per_class.csv``,
``report.html`` (self-contained), for a checkpoint ``predictions_<split>.csv`` and, with
``--audit``, ``audit.csv`` (the shortcut audit, :mod:`cxrkit.evaluate.audit`, also in
``metrics.json["audit"]``).
Thresholds and calibration are fitted on the **validation** split only; with a checkpoint
they are written into its model card so ``infer`` and ``serve`` use the same operating points.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.data.manifest import load_manifest
from cxrkit.data.storage import is_uri
from cxrkit.errors import UserError, did_you_mean
from cxrkit.evaluate.audit import check_columns, shortcut_audit
from cxrkit.evaluate.audit_output import audit_table
from cxrkit.evaluate.calibration import Calibrator, compare_methods, fit_calibrator
from cxrkit.evaluate.card import card_decision, tuning_origin
from cxrkit.evaluate.predictions import load_labels, match, read_predictions, split_rows
from cxrkit.evaluate.results import evaluate, per_class_table, subgroups
from cxrkit.evaluate.thresholds import FALLBACK_THRESHOLD, check_method, tune_thresholds
from cxrkit.files import claim_folder, write_json

if TYPE_CHECKING:
    from cxrkit.deploy.ranks import Launch

CALIBRATIONS = ("none", "auto", "temperature", "platt", "isotonic")


@dataclass
class EvalOptions:
    """Everything ``eval`` can be told besides its inputs."""

    split: str = "test"
    threshold_method: str = "f1"
    calibration: str = "temperature"
    specificities: tuple[float, ...] = (0.8, 0.9, 0.95)
    sensitivities: tuple[float, ...] = (0.8, 0.9)
    n_boot: int = 1000
    seed: int = 0
    by: tuple[str, ...] = ()
    report: bool = True
    audit: bool = False  #: the shortcut audit (metrics["audit"], audit.csv)
    audit_columns: tuple[str, ...] | None = None  #: None: view, sex, age_band, site if present
    audit_folds: int = 5  #: cross-validation folds of the audit's regressions, by patient


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    out: Path

    @property
    def metrics_file(self) -> Path:
        return self.out / "metrics.json"


def _check(options: EvalOptions) -> None:
    targets = {"specificities": options.specificities, "sensitivities": options.sensitivities}
    for name, rates in targets.items():
        if not rates or any(not 0 < r <= 1 for r in rates):
            raise UserError(
                f"--{name} must be one or more rates in (0, 1], e.g. 0.8,0.9; got "
                f"{','.join(map(str, rates)) or 'nothing'}"
            )
    if options.n_boot < 0:
        raise UserError(
            f"--bootstrap must be 0 (no intervals) or a count >= 1, got {options.n_boot}"
        )
    if options.split == "val":
        raise UserError(
            "thresholds and calibration are fitted on the val split; evaluate "
            "another split (--split test), never tune on what you report"
        )
    if options.audit and options.audit_folds < 2:
        raise UserError(f"--audit-folds must be 2 or more, got {options.audit_folds}")
    check_method(options.threshold_method)
    if options.calibration not in CALIBRATIONS:
        raise did_you_mean(options.calibration, CALIBRATIONS, what="calibration")


def fit_operating_points(
    y_val: np.ndarray,
    p_val: np.ndarray,
    classes: list[str],
    options: EvalOptions,
    groups: np.ndarray | None = None,
) -> tuple[Calibrator | None, np.ndarray, dict[str, Any]]:
    """Calibration (optional) then thresholds, both on the validation split; ``groups``
    (patient ids) keep each patient in one fold when ``auto`` compares methods."""
    method = options.calibration
    info: dict[str, Any] = {"split": "val", "n_images": len(y_val)}
    if method == "auto":
        scores = compare_methods(y_val, p_val, classes=classes, groups=groups)["methods"]
        method = min(scores, key=lambda m: scores[m]["macro"]["nll"] or np.inf)
        info["compared"] = {m: scores[m]["macro"] for m in scores}
        method = "none" if method == "uncalibrated" else method
    calibrator = (
        None if method == "none" else fit_calibrator(y_val, p_val, method=method, classes=classes)
    )
    p_cal = calibrator.apply(p_val) if calibrator else p_val
    thresholds = tune_thresholds(y_val, p_cal, method=options.threshold_method, classes=classes)
    info["method"] = method
    return calibrator, thresholds, info


def _finish(
    metrics: dict[str, Any],
    out: Path,
    y_true: np.ndarray,
    y_score: np.ndarray,
    raw: np.ndarray | None,
    options: EvalOptions,
) -> EvalResult:
    claim_folder(out, "evaluation", resume=True)  # its files are replaced, no one else's
    metrics["versions"] = {
        "cxrkit": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }
    write_json(out / "metrics.json", metrics)
    per_class_table(metrics).to_csv(out / "per_class.csv", index=False)
    if metrics.get("audit"):
        audit_table(metrics["audit"]).to_csv(out / "audit.csv", index=False)
    if options.report:
        from cxrkit.evaluate.report import write_report

        write_report(out / "report.html", metrics, y_true, y_score, uncalibrated=raw)
    return EvalResult(metrics=metrics, out=out)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    options: EvalOptions | None = None,
    write_card: bool | None = None,
    progress: bool = True,
    device: str = "cpu",
    precision: str = "auto",
    devices: int = 1,
    launch: Launch | None = None,
) -> EvalResult | None:
    """Predict the val and ``options.split`` rows of a prepared folder and evaluate, on
    ``device`` at ``precision`` (as ``--device`` / ``--precision``: :mod:`cxrkit.models.devices`;
    recorded as ``metrics["runtime"]``, ``{"device", "precision", "backend", "processes"}``).

    ``devices > 1``: the rows are predicted in that many spawned processes
    (:func:`cxrkit.deploy.sharded_rows.predict_rows`); ``launch``: by the ranks torchrun /
    srun started, this one among them; the metrics are computed once over the whole set, by
    this process or rank 0 (the other ranks return None).

    The thresholds and calibration fitted on val go into the checkpoint's card with where
    they came from (:func:`card_decision`): ``write_card`` None writes them only when they
    were tuned on the data the model was trained on or replace ones tuned on this same data;
    True always (``--write-card``); False never (``--no-write-card``)."""
    options = options or EvalOptions()
    _check(options)
    if write_card and Path(checkpoint).is_dir():
        raise UserError(
            f"{checkpoint} is an exported bundle, whose card is fixed at export; pass "
            "--no-write-card, or evaluate the checkpoint and export it again"
        )
    # Imported here: evaluating predictions (the rest of this module) needs no torch.
    from cxrkit.deploy.predictor import Predictor
    from cxrkit.deploy.sharded_rows import predict_rows
    from cxrkit.models.checkpoint import update_card

    here = launch.place(device) if launch is not None else device  # checked on every rank
    predictor = Predictor.from_checkpoint(checkpoint, device=here, precision=precision)
    manifest = load_manifest(data)
    classes = predictor.findings
    missing = [f for f in classes if f not in manifest.findings]
    if missing:
        raise UserError(f"{data} has no labels for {', '.join(missing)}, which the model predicts")
    if options.audit and options.audit_columns:
        check_columns(manifest.table, manifest.findings, options.audit_columns)
    val_rows, rows = manifest.rows("val"), manifest.rows(options.split)
    # One pass over val and the split; the audit's probe needs the split's embeddings.
    predicted = predict_rows(
        predictor,
        manifest,
        pd.concat([val_rows, rows]),
        features=options.audit,
        progress=progress,
        devices=devices,
        launch=launch,
        checkpoint=checkpoint,
        data=data,
        device=device,
        predictor_options={"precision": precision},
    )
    if predicted is None:
        return None  # a rank other than 0: rank 0 evaluates
    p_val, raw = predicted[0][: len(val_rows)], predicted[0][len(val_rows) :]
    embeddings = None if predicted[1] is None else predicted[1][len(val_rows) :]
    y_val, y = manifest.labels(val_rows, classes), manifest.labels(rows, classes)
    patients = val_rows["patient_id"].astype(str).to_numpy()
    calibrator, thresholds, info = fit_operating_points(y_val, p_val, classes, options, patients)
    probs = calibrator.apply(raw) if calibrator else raw
    metrics = _metrics(
        y, probs, raw if calibrator else None, rows, classes, thresholds, options, embeddings
    )
    metrics["thresholds"] = {
        "method": options.threshold_method,
        "split": "val",
        "values": dict(zip(classes, map(float, thresholds), strict=True)),
    }
    metrics["calibration"] = {**info, "parameters": calibrator.to_dict() if calibrator else None}
    metrics["source"] = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "data": str(data) if is_uri(data) else str(Path(data).resolve()),
    }
    metrics["runtime"] = {
        **predictor.runtime_record(),
        "processes": launch.world if launch is not None else devices,
    }
    origin = tuning_origin(manifest)
    write, reason = card_decision(predictor.card, origin, write_card, Path(checkpoint).is_dir())
    metrics["card"] = {"written": write, "reason": reason}
    out = Path(out)
    result = _finish(metrics, out, y, probs, raw if calibrator else None, options)
    table = pd.DataFrame(
        {"image_id": rows["image_id"].to_numpy(), "patient_id": rows["patient_id"].to_numpy()}
    )
    for j, f in enumerate(classes):
        table[f"label_{f}"] = y[:, j]
        table[f"prob_{f}"] = probs[:, j]
    table.to_csv(out / f"predictions_{options.split}.csv", index=False)
    if write:
        from cxrkit.models.gate import reference_distribution

        # A gate's drift reference holds the probabilities the model reports: calibrated now.
        probs_val = calibrator.apply(p_val) if calibrator else p_val
        reference = predictor.card.get("reference") and reference_distribution(
            probs_val, classes, "val"
        )
        update_card(
            checkpoint,
            **({"reference": reference} if reference else {}),
            thresholds={**metrics["thresholds"], "n_val_images": len(val_rows), **origin},
            calibration=calibrator.to_dict() if calibrator else None,
            test_metrics={
                "split": options.split,
                "macro": metrics["macro"],
                "n_images": metrics["n_images"],
            },
        )
    return result


def _metrics(
    y: np.ndarray,
    probs: np.ndarray,
    raw: np.ndarray | None,
    rows: pd.DataFrame,
    classes: list[str],
    thresholds: np.ndarray,
    options: EvalOptions,
    embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
    groups = rows["patient_id"].astype(str).to_numpy() if "patient_id" in rows else None
    metrics = evaluate(
        y,
        probs,
        classes=classes,
        thresholds=thresholds,
        groups=groups,
        n_boot=options.n_boot,
        seed=options.seed,
        specificities=options.specificities,
        sensitivities=options.sensitivities,
        raw_score=raw,
    )
    metrics["split"] = options.split
    metrics["subgroups"] = (
        subgroups(
            rows,
            y,
            probs if raw is None else raw,
            classes=classes,
            by=options.by,
            groups=groups,
            n_boot=options.n_boot,
            seed=options.seed,
        )
        if options.by
        else None
    )
    metrics["audit"] = (
        shortcut_audit(
            rows,
            y,
            probs if raw is None else raw,
            classes=classes,
            groups=groups,
            columns=options.audit_columns,
            embeddings=embeddings,
            n_folds=options.audit_folds,
            n_boot=options.n_boot,
            seed=options.seed,
        )
        if options.audit
        else None
    )
    return metrics


def evaluate_predictions(
    predictions: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    patient_col: str | None = None,
    options: EvalOptions | None = None,
) -> EvalResult:
    """Evaluate another tool's predictions CSV against a manifest, a dataset's label file or
    a plain labels CSV (``patient_col``: its patient column; see :func:`load_labels`).

    With a manifest whose val images are also predicted, thresholds (and calibration) are
    tuned there; otherwise thresholds are fixed at 0.5 and calibration is off (a warning says
    so). Images in only one of the two files are counted in ``metrics["missing"]``."""
    options = options or EvalOptions()
    _check(options)
    source = load_labels(labels, dataset=dataset, patient_col=patient_col)
    if options.audit and options.audit_columns:
        check_columns(source.table, source.findings, options.audit_columns)
    table = read_predictions(predictions)
    target = split_rows(source, options.split)
    matched = match(table, target, where=str(predictions), within=source)
    classes = matched.findings
    notes = list(target.notes)
    val = split_rows(source, "val") if "split" in source.table else None
    val_matched = None
    if val is not None and len(val.table):
        try:
            val_matched = match(table, val, where=str(predictions), findings=classes, within=source)
        except UserError:
            val_matched = None
    if val_matched is not None:
        calibrator, thresholds, info = fit_operating_points(
            val_matched.y_true,
            val_matched.y_score,
            classes,
            options,
            val_matched.labels["patient_id"].astype(str).to_numpy(),
        )
    else:
        calibrator, thresholds = None, np.full(len(classes), FALLBACK_THRESHOLD)
        info = {"method": "none", "split": None}
        notes.append(
            f"no validation predictions to tune on: thresholds fixed at "
            f"{FALLBACK_THRESHOLD}, no calibration"
        )
    raw = matched.y_score
    probs = calibrator.apply(raw) if calibrator else raw
    metrics = _metrics(
        matched.y_true,
        probs,
        raw if calibrator else None,
        matched.labels,
        classes,
        thresholds,
        options,
    )
    metrics["warnings"] = sorted(set(metrics["warnings"]) | set(notes))
    metrics["notes"] = notes  # what the reader must know about these labels (also in warnings)
    metrics["missing"] = matched.missing
    metrics["thresholds"] = {
        "method": options.threshold_method if val_matched else "fixed",
        "split": "val" if val_matched else None,
        "values": dict(zip(classes, map(float, thresholds), strict=True)),
    }
    metrics["calibration"] = {**info, "parameters": calibrator.to_dict() if calibrator else None}
    metrics["source"] = {
        "predictions": str(Path(predictions).resolve()),
        "labels": str(Path(labels).resolve()),
    }
    return _finish(metrics, Path(out), matched.y_true, probs, raw if calibrator else None, options)
