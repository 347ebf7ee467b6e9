"""``cxrkit train``: prepared data + a recipe -> a run folder; :func:`resume` continues one.

The run folder's layout is described in :mod:`cxrkit.train.run_folder`; how checkpoints are written
and what they hold beyond Lightning's own state, in :mod:`cxrkit.train.callbacks`. ``last.ckpt`` is
written at every epoch end and every ``trainer.checkpoint_every_n_steps`` steps; resuming from
it restores the weights, optimizer, scheduler, early stopping, best score, RNG states and the
training order, so that (on the CPU, with ``data.num_workers=0``) a run killed anywhere and
resumed ends with exactly the numbers of the uninterrupted run.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
from torch.utils.data import DataLoader

from cxrkit.data.batches import CacheSpec
from cxrkit.data.manifest import Manifest, load_manifest
from cxrkit.data.storage import as_location
from cxrkit.errors import UserError
from cxrkit.files import remove_stale_temps, write_json
from cxrkit.models.backbones import check_backbone
from cxrkit.models.devices import auto_precision
from cxrkit.train.callbacks import (
    AtomicCheckpointIO,
    BestCheckpoint,
    EpochLog,
    LastCheckpoint,
    TrainingState,
)
from cxrkit.train.config import TrainConfig, config_to_dict, load_config, validate_config
from cxrkit.train.loaders import SplitData, combine, make_loader
from cxrkit.train.module import (
    MONITOR,
    CXRModule,
    augment_on_device,
    count_labels,
    launched_as_rank_zero,
    new_card,
)
from cxrkit.train.probe import fit_probe, refuse_embeddings
from cxrkit.train.run_folder import (
    BEST,
    CHECKPOINTS,
    CONFIG,
    EPOCHS_CSV,
    LAST,
    METRICS_JSON,
    RUN_JSON,
    FitResult,
    check_free_space,
    check_logger,
    check_writable,
    describe_training_data,
    environment,
    final_metrics,
    make_loggers,
    now,
    prepare_run_dir,
    read_epochs,
    read_json,
    write_config,
)

# What `--resume RUN --set ...` may change: how long to train and how to checkpoint and load,
# not what is trained. Extending max_epochs re-stretches a cosine schedule over the new total.
RESUME_MAY_CHANGE = ("trainer.max_epochs", "trainer.checkpoint_every_n_steps", "data.num_workers")


@dataclass
class _Data:
    """The prepared folders seen as one training set, checked before anything is written."""

    config: TrainConfig
    manifests: list[Manifest]
    caches: list[CacheSpec]
    train: SplitData
    val: SplitData
    training_data: dict[str, Any]


#: the names of :func:`cxrkit.models.devices.auto_precision` as Lightning's precision strings
LIGHTNING_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


def lightning_precision(requested: str) -> str:
    """``trainer.precision``: ``auto`` -> what every other command's ``--precision auto`` picks
    on the device Lightning trains on (CUDA when present, else the CPU: bf16 with native
    support), as Lightning's name; any other value as given."""
    if requested != "auto":
        return requested
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return LIGHTNING_PRECISION[auto_precision(device)[0]]


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
    validate_config(config)  # a config built or changed in Python skipped load_config's checks
    if config.data.embeddings:  # a linear probe on an embedding folder (cxrkit embed)
        return fit_probe(config, data, out, overwrite=overwrite, progress=progress)
    check_backbone(config.model.backbone)  # before anything is written
    check_logger(config.logger)
    folders = [as_location(d) for d in (data if isinstance(data, list) else [data])]  # or URIs
    refuse_embeddings(folders)
    prepared = _load_data(config, folders)
    rank_zero = launched_as_rank_zero()  # under DDP every rank runs fit(): one writes the folder
    if rank_zero:
        prepare_run_dir(out, overwrite)
        write_config(out, config)
    module, loaders = _build(prepared)
    if rank_zero:
        check_free_space(out, module.model)
    info = {"status": "running", "data": prepared.training_data}
    if "init" in module.card:
        info["init"] = module.card["init"]
    return _train(config, module, loaders, out, info, ckpt=None, progress=progress)


