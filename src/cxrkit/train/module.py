"""Training on PyTorch Lightning: ``fit(config, data, out)``.

The loader yields uint8 batches from the cache; augmentation and normalisation run on the
batch after it reaches the device. Validation gathers the logits of the whole validation set
(across ranks under DDP) before computing AUROC, so the monitored figure is the true
validation macro AUROC, not a per-shard one: each rank validates a contiguous, unpadded block
of the split (:class:`cxrkit.train.loaders.RowBatches`), and :meth:`CXRModule.gather_rows` collects
blocks of unequal length, so every validation image counts exactly once.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from cxrkit.errors import UserError, did_you_mean
from cxrkit.evaluate.metrics import roc_auc
from cxrkit.models.backbones import create_model, encoder_card_fields
from cxrkit.models.checkpoint import new_model_card
from cxrkit.models.inputs import eval_transform, input_normalization
from cxrkit.train.augment import train_transform
from cxrkit.train.config import AugmentConfig, TrainConfig, config_to_dict
from cxrkit.train.losses import create_loss
from cxrkit.train.rules import AUGMENT_ON, SCHEDULERS
from cxrkit.train.warm_start import apply_init, init_normalization, load_init, param_groups

MONITOR = "val_macro_auroc"


class CXRModule(L.LightningModule):
    """The model, its loss and its optimiser; the card travels in every checkpoint."""

    def __init__(
        self,
        config: TrainConfig,
        card: dict[str, Any],
        pos: np.ndarray,
        neg: np.ndarray,
        *,
        augment_in_loader: bool = False,
    ):
        """``augment_in_loader``: the training loader already augments (OpenCV, uint8), so
        training batches are only resized and normalised here; otherwise they are augmented
        here, on the device (see :func:`augment_on_device`)."""
        super().__init__()
        self.config = config
        self.augment_in_loader = augment_in_loader
        self.card = card
        init = load_init(config.model.init, config.model.backbone) if config.model.init else None
        self.model = create_model(
            config.model.backbone,
            len(card["findings"]),
            pretrained=config.model.pretrained and init is None,  # init's weights replace them
            drop_rate=config.model.drop_rate,
            output_stride=config.model.output_stride,
        )
        self.mean, self.std = input_normalization(self.model)
        card["normalization"] = {
            **card["normalization"],
            "mean": self.mean,
            "std": self.std,
            "input": "uint8 gray / 255, letterboxed to a square",
        }
        card.update(encoder_card_fields(self.model))
        if init is not None:  # its weights, its head rows by finding, its normalisation
            card["init"] = apply_init(self.model, init, card["findings"])
            card["normalization"].update(init_normalization(init))
            self.mean, self.std = card["normalization"]["mean"], card["normalization"]["std"]
        if config.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.model.compile:  # in place: the state_dict keys stay those of the model
            self.model.compile()
        self.loss = create_loss(config.loss, pos, neg)
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` normalised float -> ``(N, C)`` logits."""
        if self.config.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def setup(self, stage: str) -> None:
        """Under DDP, reseed each rank so that augmentation draws differ between ranks (the
        weights are identical anyway: DDP broadcasts rank 0's at the start)."""
        if self.trainer is not None and self.trainer.world_size > 1:
            torch.manual_seed(self.config.seed + self.trainer.global_rank)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        size = self.config.data.image_size
        if self.trainer is not None and self.trainer.training and not self.augment_in_loader:
            x = train_transform(images, size, self.mean, self.std, self.config.augment)
        else:
            x = eval_transform(images, size, self.mean, self.std)
        return x, labels

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self._val_logits.append(self(x).detach().float())
        self._val_labels.append(y.float())

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``(n_r, ...)`` on each rank -> ``(sum of n_r, ...)`` on every rank, in rank order.

        Ranks may hold different ``n_r`` (an unpadded validation split): each block is padded
        to the largest for ``all_gather`` and the padding is cut off again."""
        if self.trainer is None or self.trainer.world_size == 1:
            return rows
        sizes = self.all_gather(torch.tensor([len(rows)], device=rows.device)).flatten().tolist()
        padding = rows.new_zeros((max(sizes) - len(rows), *rows.shape[1:]))
        gathered = self.all_gather(torch.cat([rows, padding]))  # (world, max(sizes), ...)
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])

    def on_validation_epoch_end(self) -> None:
        n_classes = len(self.card["findings"])
        empty = torch.zeros((0, n_classes), device=self.device)
        logits = self.gather_rows(torch.cat(self._val_logits) if self._val_logits else empty)
        labels = self.gather_rows(torch.cat(self._val_labels) if self._val_labels else empty)
        self._val_logits.clear()
        self._val_labels.clear()
        # Loss and AUROC over the whole validation set, identical on every rank.
        self.log("val_loss", self.loss(logits, labels), prog_bar=True, sync_dist=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one-class columns in tiny val sets: NaN, skipped
            auroc = roc_auc(labels.cpu().numpy(), logits.cpu().numpy())
        macro = float(np.nanmean(auroc)) if np.isfinite(auroc).any() else 0.0
        self.log(MONITOR, macro, prog_bar=True, sync_dist=True)  # same value on every rank
        for name, value in zip(self.card["findings"], auroc, strict=True):
            if np.isfinite(value):
                self.log(f"val_auroc/{name}", float(value), sync_dist=True)
        self.card["val_metrics"] = {
            "epoch": int(self.current_epoch),
            "n_images": len(labels),
            "macro_auroc": macro,
            "auroc": {
                f: (None if not np.isfinite(v) else float(v))
                for f, v in zip(self.card["findings"], auroc, strict=True)
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_card"] = dict(self.card)

    def configure_optimizers(self) -> Any:
        opt_cfg = self.config.optim
        groups: Any = self.parameters()  # one group, at optim.lr
        if opt_cfg.layer_decay != 1.0:  # one group per depth (cxrkit.train.warm_start)
            groups = param_groups(self.model, opt_cfg.lr, opt_cfg.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)
        if opt_cfg.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.1, patience=1
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": MONITOR},
            }
        if opt_cfg.scheduler == "none":
            return optimizer
        if opt_cfg.scheduler != "cosine":  # never a silent fallback to cosine
            raise did_you_mean(opt_cfg.scheduler, SCHEDULERS, what="optim.scheduler")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(opt_cfg.warmup_epochs * total / max(1, self.trainer.max_epochs))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def augment_on_device(cfg: AugmentConfig, device: torch.device | str) -> bool:
    """Where training augmentation runs: ``device`` (torch, whole batch) or ``loader``
    (OpenCV in the loader workers). ``auto``: on the device for CUDA, in the loader on CPU."""
    if cfg.on not in AUGMENT_ON:
        raise UserError(f"augment.on must be auto, loader or device, got {cfg.on!r}")
    if cfg.on == "auto":
        return torch.device(device).type == "cuda"
    return cfg.on == "device"


def new_card(
    config: TrainConfig, findings: list[str], training_data: dict[str, Any], letterbox_size: int
) -> dict:
    """The model card at the start of training (mean/std are filled in by the module).

    ``letterbox_size`` is the cache size the training images were letterboxed to; inference
    letterboxes new images to the same size before resizing to ``input_size``."""
    return new_model_card(
        findings,
        config.model.backbone,
        config.data.image_size,
        {"letterbox_size": letterbox_size},
        output_stride=config.model.output_stride,
        training_data=training_data,
        train_config=config_to_dict(config),
    )


def count_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class positive and negative counts ``(C,)`` of a ``(N, C)`` labels (NaN skipped)."""
    return np.nansum(labels == 1, axis=0), np.nansum(labels == 0, axis=0)


def trainable(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0 (or not distributed), as its launcher announced it
    before any process group exists: torchrun sets ``RANK``/``LOCAL_RANK``, SLURM's ``srun``
    ``SLURM_PROCID``, Lightning's own DDP launcher ``NODE_RANK``/``LOCAL_RANK`` in the processes
    it starts. Only rank 0 creates and writes the run folder (``config.yaml``, ``run.json``);
    Lightning already saves checkpoints and logs on rank 0 only."""
    ranks = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(var, "0").strip() in ("", "0") for var in ranks)
