"""Grad-CAM heatmaps (pytorch-grad-cam) per finding, as overlays on the original image.

The CAM target is the finding's **logit** (``ClassifierOutputTarget``), not the sigmoid,
and the target layer comes from :func:`cxrkit.models.cam_target_layer`. The heatmap is
computed on the model input, then mapped back through the letterbox to the original image's
pixels, so the overlay lines up with the image at its own resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrkit.errors import did_you_mean
from cxrkit.inference import Predictor
from cxrkit.io import letterbox_geometry, read_xray
from cxrkit.models import cam_target_layer

METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
}


@dataclass
class CamResult:
    """One finding's heatmap ``(H, W)`` in [0, 1] on the original image, and its probability."""

    finding: str
    probability: float
    heatmap: np.ndarray
    overlay_path: Path | None = None


def heatmaps(
    predictor: Predictor, pixels: np.ndarray, targets: str, *, method: str = "gradcam"
) -> list[CamResult]:
    """Grad-CAM of ``pixels`` ``(H, W)`` uint8 for ``targets``: a finding name, ``positive``
    (findings called positive at the card's thresholds, else the most probable one) or ``all``.
    """
    if method not in METHODS:
        raise did_you_mean(method, METHODS, what="CAM method")
    letterboxed = torch.from_numpy(predictor.preprocess(pixels)[None])
    probs = predictor.predict_batch(letterboxed)[0]
    findings = predictor.findings
    if targets == "all":
        chosen = list(range(len(findings)))
    elif targets == "positive":
        chosen = list(np.flatnonzero(predictor.calls(probs[None])[0])) or [int(np.argmax(probs))]
    elif targets in findings:
        chosen = [findings.index(targets)]
    else:
        raise did_you_mean(targets, [*findings, "positive", "all"], what="CAM target")
    x = predictor.model_input(letterboxed)
    layer = cam_target_layer(predictor.model, predictor.card["backbone"])
    results = []
    with METHODS[method](model=predictor.model, target_layers=[layer]) as cam:
        for j in chosen:
            grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(j))])[0]
            results.append(
                CamResult(
                    findings[j],
                    float(probs[j]),
                    to_original(grayscale, pixels.shape, predictor.letterbox_size),
                )
            )
    return results


def to_original(heatmap: np.ndarray, shape: tuple[int, int], letterbox_size: int) -> np.ndarray:
    """Map a model-input heatmap ``(S, S)`` to the original ``(H, W)`` via the letterbox."""
    h, w = shape
    geo = letterbox_geometry(h, w, letterbox_size)
    square = cv2.resize(
        heatmap.astype(np.float32), (letterbox_size, letterbox_size), interpolation=cv2.INTER_LINEAR
    )
    y0, x0 = geo.pad_y, geo.pad_x
    y1, x1 = y0 + round(h * geo.scale), x0 + round(w * geo.scale)
    content = square[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]
    return np.clip(cv2.resize(content, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def overlay(
    pixels: np.ndarray, heatmap: np.ndarray, title: str, *, alpha: float = 0.4
) -> np.ndarray:
    """Colour overlay ``(band + H, W + bar, 3)`` BGR uint8: a title band, the gray image with
    the jet heatmap blended in, and a colour bar from 0 (blue, bottom) to 1 (red, top)."""
    h, w = pixels.shape
    colour = cv2.applyColorMap((heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    gray = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    blended = cv2.addWeighted(gray, 1 - alpha, colour, alpha, 0)
    bar_w = max(12, w // 24)
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(bar_w, axis=1)
    bar = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)
    body = np.concatenate([blended, np.full((h, bar_w // 2, 3), 255, np.uint8), bar], axis=1)
    scale = 0.4
    (text_w, text_h), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    scale = max(0.3, min(1.5, 0.4 * 0.95 * body.shape[1] / max(text_w, 1)))
    band_h = int(text_h * scale / 0.4) + 12
    band = np.full((band_h, body.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (4, band_h - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                max(1, round(scale * 1.5)), cv2.LINE_AA)
    return np.concatenate([band, body], axis=0)


def cam_image(
    predictor: Predictor,
    image: str | Path,
    out_dir: str | Path,
    *,
    targets: str = "positive",
    method: str = "gradcam",
) -> list[CamResult]:
    """Write ``<stem>_<finding>.png`` overlays and ``.npy`` heatmaps for one image."""
    pixels = read_xray(image).pixels
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = heatmaps(predictor, pixels, targets, method=method)
    stem = Path(image).stem
    for r in results:
        safe = r.finding.replace(" ", "_")
        r.overlay_path = out_dir / f"{stem}_{safe}.png"
        title = f"{r.finding}  p={r.probability:.2f}  ({method})"
        cv2.imwrite(str(r.overlay_path), overlay(pixels, r.heatmap, title))
        np.save(out_dir / f"{stem}_{safe}.npy", r.heatmap.astype(np.float32))
    return results
