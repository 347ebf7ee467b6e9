"""The one image preparation shared by the cache build and inference.

``(H, W)`` uint8 -> letterbox to ``size`` (aspect kept, zero padding) -> optional CLAHE.
Whatever the cache did to training images, inference must do to new images; the model card
records the settings (``normalization.letterbox_size`` and ``normalization.clahe``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from cxrkit.errors import UserError
from cxrkit.io.geometry import letterbox


@dataclass(frozen=True)
class Clahe:
    """OpenCV CLAHE settings: contrast limit and tile grid (tiles per side)."""

    clip_limit: float = 2.0
    tiles: int = 8

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``(S, S)`` uint8 -> ``(S, S)`` uint8 with contrast-limited adaptive equalisation."""
        return cv2.createCLAHE(self.clip_limit, (self.tiles, self.tiles)).apply(image)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> Clahe | None:
        if value is None:
            return None
        try:
            return cls(**value)
        except TypeError:
            raise UserError(f"bad CLAHE settings {value!r}; expected clip_limit, tiles") from None


def prepare_image(pixels: np.ndarray, size: int, clahe: Clahe | None = None) -> np.ndarray:
    """``(H, W)`` uint8 -> ``(size, size)`` uint8: letterboxed, then CLAHE if given.

    CLAHE runs on the letterboxed image (cheap at cache size); the zero padding stays zero.
    """
    square = letterbox(pixels, size)
    return clahe.apply(square) if clahe is not None else square
