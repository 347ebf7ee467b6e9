"""Linear probes: a logistic head on an embedding folder -> a normal cxrkit checkpoint.

``cxrkit train --config probe --data EMB --out RUN`` (``data.embeddings: true``) trains
``nn.Linear(D, C)`` on the float16 embeddings of ``cxrkit embed`` (:mod:`cxrkit.data.embeddings`):
the masked loss of ``loss.*`` (:func:`cxrkit.train.losses.create_loss`, ``pos_weight: auto``
included), AdamW at a constant ``optim.lr`` over mini-batches of ``data.batch_size`` rows,
early stopping on the validation macro AUROC (``trainer.patience``), on the CPU. Labels come
from the manifest the embeddings were made from, by image id; a manifest changed since is
refused. Config keys that do not apply to a probe (augmentation, schedulers, the trainer's
devices, ...) are refused when set (:func:`check_probe_config`), never ignored.

``best.ckpt`` is the encoder saved in EMB with the trained head in place of its own
(:mod:`cxrkit.train.probe_head`): the Lightning-style ``{"state_dict": {"model.<key>":
tensor}, "model_card": {...}}`` that ``eval``, ``infer``, ``cam``, ``export``, ``serve`` and
``gate`` read. The run folder has the layout of :mod:`cxrkit.train.run_folder`; the
checkpoints are written once, when training ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from cxrkit.data import embeddings as store
from cxrkit.data.manifest import Manifest, load_manifest
from cxrkit.errors import UserError
from cxrkit.files import write_json
from cxrkit.models.backbones import encoder_card_fields
from cxrkit.models.checkpoint import atomic_torch_save
from cxrkit.train.config import TrainConfig, config_to_dict
from cxrkit.train.loaders import combine
from cxrkit.train.module import new_card
from cxrkit.train.probe_head import Epochs, encoder_card, fit_head, probe_model
from cxrkit.train.rules import show
from cxrkit.train.run_folder import (
    BEST,
    CHECKPOINTS,
    EPOCHS_CSV,
    LAST,
    METRICS_JSON,
    RUN_JSON,
    FitResult,
    check_free_space,
    describe_training_data,
    environment,
    final_metrics,
    now,
    prepare_run_dir,
    read_epochs,
    write_config,
)
from cxrkit.train.warm_start import head_prefix

#: keys a probe run reads (any valid value); every other key must keep its default, except
#: those of :data:`PROBE_VALUES` and those the embedding folder fixes
PROBE_KEYS = (
    "seed",
    "data.embeddings",
    "data.findings",
    "data.batch_size",
    "optim.lr",
    "optim.weight_decay",
    "trainer.max_epochs",
    "trainer.patience",
    "trainer.deterministic",
)
#: keys a probe run accepts with these values only
PROBE_VALUES = {
    "optim.scheduler": ("none",),
    "logger": ("none",),
    "trainer.precision": ("auto", "32-true"),
    "trainer.accelerator": ("auto", "cpu"),
}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_probe_config(config: TrainConfig, card: dict[str, Any]) -> None:
    """Refuse any key set to what a probe cannot do; fix ``model.backbone``,
    ``model.output_stride`` and ``data.image_size`` to the encoder's ``card``."""
    fixed = {
        "model.backbone": card["backbone"],
        "model.output_stride": card.get("output_stride", 32),
        "data.image_size": card["input_size"],
    }
    defaults = _flat(config_to_dict(TrainConfig()))
    for key, value in _flat(config_to_dict(config)).items():
        if key in PROBE_KEYS or key.startswith("loss."):
            continue
        if key in PROBE_VALUES and value not in PROBE_VALUES[key]:
            allowed = " or ".join(map(show, PROBE_VALUES[key]))
            raise UserError(f"a probe run needs {key}={allowed}, got {show(value)}")
        if key in fixed and value not in (defaults[key], fixed[key]):
            raise UserError(
                f"config key {key}={show(value)}: the embeddings were made with "
                f"{key}={show(fixed[key])}; leave it unset in a probe run"
            )
        if key not in PROBE_VALUES and key not in fixed and value != defaults[key]:
            raise UserError(
                f"config key {key}={show(value)} does not apply to a probe run (a linear head "
                "on stored embeddings); leave it at its default or train a network"
            )
    config.model.backbone = fixed["model.backbone"]
    config.model.output_stride = int(fixed["model.output_stride"])
    config.data.image_size = int(fixed["data.image_size"])


def refuse_embeddings(folders: list[str | Path]) -> None:
    """A network recipe given an embedding folder: one line saying to use the probe recipe."""
    for folder in folders:
        if isinstance(folder, Path) and store.is_embedding_folder(folder):
            raise UserError(
                f"--data {folder} is an embedding folder (cxrkit embed): train a linear probe on "
                "it with --config probe (data.embeddings=true), or give a prepared folder"
            )


