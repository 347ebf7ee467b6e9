"""DICOM -> display-oriented ``(H, W) uint8``, the DICOM path of :func:`cxrkit.io.read_xray`.

Rules, in order:

1. Parse with pydicom (``force=True``, so data sets without preamble or file meta also read).
   No pixel data, or no Rows/Columns -> :class:`ImageReadError`.
2. Refuse more than ``max_pixels`` (Rows x Columns) before anything is decoded.
3. Decode only the **first frame** of multi-frame data. Compressed transfer syntaxes go through
   pydicom's plugins: JPEG baseline/extended/lossless and JPEG-LS via pylibjpeg-libjpeg,
   JPEG 2000 / HTJ2K via pylibjpeg-openjpeg, RLE natively. A missing plugin is reported with
   the package to install.
4. Colour (RGB, YBR converted to RGB by pydicom, PALETTE COLOR) -> luma gray; no LUTs.
5. Grayscale: modality LUT (RescaleSlope/Intercept or Modality LUT Sequence), then the first
   VOI LUT Sequence item, else the first WindowCenter/WindowWidth (LINEAR, LINEAR_EXACT or
   SIGMOID) mapped onto 0..255; a VOI LUT's output range is that of its table. Without a usable
   VOI (absent or malformed), linear min-max of the data: nothing clipped.
6. MONOCHROME1 is inverted, so the output always looks like MONOCHROME2 (bone bright).

``spacing_mm`` comes from PixelSpacing, else ImagerPixelSpacing, as ``(row, col)`` millimetres.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)

from cxrkit.io.xray import ImageReadError, XRay, check_dimensions, minmax_to_uint8

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) Pixel Data, little endian
# Errors pydicom raises on malformed LUT, rescale or window attributes. A malformed VOI is
# ignored (min-max instead); a malformed modality or palette LUT makes the image unreadable.
_BAD_ATTRIBUTE = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    NotImplementedError,
    struct.error,
)


def read_dicom_bytes(data: bytes, *, name: str, max_pixels: int) -> XRay:
    """Decode a DICOM file's bytes (see module doc) to an :class:`XRay` with (H, W) uint8 pixels.

    Raises:
        ImageReadError: unparsable or truncated data, no pixel data, too many pixels, an
            unsupported transfer syntax or missing decoder plugin, corrupt compressed data.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many exception types on malformed input
        raise ImageReadError(name, f"corrupt or truncated DICOM data ({_one_line(exc)})") from exc
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        if _PIXEL_DATA_TAG in data:  # pydicom drops an element it could not read to the end
            raise ImageReadError(name, "truncated or corrupt DICOM pixel data element")
        raise ImageReadError(name, "DICOM file has no pixel data (not an image, or truncated)")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise ImageReadError(name, "DICOM file has pixel data but no Rows/Columns")
    check_dimensions(name, int(rows), int(columns), max_pixels)

    arr, photometric = _decode_first_frame(ds, name)
    try:
        pixels = _to_display(arr, photometric, ds)
    except _BAD_ATTRIBUTE as exc:
        raise ImageReadError(
            name, f"invalid DICOM LUT/rescale attributes ({_one_line(exc)})"
        ) from exc
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    return XRay(pixels, name, "DICOM", bits, _spacing_mm(ds))


def _to_display(arr: np.ndarray, photometric: str, ds: Dataset) -> np.ndarray:
    """Decoded frame -> (H, W) uint8 display pixels: colour to gray, else modality LUT, VOI
    (or min-max) and MONOCHROME1 inversion."""
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        return _rgb_to_gray_uint8(arr)
    values = apply_modality_lut(arr, ds)
    voi = _voi_to_uint8(values, ds)
    pixels = minmax_to_uint8(values) if voi is None else voi
    if photometric == "MONOCHROME1":
        np.subtract(255, pixels, out=pixels)
    return pixels


