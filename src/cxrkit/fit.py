"""``cxrkit train``: a prepared dataset + a recipe -> a run folder with checkpoints and logs.

Run folder layout::

    RUN/config.yaml                 the resolved config (recipe + --set overrides)
    RUN/run.json                    versions, data, split hashes, best score, timings
    RUN/checkpoints/best.ckpt       best validation macro AUROC (carries the model card)
    RUN/checkpoints/last.ckpt       the latest epoch
    RUN/logs/metrics.csv            per-epoch/step metrics (CSV, always)
    RUN/tensorboard/                TensorBoard event files
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cxrkit import __version__
from cxrkit.config import TrainConfig, config_to_dict
from cxrkit.data import CacheBatches, cache_spec, make_loader
from cxrkit.errors import UserError
from cxrkit.labels import select_findings
from cxrkit.manifest import Manifest, load_manifest
from cxrkit.training import MONITOR, CXRModule, count_labels, new_card


@dataclass
class FitResult:
    """Where a finished run put its checkpoints, and its best validation macro AUROC."""

    run: Path
    best: Path
    last: Path
    best_score: float
    epochs: int
    seconds: float


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse to overwrite a non-empty folder unless asked; check writability."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"run folder {out} already exists and is not empty; "
                "choose another --out or pass --overwrite"
            )
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to run folder {out}: {err.strerror}") from None


def resolve_precision(requested: str) -> str:
    """``auto`` -> bf16-mixed / 16-mixed on CUDA, bf16-mixed on CPUs with native bf16, else 32."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "bf16-mixed" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "32-true"


def choose_findings(
    manifest: Manifest, wanted: list[str] | None, train_labels: np.ndarray
) -> list[str]:
    """The findings to train on: ``wanted``, or every manifest finding with train positives."""
    if wanted is not None:
        return select_findings(manifest.findings, wanted)
    pos, _ = count_labels(train_labels)
    kept = [f for f, p in zip(manifest.findings, pos, strict=True) if p > 0]
    dropped = sorted(set(manifest.findings) - set(kept))
    if dropped:
        warnings.warn(
            f"no positive training images for {', '.join(dropped)}: not trained; "
            "set data.findings to choose explicitly",
            UserWarning,
            stacklevel=2,
        )
    if not kept:
        raise UserError(f"no finding has a positive image in the train split of {manifest.folder}")
    return kept


def fit(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train as ``config`` says on the prepared folder ``data``; write the run to ``out``."""
    out = Path(out)
    manifest = load_manifest(data)
    train_rows, val_rows = manifest.rows("train"), manifest.rows("val")
    findings = choose_findings(
        manifest, config.data.findings, manifest.labels(train_rows, manifest.findings)
    )
    config.data.findings = findings
    if config.data.image_size > manifest.header["cache"]["size"]:
        warnings.warn(
            f"data.image_size {config.data.image_size} > cache size "
            f"{manifest.header['cache']['size']}: images are upsampled",
            UserWarning,
            stacklevel=2,
        )
    prepare_run_dir(out, overwrite)
    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    L.seed_everything(config.seed, workers=True, verbose=False)
    train_y, val_y = manifest.labels(train_rows, findings), manifest.labels(val_rows, findings)
    pos, neg = count_labels(train_y)
    training_data = {
        "dataset": manifest.header["dataset"],
        "prepared": str(Path(data).resolve()),
        "split_policy": manifest.header["split"]["policy"],
        "patients_sha256": manifest.header["split"]["patients_sha256"],
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "train_positives": {f: int(p) for f, p in zip(findings, pos, strict=True)},
    }
    module = CXRModule(
        config,
        new_card(config, findings, training_data, manifest.header["cache"]["size"]),
        pos,
        neg,
    )
    spec = cache_spec(manifest)
    loaders = [
        make_loader(
            CacheBatches(spec, rows["cache_index"].to_numpy(), y),
            batch_size=config.data.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=config.data.num_workers,
            seed=config.seed,
        )
        for rows, y, shuffle in ((train_rows, train_y, True), (val_rows, val_y, False))
    ]
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
    )
    callbacks: list[Any] = [checkpoint]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    if config.trainer.patience > 0:
        callbacks.append(
            EarlyStopping(monitor=MONITOR, mode="max", patience=config.trainer.patience)
        )
    t = config.trainer
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=resolve_precision(t.precision),
        deterministic=t.deterministic,
        callbacks=callbacks,
        default_root_dir=out,
        log_every_n_steps=t.log_every_n_steps,
        logger=[
            CSVLogger(out, name="logs", version=""),
            TensorBoardLogger(out, name="tensorboard", version="", default_hp_metric=False),
        ],
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
        limit_train_batches=t.limit_train_batches,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(module, *loaders)
    seconds = time.perf_counter() - started
    best = Path(checkpoint.best_model_path or checkpoint.last_model_path)
    result = FitResult(
        run=out,
        best=best,
        last=out / "checkpoints" / "last.ckpt",
        best_score=float(checkpoint.best_model_score or float("nan")),
        epochs=int(trainer.current_epoch),
        seconds=seconds,
    )
    (out / "run.json").write_text(
        json.dumps(
            {
                "cxrkit_version": __version__,
                "torch": torch.__version__,
                "lightning": L.__version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "precision": trainer.precision,
                "data": training_data,
                "best_checkpoint": str(best),
                "best_val_macro_auroc": result.best_score,
                "epochs": result.epochs,
                "seconds": round(seconds, 1),
            },
            indent=2,
        )
    )
    return result


def _score(value: torch.Tensor | float | None) -> float:
    return float("nan") if value is None else float(value)
