"""Checkpoints and the model card they carry.

A cxrkit checkpoint is a Lightning checkpoint with one extra top-level key, ``model_card``:
a plain dict holding everything needed to use the weights without the training config::

    {"format": "cxrkit-model-card/1", "findings": [...], "backbone": "densenet121",
     "in_chans": 1, "input_size": 224,
     "normalization": {"mean": 0.449, "std": 0.226, "input": "uint8/255, letterboxed"},
     "thresholds": null | {"values": {finding: t}, "method": "f1", "split": "val", ...},
     "calibration": null, "training_data": {...}, "val_metrics": {...}, "cxrkit_version": ...}

Loading uses ``torch.load(weights_only=True)``: nothing is unpickled but tensors and plain data.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrkit.errors import UserError
from cxrkit.models import create_model

CARD_FORMAT = "cxrkit-model-card/1"


@dataclass
class LoadedModel:
    """An eval-mode model on CPU and its card."""

    model: nn.Module
    card: dict[str, Any]

    @property
    def findings(self) -> list[str]:
        return list(self.card["findings"])

    def thresholds(self) -> np.ndarray:
        """``(C,)`` per-finding thresholds from the card; 0.5 where none were tuned."""
        values = (self.card.get("thresholds") or {}).get("values", {})
        return np.array([values.get(f, 0.5) for f in self.findings], dtype=np.float64)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``); clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise UserError(
            f"{path} is not a readable checkpoint: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(ckpt, dict) or "model_card" not in ckpt or "state_dict" not in ckpt:
        raise UserError(
            f"{path} is not a cxrkit checkpoint (no model card); was it made by `cxrkit train`?"
        )
    return ckpt


def load_checkpoint(path: str | Path) -> LoadedModel:
    """Rebuild the model from the card and load the weights (strict: every key must match)."""
    ckpt = read_checkpoint(path)
    card = ckpt["model_card"]
    model = create_model(card["backbone"], len(card["findings"]), pretrained=False)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not match backbone {card['backbone']!r} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return LoadedModel(model=model.eval(), card=card)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def update_card(path: str | Path, **changes: Any) -> dict[str, Any]:
    """Set keys of the card stored in checkpoint ``path`` (atomically); returns the new card."""
    ckpt = read_checkpoint(path)
    ckpt["model_card"] = {**ckpt["model_card"], **changes}
    atomic_torch_save(ckpt, path)
    return ckpt["model_card"]