def resume(
    run: str | Path, overrides: list[str] | None = None, *, progress: bool = True
) -> FitResult:
    """Continue run folder ``run`` from ``checkpoints/last.ckpt``, on the data and config it
    was started with. ``overrides`` (``--set``) may only change :data:`RESUME_MAY_CHANGE`.
    A run that already ended (all epochs, or early stopping) is left as it is."""
    run = Path(run)
    if not (run / CONFIG).is_file():
        raise UserError(f"{run} is not a cxrkit run folder (no {CONFIG}); nothing to resume")
    saved = load_config(run / CONFIG)
    config = load_config(run / CONFIG, overrides)
    changed = _changed_keys(config_to_dict(saved), config_to_dict(config))
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        raise UserError(
            f"--resume continues {run} as it was configured; it cannot change "
            f"{', '.join(refused)} (only {', '.join(RESUME_MAY_CHANGE)}): start a new run"
        )
    info = read_json(run / RUN_JSON)
    if info.get("status") == "finished":
        done = read_json(run / METRICS_JSON)
        if done["stopped_early"] or done["epochs"] >= config.trainer.max_epochs:
            return FitResult(
                run=run,
                best=run / CHECKPOINTS / BEST,
                last=run / CHECKPOINTS / LAST,
                best_score=_score(done["best_val_macro_auroc"]),
                epochs=done["epochs"],
                seconds=0.0,
                already_finished=True,
            )
    if config.data.embeddings:
        raise UserError(f"{run} is a probe run (seconds to train): train it again, --overwrite")
    last = run / CHECKPOINTS / LAST
    if not last.is_file():
        raise UserError(
            f"{run} has no {CHECKPOINTS}/{LAST} to resume from (it was stopped before its "
            f"first checkpoint); start it again with --overwrite"
        )
    check_logger(config.logger)
    folders = [as_location(d["prepared"]) for d in info["data"]["datasets"]]
    prepared = _load_data(config, folders)
    if prepared.training_data != info["data"]:
        raise UserError(
            f"the prepared data in {', '.join(map(str, folders))} changed since {run} started "
            f"(split, images or labels differ from {RUN_JSON}); resuming would train on other "
            "data: start a new run"
        )
    rank_zero = launched_as_rank_zero()
    if rank_zero:
        check_writable(run)
        remove_stale_temps(run / CHECKPOINTS)  # left by a process killed while writing
        if changed:
            write_config(run, config)
    module, loaders = _build(prepared)
    if rank_zero:
        check_free_space(run, module.model)
    return _train(config, module, loaders, run, info, ckpt=last, progress=progress)


def _load_data(config: TrainConfig, folders: list[str | Path]) -> _Data:
    """Read and combine the prepared folders; fix ``config.data.findings`` to those trained."""
    manifests = [load_manifest(f) for f in folders]
    combined = combine(manifests, config.data.findings, config.data.combine)
    findings = config.data.findings = combined.findings
    caches = combined.caches
    train, val = combined.split("train"), combined.split("val")
    for m in manifests:
        m.cache()  # a missing or truncated cache fails here, before a run folder exists
    if len(train.slots) == 0:
        raise UserError(
            f"no training images in {', '.join(map(str, folders))} (every image is in val or "
            "test); prepare again with smaller --val-fraction/--test-fraction"
        )
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
            stacklevel=3,
        )
    clahe = {json.dumps(m.header["cache"].get("clahe")) for m in manifests}
    if len(clahe) != 1:
        raise UserError(
            "the prepared datasets differ in CLAHE; prepare them alike to train them together"
        )
    training_data = describe_training_data(
        manifests, config.data.combine, findings, train.labels, len(val.slots)
    )
    return _Data(config, manifests, caches, train, val, training_data)


