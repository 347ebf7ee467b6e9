"""Prediction: a :class:`Predictor` from a checkpoint, for files and for the image cache.

Preprocessing is exactly training's: the image is letterboxed to the cache size recorded in
the card (aspect kept, zero padding), then resized to the input size and normalised by
:func:`cxrkit.models.inputs.eval_transform`. Outputs are probabilities ``(N, C)`` and 0/1 calls
at the card's per-finding thresholds (0.5 where none were tuned), and on request the
penultimate features ``(N, D)`` (:meth:`Predictor.features_batch`,
:meth:`Predictor.embed_manifest`) that the input gate and linear probes use.

Device and precision are resolved by :func:`cxrkit.models.devices.resolve_runtime` (``cpu`` by
default here, ``auto`` on the command line); bf16 or fp16 run the model under autocast, fp32
without it (exact). On CUDA, cache batches are pinned and copied asynchronously.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrkit.data.batches import CacheBatches, cache_spec, sequential_batches
from cxrkit.data.manifest import Manifest
from cxrkit.data.preprocess import Clahe, prepare_image
from cxrkit.deploy.backends import (
    ArrayBackend,
    TorchBackend,
    copy_applies,
    create_backend,
    resolve_backend,
)
from cxrkit.deploy.gate import InputGate, Verdict
from cxrkit.deploy.onnx_cache import onnx_copy_backend
from cxrkit.errors import UserError
from cxrkit.evaluate.calibration import Calibrator
from cxrkit.models.checkpoint import LoadedModel, load_model
from cxrkit.models.devices import AUTOCAST_DTYPES, resolve_runtime
from cxrkit.models.inputs import eval_transform, normalize, to_unit, tta_views


class Predictor:
    """Checkpoint -> preprocess -> probabilities -> calls. CPU by default; ``device`` and
    ``precision`` take what ``--device`` / ``--precision`` take (:mod:`cxrkit.models.devices`)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        tta: bool = False,
        backend: str = "auto",
        onnx_copy: bool = False,
    ):
        """``onnx_copy``: where ``backend`` ``auto`` runs a bundle's ONNX file (the CPU at
        fp32), run a checkpoint file through an ONNX copy exported once beside it
        (:mod:`cxrkit.deploy.onnx_cache`; PyTorch after a warning when that fails)."""
        self.runtime = resolve_runtime(device, precision)
        self.device = self.runtime.device
        self.precision = self.runtime.precision  # fp32, bf16 or fp16
        self.backend_name = resolve_backend(backend, loaded, self.device, self.precision)
        self.loaded = loaded
        self.card = loaded.card
        self.findings = loaded.findings
        self.thresholds = loaded.thresholds()
        self.batch_size = batch_size
        copy = None
        if onnx_copy and copy_applies(backend, loaded, self.device, self.precision):
            copy = onnx_copy_backend(loaded)
        self.model = loaded.model.to(self.device).eval().to(memory_format=torch.channels_last)
        if copy is not None:
            self.backend_name = "onnx"
            self.backend: TorchBackend | ArrayBackend = copy
        else:
            self.backend = create_backend(self.backend_name, loaded, self.model)
        self.torch_backend = TorchBackend(self.model)
        self.tta = tta
        norm = self.card["normalization"]
        self.mean, self.std = float(norm["mean"]), float(norm["std"])
        self.input_size = int(self.card["input_size"])
        self.letterbox_size = int(norm.get("letterbox_size", self.input_size))
        self.clahe = Clahe.from_dict(norm.get("clahe"))
        calibration = self.card.get("calibration")
        self.calibrator = Calibrator.from_dict(calibration) if calibration else None
        self.gate = InputGate.from_card(self.card)  # None: no input gate fitted

    def runtime_record(self) -> dict[str, str]:
        """``{"device": "cuda:0", "precision": "bf16", "backend": "torch"}``: what ``eval``'s
        metrics.json, ``infer``'s record and ``serve``'s ``/v1/model`` store as ``runtime``."""
        return {
            "device": str(self.device),
            "precision": self.precision,
            "backend": self.backend_name,
        }

    def autocast(self) -> torch.autocast:
        """The autocast context of :attr:`precision` (disabled for fp32)."""
        dtype = AUTOCAST_DTYPES.get(self.precision, torch.bfloat16)
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32")

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` on the model's device (asynchronously from pinned memory on CUDA)."""
        return images.to(self.device, non_blocking=images.is_pinned())

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> Predictor:
        return cls(load_model(path), **kwargs)  # type: ignore[arg-type]

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 -> ``(1, L, L)`` uint8 prepared as the training cache was."""
        return prepare_image(pixels, self.letterbox_size, self.clahe)[None]

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 1, L, L)`` uint8 -> ``(N, 1, S, S)`` normalised float on the model's device."""
        return eval_transform(self.to_device(images), self.input_size, self.mean, self.std)

    def predict_batch(self, images: torch.Tensor, *, calibrated: bool = True) -> np.ndarray:
        """``(N, 1, L, L)`` uint8 -> ``(N, C)`` float64 probabilities, calibrated when the card
        holds a calibration (fitted on validation by ``cxrkit eval``) and ``calibrated``.

        channels_last always; bf16 or fp16 autocast unless fp32 (probabilities stay within 0.01 of
        fp32, checked by a test); with ``tta`` the logits are averaged over six views (the
        image, a 6% zoom and four 3% shifts; never a horizontal flip)."""
        return self._forward(images, calibrated=calibrated, features=False)[0]

    def predict_with_features(
        self, images: torch.Tensor, *, calibrated: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 1, L, L)`` uint8 -> ``(N, C)`` float64 probabilities (as :meth:`predict_batch`)
        and ``(N, D)`` float32 penultimate features, from the same forward pass where the
        backend gives both (see :mod:`cxrkit.deploy.backends`). With ``tta`` the features are
        the plain view's, the one the input gate was fitted on."""
        probs, features = self._forward(images, calibrated=calibrated, features=True)
        assert features is not None
        return probs, features

    def predict_gated(
        self, images: torch.Tensor, checks: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, list[Verdict | None]]:
        """``(N, 1, L, L)`` uint8 and each image's structural reasons
        (:func:`cxrkit.deploy.gate.structural_reasons`) -> ``(N, C)`` probabilities and ``N``
        input-gate verdicts from one forward pass (all None when the card has no gate)."""
        if self.gate is None:
            return self.predict_batch(images), [None] * len(images)
        probs, features = self.predict_with_features(images)
        return probs, list(self.gate.judge(features, checks))

    def features_batch(self, images: torch.Tensor) -> np.ndarray:
        """``(N, 1, L, L)`` uint8 -> ``(N, D)`` float32 pooled pre-logit features of the plain
        (un-augmented) view; ``D`` is :attr:`feature_dim`."""
        return self.predict_with_features(images, calibrated=False)[1]

    @property
    def feature_dim(self) -> int:
        """``D``: the length of a feature vector (timm's ``num_features``)."""
        return int(self.model.num_features)

    @torch.inference_mode()
    def _forward(
        self, images: torch.Tensor, *, calibrated: bool, features: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        images = self.to_device(images)
        views = (
            tta_views(images, self.input_size) if self.tta else [to_unit(images, self.input_size)]
        )
        feats: torch.Tensor | None = None
        logits = []
        with self.autocast():
            for k, view in enumerate(views):
                x = normalize(view, self.mean, self.std).contiguous(
                    memory_format=torch.channels_last
                )
                if features and k == 0:
                    out, feats = self.backend.with_features(x)
                    if feats is None:  # an ONNX file without a features output
                        feats = self.torch_backend.with_features(x.to(self.device))[1]
                else:
                    out = self.backend(x)
                logits.append(out.float())
        probs = torch.sigmoid(torch.stack(logits).mean(dim=0)).cpu().numpy().astype(np.float64)
        if calibrated and self.calibrator is not None:
            probs = self.calibrator.apply(probs)
        return probs, None if feats is None else feats.float().cpu().numpy()

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
        pin = self.device.type == "cuda"
        for images, _ in tqdm(batches, desc="predicting", total=total, disable=not progress):
            yield images.pin_memory() if pin else images

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

    def predict_embed_manifest(
        self,
        manifest: Manifest,
        rows: pd.DataFrame,
        *,
        progress: bool = False,
        calibrated: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(len(rows), C)`` probabilities (as :meth:`predict_manifest`) and ``(len(rows), D)``
        float32 penultimate features of manifest rows, from one pass over the image cache."""
        probs, feats = [], []
        for images in self.manifest_batches(manifest, rows, progress=progress):
            p, f = self.predict_with_features(images, calibrated=calibrated)
            probs.append(p)
            feats.append(f)
        if not probs:
            return np.zeros((0, len(self.findings))), np.zeros((0, self.feature_dim), np.float32)
        return np.concatenate(probs), np.concatenate(feats)

    def embed_manifest(
        self, manifest: Manifest, rows: pd.DataFrame, *, progress: bool = False
    ) -> np.ndarray:
        """``(len(rows), D)`` float32 penultimate features of manifest rows (from the image
        cache, in order): the embedding a linear probe or the input gate is fitted on."""
        return self.predict_embed_manifest(manifest, rows, progress=progress, calibrated=False)[1]