def _one_line(exc: Exception) -> str:
    """An exception's message with its whitespace (pydicom lists plugins on lines) collapsed."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _plugin_hint(tsyntax: UID) -> str:
    """The pip packages that provide a decoder for ``tsyntax``."""
    if tsyntax in JPEG2000TransferSyntaxes:
        return "pylibjpeg pylibjpeg-openjpeg"
    if tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        return "pylibjpeg pylibjpeg-libjpeg"
    if tsyntax in RLETransferSyntaxes:
        return "pylibjpeg pylibjpeg-rle"
    return "pylibjpeg"


def _decode_first_frame(ds: Dataset, name: str) -> tuple[np.ndarray, str]:
    """First frame as (rows, cols) or (rows, cols, samples), and its photometric interpretation
    after decoding (YBR is converted to RGB)."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None:  # bare data set without file meta: use the encoding it was read with
        implicit, little = ds.original_encoding
        tsyntax = (
            ImplicitVRLittleEndian
            if implicit
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
        ds.file_meta.TransferSyntaxUID = tsyntax
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageReadError(
            name, f"unsupported DICOM transfer syntax {tsyntax.name} ({tsyntax})"
        ) from None
    if not decoder.is_available:
        raise ImageReadError(
            name,
            f"no decoder installed for DICOM transfer syntax {tsyntax.name}; "
            f"install it with: pip install {_plugin_hint(tsyntax)}",
        )
    try:
        arr, meta = decoder.as_array(ds, index=0)
    except Exception as exc:  # plugins raise assorted types on corrupt or truncated data
        raise ImageReadError(
            name, f"corrupt or truncated DICOM pixel data ({_one_line(exc)})"
        ) from exc
    return arr, str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation")))


def _rgb_to_gray_uint8(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB of any integer/float dtype -> (H, W) uint8 luma."""
    if rgb.dtype not in (np.uint8, np.uint16):
        rgb = rgb.astype(np.float32)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return gray if gray.dtype == np.uint8 else minmax_to_uint8(gray)


def _voi_to_uint8(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Apply the data set's first VOI LUT, else its first window, onto 0..255; None if neither
    is present and usable."""
    try:
        if ds.get("VOILUTSequence"):
            return _voi_lut_to_uint8(values, ds)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            center, width = ds["WindowCenter"].value, ds["WindowWidth"].value
            function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
            return _window_to_uint8(values, _first(center), _first(width), function)
    except _BAD_ATTRIBUTE:
        return None
    return None


def _first(value: object) -> float:
    """First value of a single- or multi-valued numeric element."""
    return float(value[0] if isinstance(value, MultiValue) else value)


def _voi_lut_to_uint8(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Map through VOI LUT Sequence item 0 (values below/above its domain take the first/last
    entry), then scale the table's output range onto 0..255."""
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first_mapped = int(descriptor[0]) or 65536, int(descriptor[1])
    # pydicom decodes the table (US or OW, either byte order); we index it ourselves.
    table = apply_voi(np.arange(first_mapped, first_mapped + entries), ds)
    index = np.clip(np.rint(values), first_mapped, first_mapped + entries - 1).astype(np.intp)
    return minmax_to_uint8(table)[index - first_mapped]


def _window_to_uint8(
    values: np.ndarray, center: float, width: float, function: str
) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 windowing with output range 0..255; None for an invalid window."""
    x = values.astype(np.float64)
    if function == "SIGMOID":
        if width <= 0:
            return None
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT" and width > 0:
        y = ((x - center) / width + 0.5) * 255.0
    elif function == "LINEAR" and width > 1:
        y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    elif function == "LINEAR" and width == 1:  # a threshold at center - 0.5
        y = np.where(x > center - 0.5, 255.0, 0.0)
    else:
        return None
    return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)


def _spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """(row, col) pixel spacing in mm from PixelSpacing, else ImagerPixelSpacing; None if absent
    or malformed."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            row, col = (float(v) for v in ds.get(keyword) or ())
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return (row, col)
    return None
