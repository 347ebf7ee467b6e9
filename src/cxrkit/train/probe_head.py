"""The probe's training loop and the full model it becomes (see :mod:`cxrkit.train.probe`).

:func:`fit_head` trains ``nn.Linear(D, C)`` on standardised embeddings and returns the best
and last heads with the standardisation folded in (``W' = W / s``, ``b' = b - W' mu``), so they
apply to the stored embeddings as they are. :func:`probe_model` rebuilds the encoder saved in
the embedding folder (checked against its sha256) to carry such a head.
"""

from __future__ import annotations

import csv
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from cxrkit.data import embeddings as store
from cxrkit.errors import UserError
from cxrkit.evaluate.metrics import roc_auc
from cxrkit.models.checkpoint import file_sha256, network_from_card
from cxrkit.train.callbacks import EpochLog
from cxrkit.train.config import TrainConfig
from cxrkit.train.losses import create_loss
from cxrkit.train.module import count_labels
from cxrkit.train.warm_start import head_prefix

VAL_BATCH = 65536  # validation rows converted to float32 at a time


@dataclass
class Epochs:
    """What :func:`fit_head` found: the best (first highest validation macro AUROC) and last
    heads, the card's ``val_metrics`` of each, optimizer steps, whether it stopped early."""

    best_head: nn.Linear
    last_head: nn.Linear
    best: dict[str, Any]
    last: dict[str, Any]
    steps: int
    stopped_early: bool


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation ``(D,)`` float64 of ``(n, D)`` float16 rows, in blocks
    (1 for features that are constant on them)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    square = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), VAL_BATCH):
        block = x[i : i + VAL_BATCH].double()
        total += block.sum(0)
        square += (block * block).sum(0)
    mean = total / len(x)
    std = (square / len(x) - mean * mean).clamp(min=0).sqrt()
    # A (near) constant feature is left unscaled: dividing by ~0 would blow its weight up.
    return mean, torch.where(std > 1e-3 * std.mean().clamp(min=1e-12), std, torch.ones_like(std))


def _folded(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """The head on raw features equal to ``head`` on ``(x - mean) / std``."""
    weight = head.weight.detach().double() / std
    bias = head.bias.detach().double() - weight @ mean
    out = nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        out.weight.copy_(weight.float())
        out.bias.copy_(bias.float())
    return out


def _metrics(epoch: int, labels: np.ndarray, logits: np.ndarray, findings: list[str]) -> dict:
    """The card's ``val_metrics`` of one epoch, as :class:`~cxrkit.train.module.CXRModule`
    records them (macro 0.0 where no class has both labels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class columns in tiny val sets: NaN, skipped
        auroc = roc_auc(labels, logits)
    macro = float(np.nanmean(auroc)) if np.isfinite(auroc).any() else 0.0
    return {
        "epoch": epoch,
        "n_images": len(labels),
        "macro_auroc": macro,
        "auroc": {
            f: (float(v) if np.isfinite(v) else None) for f, v in zip(findings, auroc, strict=True)
        },
    }


def fit_head(
    config: TrainConfig,
    emb: store.Embeddings,
    labels: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    findings: list[str],
    epochs_csv: Path,
    progress: bool = True,
) -> Epochs:
    """Train the head on rows ``train`` of ``emb.array`` ``(N, D)`` with ``labels`` ``(N, C)``;
    validate on rows ``val`` each epoch; write one ``epochs.csv`` row per epoch (the columns
    of :class:`~cxrkit.train.callbacks.EpochLog`)."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.from_numpy(np.ascontiguousarray(emb.array[train]))  # (n, D) float16
    y = torch.from_numpy(labels[train])
    mean, std = _standardise(x)
    mean32, std32 = mean.float(), std.float()
    x_val = torch.from_numpy(np.ascontiguousarray(emb.array[val]))
    y_val = torch.from_numpy(labels[val])
    head = nn.Linear(emb.dim, len(findings))
    nn.init.zeros_(head.weight)  # logistic regression's start: a feature unseen keeps weight 0
    nn.init.zeros_(head.bias)
    loss_fn = create_loss(config.loss, *count_labels(labels[train]))
    opt_cfg = config.optim
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay
    )
    batch = min(config.data.batch_size, len(x))
    columns = EpochLog(epochs_csv, findings).columns
    with epochs_csv.open("w", newline="") as fh:
        csv.writer(fh).writerow(columns)
    best: dict[str, Any] | None = None
    best_head = last = None
    steps, bad, stopped = 0, 0, False
    bar = tqdm(range(config.trainer.max_epochs), desc="probe", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            z = x[idx].float().sub_(mean32).div_(std32)
            loss = loss_fn(head(z), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        with torch.no_grad():
            logits = torch.cat([head((b.float() - mean32) / std32) for b in x_val.split(VAL_BATCH)])
            val_loss = float(loss_fn(logits, y_val))
        metrics = _metrics(epoch, y_val.numpy(), logits.numpy(), findings)
        last = (metrics, _folded(head, mean, std))
        row = [epoch, steps, total / max(seen, 1), val_loss, metrics["macro_auroc"], opt_cfg.lr]
        row += [round(time.perf_counter() - t0, 3), *(metrics["auroc"][f] for f in findings)]
        with epochs_csv.open("a", newline="") as fh:
            csv.writer(fh).writerow(["" if v is None else v for v in row])
        bar.set_postfix(val_macro_auroc=f"{metrics['macro_auroc']:.4f}")
        if best is None or metrics["macro_auroc"] > best["macro_auroc"]:
            best, best_head, bad = metrics, last[1], 0
        else:
            bad += 1
            if config.trainer.patience and bad >= config.trainer.patience:
                stopped = True
                break
    assert best is not None and best_head is not None and last is not None
    return Epochs(best_head, last[1], best, last[0], steps, stopped)


def encoder_card(emb: store.Embeddings) -> dict[str, Any]:
    """The card of the encoder saved in ``emb``, its weights checked against their sha256."""
    import json

    path = emb.folder / store.ENCODER_CARD
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is missing or unreadable ({err}); embed again") from None
    want = (card.get("files") or {}).get(store.ENCODER, {}).get("sha256")
    weights = emb.folder / store.ENCODER
    if not weights.is_file() or want != file_sha256(weights):
        raise UserError(f"{weights} is missing or does not match the sha256 in {path}; embed again")
    return card


def probe_model(emb: store.Embeddings, card: dict[str, Any], n_classes: int) -> nn.Module:
    """The encoder of ``emb`` with a fresh ``n_classes`` head (in eval mode); a UserError when
    its classifier is not one ``nn.Linear(D, C)`` on the ``D``-long embeddings."""
    model = network_from_card(card, n_classes)
    prefix = head_prefix(model)
    head = model.get_classifier()  # type: ignore[operator]
    if not isinstance(head, nn.Linear) or head.in_features != emb.dim:
        raise UserError(
            f"{card['backbone']}: its classifier is {type(head).__name__}, not a Linear on "
            f"{emb.dim} features; a linear probe cannot stand in for it"
        )
    saved = load_file(emb.folder / store.ENCODER)
    body = {k: v for k, v in saved.items() if not k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    left = [k for k in missing if not k.startswith(prefix)]
    if left or unexpected:
        raise UserError(
            f"{emb.folder / store.ENCODER} does not fit {card['backbone']!r} "
            f"(missing {left[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()
