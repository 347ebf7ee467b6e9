"""DICOM -> display-oriented ``(H, W) uint8``, the DICOM path of :func:`cxrkit.io.read_xray`.

Rules, in order:

1. Parse with pydicom (``force=True``, so data sets without preamble or file meta also read).
   No pixel data -> :class:`ImageReadError` naming the object found, e.g. ``no pixel data: a
   DICOM RT Plan object (Modality RTPLAN)`` (structured reports, RT plans and structure sets,
   waveforms, DICOMDIRs, ...). No Rows/Columns -> :class:`ImageReadError`.
2. The modality gate (:mod:`cxrkit.io.modality`), before anything is decoded: a Modality (or,
   without one, an SOP Class that implies one, e.g. CT Image Storage) not in ``modalities`` is
   refused, naming it and the ``--allow-modality`` that reads it (see
   :data:`~cxrkit.io.xray.RADIOGRAPH_MODALITIES`).
3. Refuse more than ``max_pixels`` (Rows x Columns) before anything is decoded.
4. Decode only the **first frame** of multi-frame data. Little and big endian, deflated, and
   compressed transfer syntaxes through pydicom's plugins: JPEG baseline/extended/lossless and
   JPEG-LS via pylibjpeg-libjpeg, JPEG 2000 / HTJ2K via pylibjpeg-openjpeg, RLE natively. A
   missing plugin is reported with the package to install.
5. Colour (RGB, YBR converted to RGB by pydicom, PALETTE COLOR) -> luma gray; no LUTs.
6. Grayscale: modality LUT (RescaleSlope/Intercept or Modality LUT Sequence), then the first
   VOI LUT Sequence item, else the first WindowCenter/WindowWidth (LINEAR, LINEAR_EXACT or
   SIGMOID) mapped onto 0..255; a VOI LUT's output range is that of its table. Without a usable
   VOI (absent or malformed), linear min-max of the data: nothing clipped.
7. PixelPaddingValue (with PixelPaddingRangeLimit, a range of stored values): padding pixels
   are left out of the min-max and come out 0 (black), whatever the window or inversion.
8. Inverted when PhotometricInterpretation is MONOCHROME1 **or** PresentationLUTShape is
   INVERSE, so the output always looks like MONOCHROME2 (bone bright). Once, not twice, for
   both: the standard (General Image and DX Image modules, PS3.3 C.7.6.1, C.8.11) has INVERSE
   used exactly with MONOCHROME1, the two say the same inversion. MONOCHROME1 with IDENTITY
   (a contradiction) is still inverted: the photometric interpretation wins.

``spacing_mm`` comes from PixelSpacing, else ImagerPixelSpacing, as ``(row, col)`` millimetres.
``modality`` is the Modality tag, upper case, or ``None`` without one.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Collection

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

from cxrkit.io.modality import check_modality
from cxrkit.io.xray import (
    RADIOGRAPH_MODALITIES,
    ImageReadError,
    XRay,
    check_dimensions,
    minmax_to_uint8,
)

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
# What else pydicom raises on data sets it parsed but cannot make sense of: wrapped into an
# ImageReadError naming the exception, so a reader never lets another exception out.
_MALFORMED = (*_BAD_ATTRIBUTE, OverflowError, RuntimeError, ZeroDivisionError, UnicodeError)


def read_dicom_bytes(
    data: bytes,
    *,
    name: str,
    max_pixels: int,
    modalities: Collection[str] | None = RADIOGRAPH_MODALITIES,
) -> XRay:
    """Decode a DICOM file's bytes (see module doc) to an :class:`XRay` with (H, W) uint8 pixels.

    ``modalities``: the Modality values accepted (case-insensitive), ``None`` for any.

    Raises:
        ImageReadError: unparsable or truncated data, no pixel data, a modality not in
            ``modalities``, too many pixels, an unsupported transfer syntax or missing decoder
            plugin, corrupt compressed data, malformed image attributes.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many exception types on malformed input
        raise ImageReadError(name, f"corrupt or truncated DICOM data ({_one_line(exc)})") from exc
    try:
        return _read_dataset(ds, data, name, max_pixels, modalities)
    except _MALFORMED as exc:
        reason = f"malformed DICOM data set ({type(exc).__name__}: {_one_line(exc)})"
        raise ImageReadError(name, reason) from exc