def fit_probe(
    config: TrainConfig,
    data: str | Path | list[str | Path],
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train a linear probe as ``config`` says on embedding folder ``data``; write run ``out``."""
    folders = data if isinstance(data, list) else [data]
    if len(folders) != 1:
        raise UserError(f"a probe trains on one embedding folder; got {len(folders)} --data")
    emb = store.open_embeddings(folders[0])
    card0 = encoder_card(emb)
    check_probe_config(config, card0)
    manifest = _source_manifest(emb)
    findings = combine([manifest], config.data.findings, "union").findings
    labels = _labels(emb, manifest.table, findings)
    train, val = emb.split("train"), emb.split("val")
    if len(train) == 0 or len(val) == 0:
        raise UserError(
            f"{emb.folder} holds {len(train)} train and {len(val)} val embeddings; a probe "
            "needs both: embed with --splits train,val[,test]"
        )
    config.data.findings = findings
    out = Path(out)
    model = probe_model(emb, card0, len(findings))
    prepare_run_dir(out, overwrite)
    check_free_space(out, model)
    write_config(out, config)
    source = {"embeddings": str(emb.folder.resolve()), "dim": emb.dim, **emb.record["model"]}
    training_data = describe_training_data([manifest], "union", findings, labels[train], len(val))
    training_data["embeddings"] = source
    session: dict[str, Any] = {"started": now(), "resumed_from": None}
    info: dict[str, Any] = {"status": "running", "data": training_data, "probe": source}
    info.update(environment=environment(), precision="32-true", sessions=[session])
    write_json(out / RUN_JSON, info)
    started = time.perf_counter()
    epochs = fit_head(config, emb, labels, train, val, findings, out / EPOCHS_CSV, progress)
    seconds = time.perf_counter() - started
    card = new_card(config, findings, training_data, int(card0["normalization"]["letterbox_size"]))
    card.update(
        output_stride=card0.get("output_stride", 32),
        normalization=dict(card0["normalization"]),
        probe=source,
        **encoder_card_fields(model),
    )
    (out / CHECKPOINTS).mkdir(exist_ok=True)
    for name, head, metrics in (
        (BEST, epochs.best_head, epochs.best),
        (LAST, epochs.last_head, epochs.last),
    ):
        _save(out / CHECKPOINTS / name, model, head, {**card, "val_metrics": metrics}, epochs)
    metrics = final_metrics(read_epochs(out / EPOCHS_CSV), stopped_early=epochs.stopped_early)
    write_json(out / METRICS_JSON, metrics)
    session.update(ended=now(), seconds=round(seconds, 1))
    best = metrics["best_val_macro_auroc"]
    info.update(
        status="finished",
        epochs=metrics["epochs"],
        best_checkpoint=str(out / CHECKPOINTS / BEST),
        best_val_macro_auroc=best,
        seconds=metrics["seconds"],
    )
    write_json(out / RUN_JSON, info)
    return FitResult(
        run=out,
        best=out / CHECKPOINTS / BEST,
        last=out / CHECKPOINTS / LAST,
        best_score=float("nan") if best is None else float(best),
        epochs=metrics["epochs"],
        seconds=seconds,
    )


def _source_manifest(emb: store.Embeddings) -> Manifest:
    """The manifest the embeddings were made from, unchanged since (else a UserError)."""
    source = emb.record["manifest"]
    manifest = load_manifest(source["folder"])
    if store.manifest_fingerprint(manifest) != source["sha256"]:
        raise UserError(
            f"the prepared folder {source['folder']} changed since {emb.folder} was embedded "
            "(images, labels or splits differ): embed it again (cxrkit embed --overwrite)"
        )
    return manifest


def _labels(emb: store.Embeddings, table: pd.DataFrame, findings: list[str]) -> np.ndarray:
    """``(N, C)`` float32 labels of the embedding rows (NaN = unknown), by image id."""
    by_id = table.set_index("image_id")
    missing = ~emb.rows["image_id"].isin(by_id.index)
    if missing.any():
        raise UserError(
            f"{emb.folder}: {int(missing.sum())} image id(s) are not in the manifest "
            f"(first {emb.rows['image_id'][missing].iloc[0]!r}): embed again"
        )
    return by_id.loc[emb.rows["image_id"], findings].to_numpy(np.float32)


def _save(path: Path, model: nn.Module, head: nn.Linear, card: dict[str, Any], e: Epochs) -> None:
    """The full model (encoder + ``head``) as a cxrkit checkpoint at ``path``."""
    prefix = head_prefix(model)
    state = dict(model.state_dict())
    state[prefix + "weight"] = head.weight.detach().clone()
    state[prefix + "bias"] = head.bias.detach().clone()
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "model_card": card,
        "epoch": int(card["val_metrics"]["epoch"]),
        "global_step": e.steps,
    }
    atomic_torch_save(ckpt, path)
