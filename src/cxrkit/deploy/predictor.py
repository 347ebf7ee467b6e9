"""Prediction: a :class:`Predictor` from a checkpoint, for files and for the image cache.

Preprocessing is exactly training's: the image is letterboxed to the cache size recorded in
the card (aspect kept, zero padding), then resized to the input size and normalised by
:func:`cxrkit.models.inputs.eval_transform`. Outputs are probabilities ``(N, C)`` and 0/1 calls
at the card's per-finding thresholds (0.5 where none were tuned).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrkit.data.batches import CacheBatches, cache_spec, sequential_batches
from cxrkit.data.manifest import Manifest
from cxrkit.data.preprocess import Clahe, prepare_image
from cxrkit.deploy.backends import create_backend, resolve_backend
from cxrkit.errors import UserError
from cxrkit.evaluate.calibration import Calibrator
from cxrkit.models.backbones import cpu_has_native_bf16
from cxrkit.models.checkpoint import LoadedModel, load_model
from cxrkit.models.inputs import eval_transform, normalize, to_unit, tta_views

PRECISIONS = ("auto", "fp32", "bf16")


class Predictor:
    """Checkpoint -> preprocess -> probabilities -> calls. CPU by default."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        batch_size: int = 16,
        device: str = "cpu",
        precision: str = "auto",
        tta: bool = False,
        backend: str = "auto",
    ):
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.loaded = loaded
        self.card = loaded.card
        self.findings = loaded.findings
        self.thresholds = loaded.thresholds()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval().to(memory_format=torch.channels_last)
        native = self.device.type == "cuda" or cpu_has_native_bf16()
        self.bf16 = precision == "bf16" or (precision == "auto" and native)
        self.backend_name = resolve_backend(backend, loaded, self.device, self.bf16)
        self.backend = create_backend(self.backend_name, loaded, self.model)
        self.tta = tta
        norm = self.card["normalization"]
        self.mean, self.std = float(norm["mean"]), float(norm["std"])
        self.input_size = int(self.card["input_size"])
        self.letterbox_size = int(norm.get("letterbox_size", self.input_size))
        self.clahe = Clahe.from_dict(norm.get("clahe"))
        calibration = self.card.get("calibration")
        self.calibrator = Calibrator.from_dict(calibration) if calibration else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> Predictor:
        return cls(load_model(path), **kwargs)  # type: ignore[arg-type]

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 -> ``(1, L, L)`` uint8 prepared as the training cache was."""
        return prepare_image(pixels, self.letterbox_size, self.clahe)[None]

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 1, L, L)`` uint8 -> ``(N, 1, S, S)`` normalised float on the model's device."""
        return eval_transform(images.to(self.device), self.input_size, self.mean, self.std)

    @torch.inference_mode()
    def predict_batch(self, images: torch.Tensor, *, calibrated: bool = True) -> np.ndarray:
        """``(N, 1, L, L)`` uint8 -> ``(N, C)`` float64 probabilities, calibrated when the card
        holds a calibration (fitted on validation by ``cxrkit eval``) and ``calibrated``.

        channels_last always; bf16 autocast when enabled (probabilities stay within 0.01 of
        fp32, checked by a test); with ``tta`` the logits are averaged over six views (the
        image, a 6% zoom and four 3% shifts; never a horizontal flip)."""
        views = (
            tta_views(images.to(self.device), self.input_size)
            if self.tta
            else [to_unit(images.to(self.device), self.input_size)]
        )
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = torch.stack(
                [
                    self.backend(
                        normalize(v, self.mean, self.std).contiguous(
                            memory_format=torch.channels_last
                        )
                    ).float()
                    for v in views
                ]
            ).mean(dim=0)
        probs = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
        if calibrated and self.calibrator is not None:
            probs = self.calibrator.apply(probs)
        return probs

    def calls(self, probs: np.ndarray) -> np.ndarray:
        """``(N, C)`` probabilities -> ``(N, C)`` 0/1 calls at the card's thresholds."""
        return (probs >= self.thresholds).astype(np.int8)

    def manifest_batches(
        self, manifest: Manifest, rows: pd.DataFrame, *, progress: bool = False
    ) -> Iterator[torch.Tensor]:
        """``(B, 1, L, L)`` uint8 batches of manifest rows, in order, from the image cache."""
        spec = cache_spec(manifest)
        if spec.size != self.letterbox_size:
            raise UserError(
                f"{manifest.folder} caches images at {spec.size} px but this model "
                f"was trained on a {self.letterbox_size} px cache; prepare again "
                f"with --size {self.letterbox_size}"
            )
        dummy = np.zeros((len(rows), len(self.findings)), np.float32)
        size = max(self.batch_size, 32)
        batches = sequential_batches(
            CacheBatches([spec], np.zeros(len(rows)), rows["cache_index"].to_numpy(), dummy),
            batch_size=size,
        )
        total = -(-len(rows) // size)
        for images, _ in tqdm(batches, desc="predicting", total=total, disable=not progress):
            yield images

    def predict_manifest(
        self,
        manifest: Manifest,
        rows: pd.DataFrame,
        *,
        progress: bool = False,
        calibrated: bool = True,
    ) -> np.ndarray:
        """``(len(rows), C)`` probabilities for manifest rows, read from the image cache."""
        out = [
            self.predict_batch(images, calibrated=calibrated)
            for images in self.manifest_batches(manifest, rows, progress=progress)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.findings)))
