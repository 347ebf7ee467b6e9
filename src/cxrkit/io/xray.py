"""What every image reader returns and raises: :class:`XRay`, :class:`ImageReadError`.

Shared by the PNG/JPEG reader (:mod:`cxrkit.io.images`) and the DICOM reader
(:mod:`cxrkit.io.dicom`), with the two checks both apply: the pixel-count limit read from the
header before decoding (:func:`check_dimensions`) and the linear rescale of samples wider than
8 bits (:func:`minmax_to_uint8`). Both readers import this module; neither imports the other's
internals. :data:`RADIOGRAPH_MODALITIES` lives here, not in :mod:`cxrkit.io.dicom`, so that
:func:`cxrkit.io.read_xray` can name it as a default without importing pydicom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrkit.errors import UserError

DEFAULT_MAX_PIXELS = 100_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  #: here for the sniffer (images) and the decoder (png)

RADIOGRAPH_MODALITIES: tuple[str, ...] = ("CR", "DX", "DR", "RG")
"""DICOM Modality values read by default: projection radiographs, the kind a chest X-ray is.

From the defined terms of Modality (0008,0060), DICOM PS3.3 C.7.3.1.1.1 (CID 29):

* ``CR`` Computed Radiography and ``DX`` Digital Radiography: what chest X-rays are stored
  as (secondary captures of them, such as SIIM's, keep Modality CR or DX);
* ``RG`` Radiographic imaging (conventional film/screen): a digitised chest film;
* ``DR``: not a DICOM defined term, but written by some digital radiography systems; it means
  nothing else in DICOM, so accepting it lets in nothing that should be refused.

Not accepted by default: ``OT`` (Other: secondary captures of anything, screenshots of CT,
scanned dose sheets and reports), ``MG``, ``IO``, ``PX`` (mammography, intra-oral and panoramic
dental X-rays: projection radiographs, but not of a chest), ``XA``, ``RF`` (angiography and
fluoroscopy), and the cross-sectional and other modalities (CT, MR, US, NM, PT, RTDOSE, SEG,
...). A data set **without** a Modality (anonymised exports often drop it) is read, with
:attr:`XRay.modality` ``None``, unless its SOP Class is one that names another modality (a
CT Image Storage object is a CT with or without the tag). Callers pass the user's extra
modalities (``--allow-modality``) as ``modalities=(*RADIOGRAPH_MODALITIES, "OT")``, or
``modalities=None`` to read any.
"""


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
        modality: the DICOM Modality (0008,0060), upper case (``"CR"``, ``"DX"``, ...);
            ``None`` for PNG/JPEG and for a DICOM without the tag.
        colour: how coloured the file was before the conversion to gray: the mean over pixels
            of ``(max(R, G, B) - min(R, G, B)) / 255`` (:func:`cxrkit.io.images.chroma`); 0.0
            for gray files and DICOMs. A radiograph saved as RGB scores about 0.
    """

    pixels: np.ndarray
    source: str
    format: str
    bits_stored: int
    spacing_mm: tuple[float, float] | None
    modality: str | None
    colour: float = 0.0


MIN_SIDE = 32
"""The smallest side, in pixels, of an image the readers return by default. Below it a
radiograph holds no finding a model could see (NIH's 1024 px films shrunk 32-fold are 32 px);
it is also the smallest input size a recipe may ask for (``data.image_size``). Such a file is
a thumbnail, an icon or a broken export, never a chest film."""


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


def check_min_side(xray: XRay, min_side: int) -> XRay:
    """``xray`` itself, or :class:`ImageReadError` when a side is under ``min_side`` pixels."""
    height, width = xray.pixels.shape
    if min(height, width) < min_side:
        raise ImageReadError(
            xray.source,
            f"image is {width}x{height} pixels; a chest X-ray needs at least {min_side} "
            "pixels per side (a thumbnail or icon?)",
        )
    return xray


def minmax_to_uint8(values: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Scale ``values`` (any shape, any real dtype) linearly so min -> 0 and max -> 255, as uint8.

    Nothing is clipped: the full signal range maps onto 0..255 (rounded). A constant image maps
    to zeros. ``exclude`` (bool, the shape of ``values``) marks samples left out of the min and
    max (DICOM padding); they come out 0. All excluded gives zeros.
    """
    kept = values if exclude is None else values[~exclude]
    if kept.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(kept.min()), float(kept.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    work = values.astype(np.float32)
    work -= lo
    work *= 255.0 / (hi - lo)
    work += 0.5
    if exclude is not None:
        np.clip(work, 0.0, 255.0, out=work)
        work[exclude] = 0.0
    return work.astype(np.uint8)
