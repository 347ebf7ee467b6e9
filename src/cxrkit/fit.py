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
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cxrkit import __version__
from cxrkit.config import TrainConfig, config_to_dict
from cxrkit.data import combine, make_loader
from cxrkit.errors import UserError
from cxrkit.manifest import load_manifest
from cxrkit.models import cpu_has_native_bf16
from cxrkit.training import MONITOR, CXRModule, augment_on_device, count_labels, new_card


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
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def fit(
    config: TrainConfig,
    data: str | Path | list[str | Path],
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train as ``config`` says on one or more prepared folders; write the run to ``out``.

    Several folders are trained on together over the union (or, with
    ``data.combine=intersection``, the intersection) of their findings; a finding a dataset
    does not label is NaN there and masked in the loss and in validation AUROC.
    """
    out = Path(out)
    folders = [Path(d) for d in (data if isinstance(data, list) else [data])]
    manifests = [load_manifest(f) for f in folders]
    combined = combine(manifests, config.data.findings, config.data.combine)
    findings = config.data.findings = combined.findings
    caches = combined.caches
    train, val = combined.split("train"), combined.split("val")
    if len(val.slots) == 0:
        raise UserError(
            f"no validation images in {', '.join(map(str, folders))}; "
            "prepare with --val-fraction > 0"
        )
    if config.data.image_size > caches[0].size:
        warnings.warn(
            f"data.image_size {config.data.image_size} > cache size {caches[0].size}: "
            "images are upsampled",
            UserWarning,
            stacklevel=2,
        )
    prepare_run_dir(out, overwrite)
    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    L.seed_everything(config.seed, workers=True, verbose=False)
    pos, neg = count_labels(train.labels)
    training_data = {
        "datasets": [
            {
                "dataset": m.header["dataset"],
                "prepared": str(m.folder.resolve()),
                "split_policy": m.header["split"]["policy"],
                "patients_sha256": m.header["split"]["patients_sha256"],
            }
            for m in manifests
        ],
        "combine": config.data.combine,
        "n_train": len(train.slots),
        "n_val": len(val.slots),
        "train_positives": {f: int(p) for f, p in zip(findings, pos, strict=True)},
    }
    clahe = {json.dumps(m.header["cache"].get("clahe")) for m in manifests}
    if len(clahe) != 1:
        raise UserError(
            "the prepared datasets differ in CLAHE; prepare them alike to train them together"
        )
    card = new_card(config, findings, training_data, caches[0].size)
    card["normalization"]["clahe"] = manifests[0].header["cache"].get("clahe")
    on_loader = not augment_on_device(config.augment, "cuda" if uses_cuda(config) else "cpu")
    module = CXRModule(config, card, pos, neg, augment_in_loader=on_loader)
    loaders = [
        make_loader(
            split.batches(caches, (config.augment, config.data.image_size) if aug else None),
            batch_size=config.data.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=config.data.num_workers,
            seed=config.seed,
        )
        for split, shuffle, aug in ((train, True, on_loader), (val, False, False))
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
        best_score=_score(checkpoint.best_model_score),
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


def uses_cuda(config: TrainConfig) -> bool:
    """Whether Lightning will train on CUDA with this trainer config."""
    acc = config.trainer.accelerator
    return acc in ("cuda", "gpu") or (acc == "auto" and torch.cuda.is_available())


def _score(value: torch.Tensor | float | None) -> float:
    return float("nan") if value is None else float(value)
