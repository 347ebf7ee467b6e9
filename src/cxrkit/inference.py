"""Prediction: a :class:`Predictor` from a checkpoint, for files and for the image cache.

Preprocessing is exactly training's: the image is letterboxed to the cache size recorded in
the card (aspect kept, zero padding), then resized to the input size and normalised by
:func:`cxrkit.transforms.eval_transform`. Outputs are probabilities ``(N, C)`` and 0/1 calls
at the card's per-finding thresholds (0.5 where none were tuned).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrkit.calibration import Calibrator
from cxrkit.checkpoint import LoadedModel, load_checkpoint
from cxrkit.data import CacheBatches, cache_spec, make_loader
from cxrkit.errors import UserError
from cxrkit.io import ImageReadError, read_xray
from cxrkit.manifest import Manifest
from cxrkit.preprocess import Clahe, prepare_image
from cxrkit.transforms import eval_transform

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass
class Prediction:
    """One file's result: probabilities ``(C,)`` or the error that prevented them."""

    path: str
    probs: np.ndarray | None
    error: str | None = None


class Predictor:
    """Checkpoint -> preprocess -> probabilities -> calls. CPU by default."""

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 16, device: str = "cpu"):
        self.loaded = loaded
        self.card = loaded.card
        self.findings = loaded.findings
        self.thresholds = loaded.thresholds()
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        norm = self.card["normalization"]
        self.mean, self.std = float(norm["mean"]), float(norm["std"])
        self.input_size = int(self.card["input_size"])
        self.letterbox_size = int(norm.get("letterbox_size", self.input_size))
        self.clahe = Clahe.from_dict(norm.get("clahe"))
        calibration = self.card.get("calibration")
        self.calibrator = Calibrator.from_dict(calibration) if calibration else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> Predictor:
        return cls(load_checkpoint(path), **kwargs)  # type: ignore[arg-type]

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 -> ``(1, L, L)`` uint8 prepared as the training cache was."""
        return prepare_image(pixels, self.letterbox_size, self.clahe)[None]

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 1, L, L)`` uint8 -> ``(N, 1, S, S)`` normalised float on the model's device."""
        return eval_transform(images.to(self.device), self.input_size, self.mean, self.std)

    @torch.inference_mode()
    def predict_batch(self, images: torch.Tensor, *, calibrated: bool = True) -> np.ndarray:
        """``(N, 1, L, L)`` uint8 -> ``(N, C)`` float64 probabilities, calibrated when the card
        holds a calibration (fitted on validation by ``cxrkit eval``) and ``calibrated``."""
        logits = self.model(self.model_input(images))
        probs = torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)
        if calibrated and self.calibrator is not None:
            probs = self.calibrator.apply(probs)
        return probs

    def calls(self, probs: np.ndarray) -> np.ndarray:
        """``(N, C)`` probabilities -> ``(N, C)`` 0/1 calls at the card's thresholds."""
        return (probs >= self.thresholds).astype(np.int8)

    def predict_files(
        self, paths: Iterable[str | Path], *, progress: bool = False, total: int | None = None
    ) -> Iterator[Prediction]:
        """Predict each file; an unreadable file yields a Prediction with its error."""
        batch: list[tuple[str, np.ndarray]] = []
        for path in tqdm(paths, total=total, desc="predicting", unit="img", disable=not progress):
            try:
                batch.append((str(path), self.preprocess(read_xray(path).pixels)))
            except ImageReadError as err:
                yield Prediction(str(path), None, err.reason)
                continue
            if len(batch) == self.batch_size:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)

    def _flush(self, batch: list[tuple[str, np.ndarray]]) -> Iterator[Prediction]:
        probs = self.predict_batch(torch.from_numpy(np.stack([b[1] for b in batch])))
        for (path, _), p in zip(batch, probs, strict=True):
            yield Prediction(path, p)

    def predict_manifest(
        self, manifest: Manifest, rows: pd.DataFrame, *, progress: bool = False,
        calibrated: bool = True,
    ) -> np.ndarray:
        """``(len(rows), C)`` probabilities for manifest rows, read from the image cache."""
        spec = cache_spec(manifest)
        if spec.size != self.letterbox_size:
            raise UserError(
                f"{manifest.folder} caches images at {spec.size} px but this model "
                f"was trained on a {self.letterbox_size} px cache; prepare again "
                f"with --size {self.letterbox_size}"
            )
        dummy = np.zeros((len(rows), len(self.findings)), np.float32)
        loader = make_loader(
            CacheBatches([spec], np.zeros(len(rows)), rows["cache_index"].to_numpy(), dummy),
            batch_size=max(self.batch_size, 32),
            shuffle=False,
        )
        out = [
            self.predict_batch(images, calibrated=calibrated)
            for images, _ in tqdm(loader, desc="predicting", disable=not progress)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.findings)))


def list_images(source: str | Path) -> list[Path]:
    """A file, or the image files (by suffix) under a folder, recursively, sorted."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserError(f"--source {source} does not exist")
    files = sorted(
        p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {source}")
    return files


def write_predictions(
    predictor: Predictor, paths: list[Path], out_csv: str | Path, *, progress: bool = True
) -> tuple[int, int]:
    """Stream one CSV row per image: ``path, status, prob_<finding>..., call_<finding>...,
    findings``. Returns ``(n_ok, n_failed)``."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    names = predictor.findings
    header = [
        "path",
        "status",
        *(f"prob_{f}" for f in names),
        *(f"call_{f}" for f in names),
        "findings",
    ]
    n_ok = n_failed = 0
    with out_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for pred in predictor.predict_files(paths, progress=progress, total=len(paths)):
            if pred.probs is None:
                n_failed += 1
                writer.writerow([pred.path, f"error: {pred.error}", *[""] * (2 * len(names) + 1)])
                continue
            n_ok += 1
            calls = predictor.calls(pred.probs[None])[0]
            positive = "|".join(f for f, c in zip(names, calls, strict=True) if c)
            writer.writerow(
                [
                    pred.path,
                    "ok",
                    *(f"{p:.6f}" for p in pred.probs),
                    *(int(c) for c in calls),
                    positive,
                ]
            )
    return n_ok, n_failed