def _build(prepared: _Data) -> tuple[CXRModule, list[DataLoader]]:
    """Seed everything, then build the module (with its model card) and the two loaders."""
    config, manifests, caches = prepared.config, prepared.manifests, prepared.caches
    train, val = prepared.train, prepared.val
    L.seed_everything(config.seed, workers=True, verbose=False)
    pos, neg = count_labels(train.labels)
    card = new_card(config, config.data.findings or [], prepared.training_data, caches[0].size)
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
            sampler=config.data.sampler,
            distributed=True,  # each DDP rank takes its share (cxrkit.train.loaders.RowBatches)
            pin_memory=config.data.pin_memory,  # None: when CUDA is available
        )
        for split, shuffle, aug in ((train, True, on_loader), (val, False, False))
    ]
    return module, loaders


def _train(
    config: TrainConfig,
    module: CXRModule,
    loaders: list[DataLoader],
    out: Path,
    info: dict[str, Any],
    *,
    ckpt: Path | None,
    progress: bool,
) -> FitResult:
    """One training session: from scratch (``ckpt`` None) or from checkpoint ``ckpt``."""
    t = config.trainer
    rank_zero = launched_as_rank_zero()
    state = TrainingState(loaders[0])
    best = BestCheckpoint(
        dirpath=out / CHECKPOINTS,
        filename=Path(BEST).stem,
        monitor=MONITOR,
        mode="max",
        auto_insert_metric_name=False,
    )
    callbacks: list[Any] = [
        state,
        EpochLog(out / EPOCHS_CSV, module.card["findings"]),
        best,
        LastCheckpoint(out / CHECKPOINTS / LAST, t.checkpoint_every_n_steps),
    ]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=5))
    early = EarlyStopping(monitor=MONITOR, mode="max", patience=t.patience) if t.patience else None
    callbacks += [early] if early else []
    loggers, mlflow = make_loggers(config.logger, out, info.get("mlflow"))
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        use_distributed_sampler=False,  # the loaders shard themselves, validation unpadded
        precision=lightning_precision(t.precision),
        deterministic=t.deterministic,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=out,
        log_every_n_steps=t.log_every_n_steps,
        logger=loggers,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
        limit_train_batches=t.limit_train_batches,
    )
    session: dict[str, Any] = {"started": now(), "resumed_from": None}
    if ckpt is not None:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        session["resumed_from"] = {"epoch": saved["epoch"], "step": saved["global_step"]}
        del saved
    if rank_zero:
        here = environment()
        if info.setdefault("environment", here) != here:  # resumed elsewhere: say where
            session["environment"] = here
        info.update(status="running", precision=str(trainer.precision), mlflow=mlflow)
        info["sessions"] = [*info.get("sessions", []), session]
        write_json(out / RUN_JSON, info)
        if ckpt is None:
            for logger in loggers:
                logger.log_hyperparams(config_to_dict(config))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # on resume
        if state.order is not None:  # TrainingState makes the order resumable
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        trainer.fit(module, *loaders, ckpt_path=ckpt)
    seconds = time.perf_counter() - started
    result = FitResult(
        run=out,
        best=Path(best.best_model_path or out / CHECKPOINTS / LAST),
        last=out / CHECKPOINTS / LAST,
        best_score=_score(best.best_model_score),
        epochs=int(trainer.current_epoch),
        seconds=seconds,
        resumed_from=session["resumed_from"],
    )
    if not rank_zero:
        return result
    stopped_early = bool(early and early.stopped_epoch > 0)
    metrics = final_metrics(read_epochs(out / EPOCHS_CSV), stopped_early=stopped_early)
    write_json(out / METRICS_JSON, metrics)
    result.epochs, result.best_score = metrics["epochs"], _score(metrics["best_val_macro_auroc"])
    session.update(ended=now(), seconds=round(seconds, 1))
    info.update(
        status="finished",
        epochs=result.epochs,
        best_checkpoint=str(result.best),
        best_val_macro_auroc=result.best_score,
        seconds=metrics["seconds"],
    )
    write_json(out / RUN_JSON, info)
    return result


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys: list[str] = []
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def uses_cuda(config: TrainConfig) -> bool:
    """Whether Lightning will train on CUDA with this trainer config."""
    acc = config.trainer.accelerator
    return acc in ("cuda", "gpu") or (acc == "auto" and torch.cuda.is_available())


def _score(value: torch.Tensor | float | None) -> float:
    return float("nan") if value is None else float(value)
