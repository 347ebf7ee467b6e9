"""CAM heatmaps (pytorch-grad-cam) per finding, as overlays on the original image.

Methods by name (case-insensitive): GradCAM, GradCAM++, HiResCAM, EigenCAM, ScoreCAM, LayerCAM.
The CAM target is the finding's **logit** (``ClassifierOutputTarget``), not the sigmoid.
EigenCAM ignores the target (first principal component of the activations), so it draws the
same map for every finding. The target layers come from :func:`cxrkit.explain.layers.cam_layers`:
the family's last feature map, or two earlier stages fused when that map is too coarse for
the input size; ``layers`` names any other modules.

The heatmap is computed on the target layer's grid, upsampled bicubically with each cell placed
at its receptive field's measured centre (:mod:`cxrkit.explain.grid`), then mapped back through the
letterbox to the original image's pixels, so the overlay lines up with the image at its own
resolution. Hooks
are removed when each computation ends, whether it succeeds or fails.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from tqdm import tqdm

from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.sources import resolve_sources
from cxrkit.errors import UserError, did_you_mean
from cxrkit.explain.grid import CellCentres, cell_centres, place_grid
from cxrkit.explain.layers import CamLayer, cam_layers
from cxrkit.files import claim_folder
from cxrkit.io.geometry import letterbox_geometry
from cxrkit.io.images import read_xray
from cxrkit.io.xray import ImageReadError

METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "layercam": LayerCAM,
}

#: ScoreCAM masks the input with each of the target layer's C channels: C forward passes,
#: this many at a time (the library's default is 16).
SCORECAM_BATCH = 64


def resolve_method(name: str) -> str:
    """The :data:`METHODS` key of ``name`` (case, ``-``, ``_`` and spaces ignored)."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in METHODS:
        raise did_you_mean(name, METHODS, what="CAM method")
    return key


@contextmanager
def open_cam(model: nn.Module, layer: CamLayer, method: str) -> Iterator[BaseCAM]:
    """A CAM object of ``method`` on ``model`` hooking ``layer``, its hooks removed on exit.

    Not ``with cam:``: pytorch-grad-cam's ``__exit__`` swallows an ``IndexError`` (it prints
    it), which would silently drop results; here every exception propagates.
    """
    cam = METHODS[resolve_method(method)](
        model=model, target_layers=[layer.module], reshape_transform=layer.reshape
    )
    if isinstance(cam, ScoreCAM):
        cam.batch_size = SCORECAM_BATCH
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


@dataclass
class CamResult:
    """One finding's heatmap ``(H, W)`` in [0, 1] on the original image, and its probability."""

    finding: str
    probability: float
    heatmap: np.ndarray
    overlay_path: Path | None = None


def heatmaps(
    predictor: Predictor,
    pixels: np.ndarray,
    targets: str | Sequence[str],
    *,
    method: str = "gradcam",
    layers: Sequence[str] | None = None,
) -> list[CamResult]:
    """CAMs of ``pixels`` ``(H, W)`` uint8 for ``targets``: a finding name, a list of them,
    ``positive`` (findings called positive at the card's thresholds, else the most probable
    one) or ``all``, on the modules named ``layers`` (default: see :mod:`cxrkit.explain.layers`);
    with several layers, the mean of their maps (each in [0, 1] on its own grid, placed on
    the letterbox square). Each heatmap is ``(H, W)`` float32 in [0, 1]."""
    resolve_method(method)
    targets_layers = cam_targets(predictor, layers)
    letterboxed = torch.from_numpy(predictor.preprocess(pixels)[None])
    probs = predictor.predict_batch(letterboxed)[0]
    findings = predictor.findings
    if targets == "all":
        chosen = list(range(len(findings)))
    elif targets == "positive":
        chosen = list(np.flatnonzero(predictor.calls(probs[None])[0])) or [int(np.argmax(probs))]
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        for name in names:
            if name not in findings:
                raise did_you_mean(name, [*findings, "positive", "all"], what="CAM target")
        chosen = [findings.index(name) for name in names]
    x = predictor.model_input(letterboxed)
    side = predictor.letterbox_size
    squares = {j: np.zeros((side, side), np.float32) for j in chosen}
    for layer, centres in targets_layers:
        with open_cam(predictor.model, layer, method) as cam:
            cam.get_target_width_height = lambda _x: None  # keep the layer's grid (cam_grid)
            for j in chosen:
                grid = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(j))])[0]
                square = place_grid(grid, side, predictor.input_size, centres)
                squares[j] += square / len(targets_layers)
    return [
        CamResult(findings[j], float(probs[j]), to_original(squares[j], pixels.shape, side))
        for j in chosen
    ]


