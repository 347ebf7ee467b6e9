"""Reading images: one reader for PNG, JPEG and DICOM chest X-rays, plus letterboxing.

>>> from cxrkit.io import read_xray, letterbox
>>> xray = read_xray("00000001_000.png")          # doctest: +SKIP
>>> xray.pixels.shape, xray.pixels.dtype          # doctest: +SKIP
((1024, 1024), dtype('uint8'))
>>> letterbox(xray.pixels, 256).shape             # doctest: +SKIP
(256, 256)

Modules: :mod:`~cxrkit.io.xray` (the :class:`XRay` every reader returns, :class:`ImageReadError`,
the pixel-count check, the radiograph modalities), :mod:`~cxrkit.io.images` (format sniffing,
PNG/JPEG), :mod:`~cxrkit.io.png` (the fast PNG decoder), :mod:`~cxrkit.io.dicom` (DICOM),
:mod:`~cxrkit.io.modality` (the modality gate: which DICOM objects are read),
:mod:`~cxrkit.io.geometry` (letterboxing into a square and its coordinate map).
Imports nothing of cxrkit but :mod:`cxrkit.errors`.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "xray": ["DEFAULT_MAX_PIXELS", "RADIOGRAPH_MODALITIES", "ImageReadError", "XRay"],
        "images": ["SNIFF_BYTES", "SUPPORTED", "read_xray", "read_xray_bytes", "sniff_format"],
        "geometry": ["LetterboxGeometry", "letterbox", "letterbox_geometry"],
    },
)
