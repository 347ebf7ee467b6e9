"""What every image reader returns and raises: :class:`XRay`, :class:`ImageReadError`.

Shared by the PNG/JPEG reader (:mod:`cxrkit.io.images`) and the DICOM reader
(:mod:`cxrkit.io.dicom`), with the two checks both apply: the pixel-count limit read from the
header before decoding (:func:`check_dimensions`) and the linear rescale of samples wider than
8 bits (:func:`minmax_to_uint8`). Both readers import this module; neither imports the other's
internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrkit.errors import UserError

DEFAULT_MAX_PIXELS = 100_000_000


class ImageReadError(UserError):
    """An image that cannot be read; ``path`` names the file and ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {path!r}: {reason} (expected PNG, JPEG or DICOM)")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str]]:
        # Rebuild from (path, reason) so the error crosses process boundaries intact.
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class XRay:
    """A decoded chest X-ray.

    Attributes:
        pixels: ``(H, W) uint8``, display orientation (air/lungs dark, bone bright).
        source: the path read, or the name given to :func:`read_xray_bytes`.
        format: ``"PNG"``, ``"JPEG"`` or ``"DICOM"`` (detected from the content).
        bits_stored: bit depth of the original samples (PNG bit depth, JPEG precision, DICOM
            BitsStored), e.g. 8, 12 or 16.
        spacing_mm: ``(row, col)`` pixel spacing in millimetres when the file states it (DICOM
            PixelSpacing, else ImagerPixelSpacing); ``None`` otherwise, and always for PNG/JPEG.
    """

    pixels: np.ndarray
    source: str
    format: str
    bits_stored: int
    spacing_mm: tuple[float, float] | None


def check_dimensions(name: str, height: int, width: int, max_pixels: int) -> None:
    """Raise :class:`ImageReadError` for an empty image or one above ``max_pixels`` pixels."""
    if height <= 0 or width <= 0:
        raise ImageReadError(name, f"header declares an empty image ({width}x{height} pixels)")
    if height * width > max_pixels:
        raise ImageReadError(
            name,
            f"too many pixels: {width}x{height} = {height * width:,} > max_pixels "
            f"{max_pixels:,} (decompression bomb?)",
        )


def minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale ``values`` (any shape, any real dtype) linearly so min -> 0 and max -> 255, as uint8.

    Nothing is clipped: the full signal range maps onto 0..255 (rounded). A constant image maps
    to zeros.
    """
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    work = values.astype(np.float32)
    work -= lo
    work *= 255.0 / (hi - lo)
    work += 0.5
    return work.astype(np.uint8)
