"""The work behind ``POST /v1/predict``: decode an upload, predict it, optionally draw CAMs.

Runs in the server's worker threads. Decoding is :func:`cxrkit.io.read_xray_bytes` (content
sniffing, DICOM windowing, decompression-bomb guard), prediction is
:class:`cxrkit.deploy.predictor.Predictor` (the card's calibration and thresholds) and heatmaps are
:func:`cxrkit.explain.heatmaps`, so the server sees exactly what ``infer`` and ``cam`` see.

Every answer carries ``input_gate`` (:mod:`cxrkit.deploy.gate`: ``ood_score``,
``in_distribution``, ``reasons``, ``threshold``, ``false_alarm_rate``; ``ood_score`` is null
for a structural failure, JSON having no infinity), or ``"input_gate": null`` with
``"warnings": ["no input gate: ..."]`` for a model whose card has none.

Model calls hold one lock: a CAM hooks the network's target layer, and a forward pass from
another thread at the same time would feed those hooks. Decoding and PNG encoding run outside
it, so ``--workers`` > 1 overlaps them with the model.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import cv2
import numpy as np
import torch

from cxrkit import __version__
from cxrkit.deploy.gate import NO_GATE_WARNING, structural_reasons
from cxrkit.deploy.model_card import MODEL_CARD_MD, model_card_markdown
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import did_you_mean
from cxrkit.explain.cam import heatmaps
from cxrkit.files import strict_json
from cxrkit.io.images import read_xray_bytes
from cxrkit.io.xray import XRay

DISCLAIMER = (
    "Research software, not a medical device. These outputs are not a diagnosis and must not "
    "be used for clinical decisions."
)
#: Keys of the model card shown by ``GET /v1/model`` (paths and the training config stay out).
CARD_KEYS = (
    "format",
    "findings",
    "backbone",
    "in_chans",
    "input_size",
    "normalization",
    "thresholds",
    "calibration",
    "val_metrics",
    "test_metrics",
    "cxrkit_version",
    "exported",
)
#: Name given to every upload: the client's file name is never read, so never logged.
UPLOAD_NAME = "upload"


def png_base64(gray: np.ndarray) -> str:
    """``(H, W)`` uint8 -> base64 text of a grayscale PNG."""
    ok, buf = cv2.imencode(".png", gray)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """A [0, 1] float heatmap as uint8 0..255."""
    return np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)


def display_shape(height: int, width: int, limit: int) -> tuple[int, int]:
    """``(h, w)`` with the long side at most ``limit``, aspect kept."""
    scale = min(1.0, limit / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class Engine:
    """A :class:`Predictor` and what the API needs around it; thread-safe."""

    def __init__(self, predictor: Predictor, *, max_pixels: int, display_size: int) -> None:
        self.predictor = predictor
        self.findings = list(predictor.findings)
        self.max_pixels = max_pixels
        self.display_size = display_size
        self.model_lock = threading.Lock()

    def model_card(self) -> dict[str, Any]:
        """The card's public fields as strict JSON (NaN -> null), with the server's version and
        ``runtime``: where the model runs, ``{"device": "cuda:0", "precision": "bf16",
        "backend": "torch"}`` (:meth:`Predictor.runtime_record`)."""
        card = {k: self.predictor.card.get(k) for k in CARD_KEYS if k in self.predictor.card}
        card["thresholds_applied"] = dict(
            zip(self.findings, map(float, self.predictor.thresholds), strict=True)
        )
        card["calibrated"] = self.predictor.calibrator is not None
        gate = self.predictor.gate
        card["input_gate"] = gate.summary() if gate is not None else None
        card["runtime"] = self.predictor.runtime_record()
        card["server"] = {"cxrkit_version": __version__}
        card["disclaimer"] = DISCLAIMER
        return strict_json(card)

    def model_card_markdown(self) -> str:
        """``MODEL_CARD.md``: a bundle's own file (written at export, with the evaluation it
        was given); for a checkpoint, written now from its card (validation figures only)."""
        source = self.predictor.loaded.source
        if source is not None and source.is_dir() and (source / MODEL_CARD_MD).is_file():
            return (source / MODEL_CARD_MD).read_text()
        return model_card_markdown(self.predictor.card)

    def cam_targets(self, cam: str | None) -> str | list[str] | None:
        """``cam`` query value -> :func:`heatmaps` targets: None (no CAM), ``positive``,
        ``all`` or a list of finding names. Raises UserError for an unknown name."""
        if cam is None or cam.lower() in ("", "false", "0", "no"):
            return None
        if cam.lower() in ("true", "1", "yes", "positive"):
            return "positive"
        if cam.lower() == "all":
            return "all"
        names = [n.strip() for n in cam.split(",") if n.strip()]
        for name in names:
            if name not in self.findings:
                raise did_you_mean(name, [*self.findings, "true", "all"], what="cam value")
        return names

    def decode(self, data: bytes) -> XRay:
        """The upload's pixels as the model sees them; ImageReadError says why not."""
        return read_xray_bytes(data, name=UPLOAD_NAME, max_pixels=self.max_pixels)

    def predict(
        self, data: bytes, *, cam: str | list[str] | None = None, image: bool = False
    ) -> dict[str, Any]:
        """Decode ``data`` and predict it. ``cam``: targets from :meth:`cam_targets`;
        ``image``: include the decoded image (what the model sees) as a PNG."""
        xray = self.decode(data)
        p = self.predictor
        letterboxed = torch.from_numpy(p.preprocess(xray.pixels)[None])
        cams = []
        checks = structural_reasons(xray) if p.gate is not None else []
        with self.model_lock:
            batch_probs, verdicts = p.predict_gated(letterboxed, [checks])
            probs = batch_probs[0]
            if cam is not None:
                cams = heatmaps(p, xray.pixels, cam)
        calls = p.calls(probs[None])[0]
        height, width = xray.pixels.shape
        shown = display_shape(height, width, self.display_size)
        result: dict[str, Any] = {
            "findings": [
                {
                    "finding": name,
                    "probability": float(probs[j]),
                    "threshold": float(p.thresholds[j]),
                    "call": bool(calls[j]),
                }
                for j, name in enumerate(self.findings)
            ],
            "positive": [name for j, name in enumerate(self.findings) if calls[j]],
            "calibrated": p.calibrator is not None,
            "input_gate": None
            if p.gate is None or verdicts[0] is None
            else strict_json(p.gate.api(verdicts[0])),
            "image_info": {
                "format": xray.format,
                "width": width,
                "height": height,
                "bits_stored": xray.bits_stored,
            },
            "disclaimer": DISCLAIMER,
        }
        if p.gate is None:
            result["warnings"] = [NO_GATE_WARNING]
        if image:
            result["image"] = png_base64(self._resize(xray.pixels, shown))
        if cam is not None:
            result["heatmaps"] = {
                c.finding: png_base64(self._resize(to_uint8(c.heatmap), shown)) for c in cams
            }
            result["heatmap_size"] = {"width": shown[1], "height": shown[0]}
        return result

    @staticmethod
    def _resize(gray: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        if gray.shape == shape:
            return gray
        return cv2.resize(gray, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