def _read_dataset(
    ds: Dataset, data: bytes, name: str, max_pixels: int, modalities: Collection[str] | None
) -> XRay:
    """Rules 1-8 of the module doc on a parsed data set."""
    modality = _modality(ds)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        if _PIXEL_DATA_TAG in data:  # pydicom drops an element it could not read to the end
            raise ImageReadError(name, "truncated or corrupt DICOM pixel data element")
        raise ImageReadError(name, f"no pixel data: {_describe(ds, modality)}")
    sop = _sop_class(ds)
    sop_name = None if sop is None else _sop_name(sop)
    check_modality(name, modality, sop, modalities, sop_class_name=sop_name)
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise ImageReadError(name, "DICOM file has pixel data but no Rows/Columns")
    check_dimensions(name, int(rows), int(columns), max_pixels)
    _check_integer_attributes(ds, name)

    arr, photometric = _decode_first_frame(ds, name)
    try:
        pixels = _to_display(arr, photometric, ds)
    except _BAD_ATTRIBUTE as exc:
        raise ImageReadError(
            name, f"invalid DICOM LUT/rescale attributes ({_one_line(exc)})"
        ) from exc
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    return XRay(pixels, name, "DICOM", bits, _spacing_mm(ds), modality)


def _modality(ds: Dataset) -> str | None:
    """The Modality tag, stripped and upper case; None when absent or empty."""
    value = ds.get("Modality")
    if isinstance(value, MultiValue):  # VM is 1, but a malformed file may hold several
        value = value[0] if value else None
    text = str(value or "").strip().upper()
    return text or None


def _sop_class(ds: Dataset) -> UID | None:
    """SOPClassUID, else the file meta's MediaStorageSOPClassUID; None when neither is set."""
    for value in (ds.get("SOPClassUID"), ds.file_meta.get("MediaStorageSOPClassUID")):
        if value and str(value).strip():
            return UID(str(value).strip())
    return None


def _sop_name(sop: UID) -> str | None:
    """``RT Plan`` for RT Plan Storage (pydicom's name less "Storage"); None if unknown."""
    if sop.name == str(sop):
        return None
    return re.sub(r" Storage(?= - |$)", "", sop.name)


def _describe(ds: Dataset, modality: str | None) -> str:
    """What a data set is, for an error: ``a DICOM RT Plan object (Modality RTPLAN)``."""
    sop = _sop_class(ds)
    sop_name = None if sop is None else _sop_name(sop)
    if sop is None:
        kind = "a DICOM object of unknown SOP Class"
    elif sop_name is None:
        kind = f"a DICOM object of SOP Class {sop}"
    else:
        kind = f"a DICOM {sop_name} object"
    if modality:
        return f"{kind} (Modality {modality})"
    return f"{kind} (not an image, or truncated)" if sop is None else kind


def _check_integer_attributes(ds: Dataset, name: str) -> None:
    """Refuse integer image attributes pydicom kept as text because they are not integers
    (NumberOfFrames ``"1A"``): the decoders would fail on them with a bare ValueError."""
    for keyword in ("NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored"):
        value = ds.get(keyword)
        if not isinstance(value, str):
            continue
        try:
            int(value)
        except ValueError:
            raise ImageReadError(
                name, f"invalid DICOM {keyword} {value!r} (not an integer)"
            ) from None


def _to_display(arr: np.ndarray, photometric: str, ds: Dataset) -> np.ndarray:
    """Decoded frame -> (H, W) uint8 display pixels: colour to gray, else modality LUT, VOI
    (or min-max without the padding), inversion, padding to 0."""
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        return _rgb_to_gray_uint8(arr)
    padding = _padding_mask(arr, ds)
    values = apply_modality_lut(arr, ds)
    voi = _voi_to_uint8(values, ds)
    pixels = minmax_to_uint8(values, padding) if voi is None else voi
    if photometric == "MONOCHROME1" or _presentation_inverse(ds):
        np.subtract(255, pixels, out=pixels)
    if padding is not None:
        pixels[padding] = 0
    return pixels


def _presentation_inverse(ds: Dataset) -> bool:
    """Whether PresentationLUTShape is INVERSE."""
    return str(ds.get("PresentationLUTShape") or "").strip().upper() == "INVERSE"


def _padding_mask(arr: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """(H, W) bool: stored values equal to PixelPaddingValue, or within it and
    PixelPaddingRangeLimit; None without padding (absent, malformed or matching nothing)."""
    if "PixelPaddingValue" not in ds or arr.dtype.kind not in "iu":
        return None
    try:
        value = _stored(int(ds.PixelPaddingValue), arr.dtype)
        limit = ds.get("PixelPaddingRangeLimit")
        other = value if limit is None else _stored(int(limit), arr.dtype)
    except _BAD_ATTRIBUTE:
        return None
    lo, hi = min(value, other), max(value, other)
    mask = arr == lo if lo == hi else (arr >= lo) & (arr <= hi)
    return mask if mask.any() else None


def _stored(value: int, dtype: np.dtype) -> int:
    """A padding value as the decoded array holds it: written unsigned for signed data (or the
    reverse), it is reinterpreted in the array's width (two's complement)."""
    width = 8 * dtype.itemsize
    if dtype.kind == "i" and value >= 1 << (width - 1):
        return value - (1 << width)
    if dtype.kind == "u" and value < 0:
        return value + (1 << width)
    return value


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
