"""Letterboxing: fit an ``(H, W)`` image into a square without cropping or distortion.

The cache build, inference and the CAM overlays use the same :func:`letterbox`, and
:class:`LetterboxGeometry` maps coordinates (bounding boxes, heatmaps) between the original
image and the letterboxed one.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import ArrayLike


class LetterboxGeometry(NamedTuple):
    """How :func:`letterbox` placed an image: ``letterboxed = original * scale + pad``.

    Coordinates are continuous and corner-based (pixel ``i`` spans ``[i, i + 1)``), so boxes map
    exactly; the short side is rounded to whole pixels, an error below half a letterboxed pixel.
    """

    scale: float
    pad_y: int
    pad_x: int

    def to_letterbox(self, y: ArrayLike, x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Map original ``(y, x)`` coordinates (scalars or arrays) into the letterboxed image."""
        return (
            np.asarray(y, dtype=np.float64) * self.scale + self.pad_y,
            np.asarray(x, dtype=np.float64) * self.scale + self.pad_x,
        )

    def to_original(self, y: ArrayLike, x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Map letterboxed ``(y, x)`` coordinates back to the original image."""
        return (
            (np.asarray(y, dtype=np.float64) - self.pad_y) / self.scale,
            (np.asarray(x, dtype=np.float64) - self.pad_x) / self.scale,
        )


def letterbox_layout(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
    """(scale, content height, content width, pad_y, pad_x) of a letterbox into size x size."""
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"letterbox needs positive sizes, got {height}x{width} -> {size}")
    scale = size / max(height, width)
    new_h = min(size, max(1, round(height * scale)))
    new_w = min(size, max(1, round(width * scale)))
    return scale, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


def letterbox_geometry(height: int, width: int, size: int) -> LetterboxGeometry:
    """The :class:`LetterboxGeometry` ``(scale, pad_y, pad_x)`` of :func:`letterbox` for an
    ``(height, width)`` image into ``(size, size)``."""
    scale, _, _, pad_y, pad_x = letterbox_layout(height, width, size)
    return LetterboxGeometry(scale, pad_y, pad_x)


def letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    """Fit an ``(H, W)`` image into ``(size, size)``: aspect ratio kept, never cropped.

    The long side is scaled to ``size`` (``cv2.INTER_AREA`` when shrinking, ``INTER_LINEAR``
    when enlarging), the result is centred and the border filled with 0. The dtype is kept
    (uint8 for :attr:`XRay.pixels`). :func:`letterbox_geometry` gives the mapping.
    """
    if pixels.ndim != 2:
        raise ValueError(f"letterbox expects an (H, W) array, got shape {pixels.shape}")
    height, width = pixels.shape
    scale, new_h, new_w, pad_y, pad_x = letterbox_layout(height, width, size)
    if (new_h, new_w) == (height, width):
        resized = pixels
    else:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
        if (new_h, new_w) == (size, size):
            return resized
    out = np.zeros((size, size), dtype=pixels.dtype)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out
