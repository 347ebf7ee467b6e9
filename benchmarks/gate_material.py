"""Images a chest X-ray model should refuse, as files, for the input gate's benchmark and tests.

Every group is made offline from installed packages: pydicom's test files (CT, MR, US, NM and
PT frames; deduplicated by pixel content, as many are the same image in several encodings),
the images that ship with scikit-image (``skimage.data``: photographs, micrographs,
astronomy, text, ...), seeded random noise, the negatives of given radiographs, and lateral-view
phantom films (:func:`cxrkit.data.synth.lateral.render_lateral`: a chest, but not the frontal
view the phantom models are trained on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cxrkit.data.synth.lateral import render_lateral
from cxrkit.io.images import read_xray
from cxrkit.io.xray import ImageReadError

NON_CHEST_MODALITIES = ("CT", "MR", "US", "NM", "PT")
#: skimage.data images that need a download (pooch) or are not 2-D pictures
SKIMAGE_SKIP = {
    "download_all", "data_dir", "file_hash", "image_fetcher", "load", "lbp_frontal_face",
    "stereo_motorcycle", "cells3d", "kidney", "lily", "brain", "vortex", "nickel_solidification",
    "protein_transport", "human_mitosis", "skin", "eagle", "palisades_of_vogt",
}  # fmt: skip


def _write(folder: Path, name: str, img: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    cv2.imwrite(str(path), img)
    return path


def _uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return ((a - lo) * (255 / (hi - lo))).astype(np.uint8)


def natural_images(folder: Path) -> list[Path]:
    """``skimage.data``'s bundled 2-D images as PNG files (colour ones in colour)."""
    import skimage.data as sd

    paths = []
    for name in sorted(n for n in dir(sd) if not n.startswith("_") and n not in SKIMAGE_SKIP):
        fn = getattr(sd, name)
        if not callable(fn):
            continue
        try:
            a = np.asarray(fn())
        except Exception:  # noqa: BLE001 - an image that needs a download: skip it
            continue
        if a.ndim == 3 and a.shape[2] in (3, 4):
            a = cv2.cvtColor(_uint8(a[..., :3]), cv2.COLOR_RGB2BGR)
        elif a.ndim != 2:
            continue
        if min(a.shape[:2]) >= 32:
            paths.append(_write(folder, name, _uint8(a)))
    return paths


def dicom_frames() -> list[Path]:
    """pydicom's test files of :data:`NON_CHEST_MODALITIES` that cxrkit reads with modality
    checks off, one per distinct image."""
    import pydicom
    from pydicom.data import get_testdata_files

    seen, paths = set(), []
    for file in sorted(get_testdata_files()):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
            if str(ds.get("Modality", "")) not in NON_CHEST_MODALITIES:
                continue
            xray = read_xray(file, modalities=None)
        except (ImageReadError, Exception):  # noqa: BLE001 - pydicom's deliberately broken files
            continue
        digest = hashlib.sha256(xray.pixels.tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            paths.append(Path(file))
    return paths


def noise_images(folder: Path, n: int = 40, seed: int = 0) -> list[Path]:
    """``n`` seeded noise images of assorted sizes: uniform, Gaussian, smoothed, colour."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(128, 640)), int(rng.integers(128, 640))
        kind = i % 4
        if kind == 0:
            a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        elif kind == 1:
            a = np.clip(rng.normal(128, 40, (h, w)), 0, 255).astype(np.uint8)
        elif kind == 2:
            sigma = float(rng.uniform(2, 12))
            a = _uint8(cv2.GaussianBlur(rng.normal(0, 1, (h, w)), (0, 0), sigma))
        else:
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(_write(folder, f"noise_{i:03d}", a))
    return paths


def negatives(paths: Sequence[Path], folder: Path) -> list[Path]:
    """The negatives (255 - pixels) of readable radiographs, as PNG files."""
    return [_write(folder, f"neg_{Path(p).stem}", 255 - read_xray(p).pixels) for p in paths]


def lateral_films(folder: Path, n: int = 100, size: int = 256, seed: int = 0) -> list[Path]:
    """``n`` lateral-view phantom chest films (``size`` x ``size`` px), seeds ``seed`` onward."""
    return [
        _write(folder, f"lateral_{seed + i:04d}", render_lateral(seed + i, size)) for i in range(n)
    ]
