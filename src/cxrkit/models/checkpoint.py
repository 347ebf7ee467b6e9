"""Checkpoints and the model card they carry.

A cxrkit checkpoint is a Lightning checkpoint with one extra top-level key, ``model_card``:
a plain dict holding everything needed to use the weights without the training config::

    {"format": "cxrkit-model-card/1", "findings": [...], "backbone": "densenet121",
     "in_chans": 1, "input_size": 224,
     "normalization": {"mean": 0.449, "std": 0.226, "input": "uint8/255, letterboxed"},
     "thresholds": null | {"values": {finding: t}, "method": "f1", "split": "val", ...},
     "calibration": null, "training_data": {...}, "val_metrics": {...}, "cxrkit_version": ...}

Loading uses ``torch.load(weights_only=True)``: nothing is unpickled but tensors and plain data.

A *bundle* (``cxrkit export``) is a folder holding the same card as ``model_card.json`` (with
``"format": "cxrkit-bundle/1"`` and each file's sha256), the weights as ``model.safetensors``
and optionally ``model.onnx``. :func:`load_model` takes either a checkpoint or a bundle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cxrkit import __version__
from cxrkit.errors import UserError
from cxrkit.files import atomic_write
from cxrkit.models.backbones import create_model
from cxrkit.models.encoders import encoder_from_card

CARD_FORMAT = "cxrkit-model-card/1"
BUNDLE_FORMAT = "cxrkit-bundle/1"
BUNDLE_CARD = "model_card.json"
BUNDLE_WEIGHTS = "model.safetensors"


def new_model_card(
    findings: list[str],
    backbone: str,
    input_size: int,
    normalization: dict[str, Any],
    *,
    output_stride: int = 32,
    training_data: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A card before any tuning: no thresholds, calibration or validation metrics yet.
    ``training``, ``embed`` and ``import`` start from it and add their own keys (``extra``)."""
    return {
        "format": CARD_FORMAT,
        "findings": list(findings),
        "backbone": backbone,
        "output_stride": output_stride,
        "in_chans": 1,
        "input_size": input_size,
        "normalization": normalization,
        "thresholds": None,
        "calibration": None,
        "training_data": training_data,
        "val_metrics": None,
        "cxrkit_version": __version__,
        **extra,
    }


@dataclass
class LoadedModel:
    """An eval-mode model on CPU, its card and the checkpoint file or bundle folder it came from."""

    model: nn.Module
    card: dict[str, Any]
    source: Path | None = None

    @property
    def findings(self) -> list[str]:
        return list(self.card["findings"])

    @cached_property
    def source_sha256(self) -> str | None:
        """sha256 of the checkpoint file (read on first use, then kept), or of a bundle's card;
        None for a model built in memory."""
        if self.source is None:
            return None
        if self.source.is_dir():
            return hashlib.sha256((self.source / BUNDLE_CARD).read_bytes()).hexdigest()
        return file_sha256(self.source)

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
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return LoadedModel(model=_build(card, state, path), card=card, source=Path(path))


def network_from_card(card: dict[str, Any], num_classes: int | None = None) -> nn.Module:
    """The card's network with random weights, no download: a timm model from its name, a
    foundation encoder from the card's ``encoder`` section (not its source folder).
    ``num_classes`` defaults to the card's findings."""
    n = len(card["findings"]) if num_classes is None else num_classes
    if card.get("encoder"):
        return encoder_from_card(card["encoder"], n)
    return create_model(
        card["backbone"], n, pretrained=False, output_stride=card.get("output_stride", 32)
    )


def _build(card: dict[str, Any], state: dict[str, torch.Tensor], where: str | Path) -> nn.Module:
    """The card's network (:func:`network_from_card`) with ``state`` loaded; every key must
    match."""
    model = network_from_card(card)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{where}: weights do not match backbone {card['backbone']!r} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bundle_card(folder: str | Path) -> dict[str, Any]:
    """The card of bundle ``folder``, after checking every file it lists against its sha256."""
    folder = Path(folder)
    card_path = folder / BUNDLE_CARD
    if not card_path.is_file():
        raise UserError(
            f"{folder} is a folder but not a cxrkit bundle (no {BUNDLE_CARD}); "
            "make one with `cxrkit export`"
        )
    try:
        card = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{card_path} is not valid JSON: {err}") from None
    if not isinstance(card, dict) or card.get("format") != BUNDLE_FORMAT:
        found = card.get("format") if isinstance(card, dict) else None
        raise UserError(f"{card_path}: format {found!r}, expected {BUNDLE_FORMAT!r}")
    files = card.get("files") or {}
    if BUNDLE_WEIGHTS not in files:
        raise UserError(f"{card_path} lists no {BUNDLE_WEIGHTS}")
    for name, entry in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            raise UserError(f"{folder}: file {name!r} listed in {BUNDLE_CARD} is missing")
        if file_sha256(path) != entry.get("sha256"):
            raise UserError(
                f"{path}: sha256 does not match {BUNDLE_CARD}; the file changed after export "
                "(corrupt copy or tampering)"
            )
    return card


def load_bundle(folder: str | Path) -> LoadedModel:
    """Rebuild the model of an exported bundle: card JSON, sha256 checks, safetensors weights
    (strict key check). Nothing is unpickled."""
    folder = Path(folder)
    card = read_bundle_card(folder)
    try:
        state = load_file(folder / BUNDLE_WEIGHTS)
    except SafetensorError as err:
        raise UserError(
            f"{folder / BUNDLE_WEIGHTS} is not a readable safetensors file: {err}"
        ) from None
    return LoadedModel(model=_build(card, state, folder), card=card, source=folder)


def load_model(path: str | Path) -> LoadedModel:
    """A model from a checkpoint file (``cxrkit train``) or a bundle folder (``cxrkit export``)."""
    path = Path(path)
    if path.is_dir():
        return load_bundle(path)
    if path.is_file():
        return load_checkpoint(path)
    raise UserError(
        f"{path} does not exist; expected a cxrkit checkpoint file (.ckpt) or a bundle folder "
        "(from `cxrkit export`)"
    )


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def update_card(path: str | Path, **changes: Any) -> dict[str, Any]:
    """Set keys of the card stored in checkpoint ``path`` (atomically); returns the new card."""
    ckpt = read_checkpoint(path)
    ckpt["model_card"] = {**ckpt["model_card"], **changes}
    atomic_torch_save(ckpt, path)
    return ckpt["model_card"]
