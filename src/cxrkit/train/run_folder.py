"""The run folder of ``cxrkit train``: created safely, what it records, read back on resume.

::

    RUN/config.yaml             the resolved config (recipe + --set overrides)
    RUN/run.json                status, environment (package versions, git commit), data and
                                split hashes, precision, one entry per training session
    RUN/epochs.csv              one row per epoch: losses, validation macro and per-class AUROC
    RUN/metrics.json            final metrics, written when training ends
    RUN/checkpoints/best.ckpt   best validation macro AUROC (carries the model card)
    RUN/checkpoints/last.ckpt   the latest epoch end or step checkpoint (resume point)
    RUN/logs/metrics.csv        Lightning's CSV log (per step)
    RUN/tensorboard/ or RUN/mlflow.db   TensorBoard events, or the local MLflow store
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from torch import nn

from cxrkit.data.manifest import Manifest
from cxrkit.errors import UserError, did_you_mean
from cxrkit.files import atomic_write_text, claim_folder, json_float
from cxrkit.train.config import TrainConfig, config_to_dict
from cxrkit.train.rules import LOGGERS


@dataclass
class FitResult:
    """Where a run put its checkpoints, and its best validation macro AUROC.

    ``resumed_from``: ``{"epoch", "step"}`` of the checkpoint this session started from;
    ``already_finished``: :func:`resume` found the run complete and trained nothing."""

    run: Path
    best: Path
    last: Path
    best_score: float
    epochs: int
    seconds: float
    resumed_from: dict[str, int] | None = None
    already_finished: bool = False


CONFIG, RUN_JSON, METRICS_JSON, EPOCHS_CSV = "config.yaml", "run.json", "metrics.json", "epochs.csv"
CHECKPOINTS, LAST, BEST = "checkpoints", "last.ckpt", "best.ckpt"
PACKAGES = ("cxrkit", "torch", "torchvision", "timm", "lightning", "numpy", "mlflow")


def describe_training_data(
    manifests: list[Manifest],
    combine: str,
    findings: list[str],
    train_labels: np.ndarray,
    n_val: int,
) -> dict[str, Any]:
    """run.json's and the card's ``training_data``: each prepared folder (its absolute path or
    URI, split policy and patients hash), how they were combined, the split sizes and the
    positives per finding of the ``(n_train, C)`` training labels."""
    pos = np.nansum(train_labels == 1, axis=0)
    return {
        "datasets": [
            {
                "dataset": m.header["dataset"],
                "prepared": m.origin,  # the folder's absolute path, or its URI
                "split_policy": m.header["split"]["policy"],
                "patients_sha256": m.header["split"]["patients_sha256"],
            }
            for m in manifests
        ],
        "combine": combine,
        "n_train": len(train_labels),
        "n_val": n_val,
        "train_positives": {f: int(p) for f, p in zip(findings, pos, strict=True)},
    }


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and write (then delete) a probe file in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to run folder {out}: {err.strerror}") from None


RUN_KIND = "run"  # the kind in its cxrkit.files.MARKER


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Create and mark ``out`` (:func:`cxrkit.files.claim_folder`: ``--overwrite`` replaces
    only a run folder cxrkit made); check writability."""
    check_writable(out)
    hint = f", or continue it with `cxrkit train --resume {out}`"
    claim_folder(out, RUN_KIND, overwrite=overwrite, hint=hint)


def checkpoint_bytes(model: nn.Module) -> int:
    """About the size of one checkpoint: the weights and AdamW's two moments per weight."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return 3 * params + buffers


def check_free_space(out: Path, model: nn.Module) -> None:
    """Fail before training when ``out``'s filesystem cannot hold ``best.ckpt``,
    ``last.ckpt`` and the temporary copy written while replacing one, plus logs."""
    need = 3 * checkpoint_bytes(model) + (32 << 20)
    free = shutil.disk_usage(out).free
    if free < need:
        raise UserError(
            f"not enough free space for run folder {out}: checkpoints need about "
            f"{need / 2**20:.0f} MiB ({need} bytes), {free / 2**20:.0f} MiB ({free} bytes) free"
        )


def git_state(source: Path) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout that tracks file ``source``; None when it is
    not in one (e.g. installed from a wheel) or git is not available."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source.parent), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", source.name)
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def environment() -> dict[str, Any]:
    """Python, platform, versions of the packages that decide the numbers, cxrkit's commit."""
    import cxrkit

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git": git_state(Path(cxrkit.__file__)),
    }


