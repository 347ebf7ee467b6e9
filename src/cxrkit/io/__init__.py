"""Image input for cxrkit: one reader for PNG, JPEG and DICOM chest X-rays, plus letterboxing.

>>> from cxrkit.io import read_xray, letterbox
>>> xray = read_xray("00000001_000.png")          # doctest: +SKIP
>>> xray.pixels.shape, xray.pixels.dtype          # doctest: +SKIP
((1024, 1024), dtype('uint8'))
>>> letterbox(xray.pixels, 256).shape             # doctest: +SKIP
(256, 256)

See :mod:`cxrkit.io.images` for the PNG/JPEG rules and :mod:`cxrkit.io.dicom` for DICOM.
"""

from cxrkit.io.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED,
    ImageReadError,
    LetterboxGeometry,
    XRay,
    letterbox,
    letterbox_geometry,
    read_xray,
    read_xray_bytes,
    sniff_format,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED",
    "ImageReadError",
    "LetterboxGeometry",
    "XRay",
    "letterbox",
    "letterbox_geometry",
    "read_xray",
    "read_xray_bytes",
    "sniff_format",
]