Target = tuple[CamLayer, CellCentres | None]
_TARGETS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], list[Target]]] = (
    weakref.WeakKeyDictionary()
)


def cam_targets(predictor: Predictor, layers: Sequence[str] | None = None) -> list[Target]:
    """The predictor's CAM layers (``layers`` or the default), each with its measured cell
    centres (None for transformers, whose patch grid follows the half-pixel convention
    exactly); worked out once per model and layer list. The probes feed CPU tensors, so a
    model on a GPU is moved to the CPU for them and back (in place: the modules stay the ones
    the hooks are set on)."""
    model = predictor.model
    per_model = _TARGETS.setdefault(model, {})
    key = tuple(layers or ())
    if key not in per_model:
        model.to("cpu")
        try:
            found = cam_layers(model, predictor.card["backbone"], predictor.input_size, layers)
            per_model[key] = [
                (
                    layer,
                    None
                    if layer.reshape is not None
                    else cell_centres(model, layer.module, predictor.input_size),
                )
                for layer in found
            ]
        finally:
            model.to(predictor.device)
    return per_model[key]


def to_original(heatmap: np.ndarray, shape: tuple[int, int], letterbox_size: int) -> np.ndarray:
    """Map a heatmap over the letterboxed square (any size; ``(L, L)`` from
    :func:`cxrkit.explain.grid.place_grid`) to the original ``(H, W)``, cropping the padding."""
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
    cv2.putText(
        band,
        title,
        (4, band_h - 7),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (0, 0, 0),
        max(1, round(scale * 1.5)),
        cv2.LINE_AA,
    )
    return np.concatenate([band, body], axis=0)


def cam_image(
    predictor: Predictor,
    image: str | Path,
    out_dir: str | Path,
    *,
    targets: str = "positive",
    method: str = "gradcam",
    layers: Sequence[str] | None = None,
    name: str | None = None,
) -> list[CamResult]:
    """Write ``OUT/<name>_<finding>.png`` overlays and ``.npy`` heatmaps for one image;
    ``name`` (default: the file's stem) may hold sub-folders, e.g. ``ward1/img7``."""
    pixels = read_xray(image).pixels
    results = heatmaps(predictor, pixels, targets, method=method, layers=layers)
    base = Path(out_dir) / (name or Path(image).stem)
    base.parent.mkdir(parents=True, exist_ok=True)
    for r in results:
        stem = f"{base.name}_{r.finding.replace(' ', '_')}"
        r.overlay_path = base.with_name(f"{stem}.png")
        title = f"{r.finding}  p={r.probability:.2f}  ({resolve_method(method)})"
        cv2.imwrite(str(r.overlay_path), overlay(pixels, r.heatmap, title))
        np.save(base.with_name(f"{stem}.npy"), r.heatmap.astype(np.float32))
    return results


@dataclass
class FolderResult:
    """What :func:`cam_folder` did: results per image written, and ``(path, reason)`` skips."""

    written: dict[Path, list[CamResult]] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def cam_folder(
    predictor: Predictor,
    source: str | Path,
    out_dir: str | Path,
    *,
    targets: str = "positive",
    method: str = "gradcam",
    layers: Sequence[str] | None = None,
    progress: bool = True,
) -> FolderResult:
    """CAMs of a file, or of every image under a folder (recursive), written as
    ``OUT/<path relative to the folder, without suffix>_<finding>.png``. Unreadable images
    are recorded in :attr:`FolderResult.failed` and skipped."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"--image {source} does not exist")
    resolve_method(method)
    paths = resolve_sources(source)
    claim_folder(out_dir, "cam overlays", resume=True)  # overlays replace only overlays
    result = FolderResult()
    for path in tqdm(paths, desc=f"cam ({method})", unit="img", disable=not progress):
        name = str(path.relative_to(source).with_suffix("")) if source.is_dir() else path.stem
        try:
            result.written[path] = cam_image(
                predictor, path, out_dir, targets=targets, method=method, layers=layers, name=name
            )
        except ImageReadError as err:
            result.failed.append((path, err.reason))
    return result
