"""What makes a run resumable with nothing lost: atomic checkpoints, ``last.ckpt`` at every
epoch end and every N steps, the state Lightning leaves out, and the per-epoch CSV.

* :class:`AtomicCheckpointIO` writes every checkpoint through
  :func:`cxrkit.models.checkpoint.atomic_torch_save` (temporary file in the same folder, fsync,
  rename). Lightning's own writer stages the file in the system temp folder and *moves* it,
  which is a copy, not a rename, whenever that folder is on another filesystem.
* :class:`LastCheckpoint` writes ``last.ckpt``; :class:`BestCheckpoint` is Lightning's
  ``ModelCheckpoint`` that still knows its best score after the run folder was moved.
* :class:`TrainingState` stores the Python, numpy and torch RNG states and the training order
  (the sampler's generator state and the rows already trained this epoch), so a run resumed
  mid-epoch trains on exactly the batches the uninterrupted run would have.
* :class:`EpochLog` appends one row per epoch to ``RUN/epochs.csv``.
"""

from __future__ import annotations

import csv
import errno
import itertools
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from cxrkit.errors import UserError
from cxrkit.models.checkpoint import atomic_torch_save
from cxrkit.train.loaders import RowBatches
from cxrkit.train.run_folder import keep_rows


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic on any local filesystem; a full disk is a
    :class:`UserError` that says the previous checkpoint is intact. Reading back (``train
    --resume``) is always ``torch.load(weights_only=True)``: a checkpoint is data, never code."""

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(
            path, map_location=map_location or (lambda storage, loc: storage), weights_only=True
        )

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(
                f"no space left in {path.parent} to write {path.name}; the previous "
                f"{path.name} is intact: free some space and resume with "
                f"`cxrkit train --resume {path.parent.parent}`"
            ) from None


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` at the end of every epoch (after validation; after early stopping and
    :class:`BestCheckpoint`, which act at the epoch end too, have updated their state), and
    every ``every_n_steps`` optimizer steps (0: at epoch ends only)."""

    def __init__(self, path: Path, every_n_steps: int = 0):
        self.path = Path(path)
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        # Not after an epoch's last batch: the epoch end saves next, and Lightning would resume
        # from such a checkpoint as if that epoch had ended, skipping its validation.
        n, step = self.every_n_steps, trainer.global_step
        if n > 0 and step % n == 0 and i + 1 < trainer.num_training_batches:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose saved paths follow the run folder when it was moved or
    copied before resuming (Lightning's forgets the best score then and starts over)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:

            def move(p: str) -> str:
                return new + p[len(old) :] if p and p.startswith(old) else p

            state_dict = {
                **state_dict,
                "dirpath": new,
                "best_k_models": {move(k): v for k, v in state_dict["best_k_models"].items()},
                **{
                    k: move(state_dict[k])
                    for k in ("best_model_path", "kth_best_model_path", "last_model_path")
                    if k in state_dict
                },
            }
        super().load_state_dict(state_dict)


class ResumableOrder(Sampler[int]):
    """Wraps the seeded row order of the training loader (a random or weighted sampler with
    its own ``generator``): remembers the generator state each epoch's order was drawn from,
    and after a mid-epoch resume redraws that order and skips the rows already trained.

    Under DDP :class:`cxrkit.train.loaders.RowBatches` deals the order out to the ranks in turn,
    so the rows to skip are batches done x batch size x world size, a multiple of the world size:
    every rank skips exactly its own batches already trained."""

    def __init__(self, inner: Sampler[int]):
        self.inner = inner
        self.generator: torch.Generator | None = getattr(inner, "generator", None)
        self.epoch_start: torch.Tensor | None = None
        self.skip = 0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        if self.generator is not None:
            self.epoch_start = self.generator.get_state()
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def position(self, rows_done: int) -> dict[str, Any]:
        """Where to resume: this epoch's order, ``rows_done`` rows in; or (0) the next epoch's
        order from its start."""
        if self.generator is None:
            return {"generator": None, "skip": 0}
        start = self.epoch_start if rows_done and self.epoch_start is not None else None
        return {
            "generator": start if start is not None else self.generator.get_state(),
            "skip": rows_done if start is not None else 0,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Go back to a :meth:`position`: the next ``iter()`` draws from there."""
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])
            self.skip = int(state["skip"])


def resumable_order(loader: DataLoader) -> tuple[ResumableOrder, int] | None:
    """Wrap the row order of a cxrkit training loader in place; ``(order, batch size)``, or
    None for a loader that does not batch with :class:`cxrkit.train.loaders.RowBatches`."""
    batches = getattr(loader, "sampler", None)
    if not isinstance(batches, RowBatches):
        return None
    if not isinstance(batches.order, ResumableOrder):
        batches.order = ResumableOrder(batches.order)
    return batches.order, batches.batch_size


def rng_states() -> dict[str, Any]:
    """The global Python, numpy, torch (and CUDA) RNG states, as plain data and tensors that
    ``torch.load(weights_only=True)`` reads back."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingState(L.Callback):
    """Saves, and restores on resume, the RNG states and the training order.

    At an epoch end the RNG states are restored before the loader starts the next epoch, as
    in the uninterrupted run; mid-epoch, after the loader has restarted (which draws from the
    torch RNG), right before training goes on. Under DDP the checkpoint holds rank 0's RNG
    states, so they are restored on rank 0 only; the order is the same on every rank.
    """

    def __init__(self, loader: DataLoader):
        wrapped = resumable_order(loader)
        self.order, self.batch_size = wrapped if wrapped else (None, 0)
        self.batches_done = 0  # training batches finished in the current epoch
        self._epoch_batches = 0
        self._trainer: L.Trainer | None = None
        self._pending_rng: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches_done = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.batches_done = i + 1
        self._epoch_batches = int(trainer.num_training_batches)

    def state_dict(self) -> dict[str, Any]:
        mid_epoch = 0 < self.batches_done < self._epoch_batches
        world = self._trainer.world_size if self._trainer is not None else 1
        rows = self.batches_done * self.batch_size * world if mid_epoch else 0
        return {
            "rng": rng_states(),
            "mid_epoch": mid_epoch,
            "order": self.order.position(rows) if self.order is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.order is not None and state_dict.get("order") is not None:
            self.order.restore(state_dict["order"])
        trainer = self._trainer
        if trainer is not None and not trainer.is_global_zero:
            return
        if state_dict["mid_epoch"]:
            self._pending_rng = state_dict["rng"]
        else:
            set_rng_states(state_dict["rng"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None


class EpochLog(L.Callback):
    """One row per epoch in ``path`` (CSV), written on rank 0 at the epoch's end (after its
    validation), just before ``last.ckpt``: epoch (from 0), step, train_loss (mean over the
    epoch's batches), val_loss, val_macro_auroc, lr, seconds (training + validation of the
    epoch) and ``val_auroc_<finding>`` per finding (empty where the validation split lacks a
    class).
    On resume the rows written after the checkpoint are dropped, so each epoch appears once.
    """

    def __init__(self, path: Path, findings: list[str]):
        self.path = Path(path)
        self.findings = list(findings)
        self.columns = ["epoch", "step", "train_loss", "val_loss", "val_macro_auroc", "lr"]
        self.columns += ["seconds", *(f"val_auroc_{f}" for f in self.findings)]
        self.rows = 0
        self._loss_sum, self._loss_n, self._seconds = 0.0, 0, 0.0
        self._t0 = time.perf_counter()
        self._rank_zero = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank_zero = trainer.is_global_zero

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._loss_n, self._seconds = 0.0, 0, 0.0
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        n = len(batch[1])
        self._loss_sum += float(loss.detach()) * n
        self._loss_n += n

    def _elapsed(self) -> float:
        return self._seconds + time.perf_counter() - self._t0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._rank_zero:
            return
        val = getattr(pl_module, "card", {}).get("val_metrics") or {}
        per_class = val.get("auroc") or {}
        val_loss = trainer.callback_metrics.get("val_loss")
        row = [
            trainer.current_epoch,
            trainer.global_step,
            self._loss_sum / self._loss_n if self._loss_n else math.nan,
            float(val_loss) if val_loss is not None else math.nan,
            val.get("macro_auroc", math.nan),
            trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan,
            round(self._elapsed(), 2),
            *(per_class.get(f) for f in self.findings),
        ]
        new = not self.path.is_file()
        with self.path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(self.columns)
            writer.writerow(["" if v is None else v for v in row])
        self.rows += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "loss_sum": self._loss_sum,
            "loss_n": self._loss_n,
            "seconds": self._elapsed(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = int(state_dict["rows"])
        self._loss_sum, self._loss_n = state_dict["loss_sum"], int(state_dict["loss_n"])
        self._seconds = float(state_dict["seconds"])
        if self._rank_zero:
            keep_rows(self.path, self.rows)