def now() -> str:
    """The current time, ISO 8601 UTC, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_config(out: Path, config: TrainConfig) -> None:
    """``RUN/config.yaml``, atomically (under torchrun other ranks may be reading it)."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    atomic_write_text(out / CONFIG, text)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a clear error when it is missing or broken."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; is {path.parent} a cxrkit run folder?")
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return value


def read_epochs(path: Path) -> list[dict[str, float]]:
    """The rows of ``epochs.csv`` as floats (empty cells: NaN); [] when there is none yet."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [
            {k: float(v) if v != "" else math.nan for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def keep_rows(path: Path, n: int) -> None:
    """Keep the header and the first ``n`` rows of CSV ``path`` (atomically); no file, no-op."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > n + 1:
        atomic_write_text(path, "".join(lines[: n + 1]))


def final_metrics(rows: list[dict[str, float]], stopped_early: bool) -> dict[str, Any]:
    """``metrics.json``: the best epoch (first highest validation macro AUROC), its per-class
    AUROC, the last epoch's figures, epoch count, whether early stopping ended the run, and
    the seconds spent training and validating (all sessions)."""

    scored = [r for r in rows if not math.isnan(r["val_macro_auroc"])]
    best = max(scored, key=lambda r: r["val_macro_auroc"], default=None)  # first of ties
    prefix = "val_auroc_"
    summary = {
        "epochs": len(rows),
        "stopped_early": stopped_early,
        "seconds": round(sum(r["seconds"] for r in rows), 1),
        "best_epoch": int(best["epoch"]) if best else None,
        "best_val_macro_auroc": json_float(best["val_macro_auroc"]) if best else None,
        "best_val_loss": json_float(best["val_loss"]) if best else None,
        "best_val_auroc": {
            k[len(prefix) :]: json_float(v) for k, v in (best or {}).items() if k.startswith(prefix)
        },
    }
    if rows:
        last = rows[-1]
        summary["last"] = {
            "epoch": int(last["epoch"]),
            **{k: json_float(last[k]) for k in ("train_loss", "val_loss", "val_macro_auroc")},
        }
    return summary


def check_logger(name: str) -> None:
    """``logger`` must be one of :data:`LOGGERS`; MLflow must be installed to use it."""
    if name not in LOGGERS:
        raise did_you_mean(name, LOGGERS, what="logger")
    if name != "mlflow":
        return
    if importlib.util.find_spec("mlflow") is None:
        raise UserError(
            "logger=mlflow needs MLflow, which is not installed: pip install mlflow "
            "(or use logger=tensorboard or logger=none)"
        )
    if not os.environ.get("MLFLOW_TRACKING_URI") and importlib.util.find_spec("sqlalchemy") is None:
        raise UserError(
            "logger=mlflow without MLFLOW_TRACKING_URI logs to RUN/mlflow.db, which needs the "
            "full MLflow (mlflow-skinny lacks SQLAlchemy): pip install mlflow, or set "
            "MLFLOW_TRACKING_URI to a tracking server"
        )


def make_loggers(
    name: str, out: Path, previous: dict[str, Any] | None = None
) -> tuple[list[Logger], dict[str, Any] | None]:
    """Lightning's CSV log always, plus TensorBoard or MLflow as ``name`` says; returns them
    and, for MLflow, ``{"tracking_uri", "run_id"}`` to keep in run.json. MLflow logs to
    ``$MLFLOW_TRACKING_URI`` if set, else to an SQLite store ``RUN/mlflow.db`` (MLflow 3 no
    longer accepts a plain ``mlruns/`` folder by default); ``previous`` (from run.json)
    continues that MLflow run on resume."""
    check_logger(name)
    loggers: list[Logger] = [CSVLogger(out, name="logs", version="")]
    if name == "tensorboard":
        loggers.append(
            TensorBoardLogger(out, name="tensorboard", version="", default_hp_metric=False)
        )
    if name != "mlflow":
        return loggers, None
    previous = previous or {}
    uri = previous.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    uri = uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    mlflow = MLFlowLogger(
        experiment_name="cxrkit",
        run_name=out.name,
        tracking_uri=uri,
        run_id=previous.get("run_id"),
        artifact_location=(out / "mlartifacts").resolve().as_uri(),  # for a new experiment
    )
    return [*loggers, mlflow], {"tracking_uri": uri, "run_id": mlflow.run_id}
