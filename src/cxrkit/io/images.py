"""Read chest X-rays (PNG, JPEG, DICOM) as display-oriented 8-bit grayscale.

This is the one image reader of cxrkit: ``prepare``, ``infer``, ``cam`` and ``serve`` all go
through :func:`read_xray` / :func:`read_xray_bytes`, so every entry point sees the same pixels.

* The format is detected from the **content** (magic bytes), never from the file extension:
  PNG signature, JPEG ``FF D8 FF``, DICOM ``DICM`` at offset 128, or a DICOM data set written
  without the 128-byte preamble (first tag in group 0002 or 0008). The first
  :data:`SNIFF_BYTES` bytes are enough (:func:`cxrkit.deploy.sources.resolve_sources` reads
  no more of a file to decide whether it is an image).
* DICOM objects that are not projection radiographs (CT, MR, US, ...) are refused by default,
  before their pixels are decoded: see ``modalities`` and
  :data:`~cxrkit.io.xray.RADIOGRAPH_MODALITIES`.
* The image size is read from the header (PNG IHDR, JPEG SOF, DICOM Rows x Columns) and images
  with more than ``max_pixels`` pixels are refused **before** decoding (decompression bombs).
* Output is always ``(H, W) uint8`` with air/lungs dark and bone bright. 8-bit PNG and JPEG keep
  their values; colour is converted to gray (alpha ignored); 16-bit PNG is scaled by linear
  min-max of that image (see :func:`minmax_to_uint8`). DICOM rules are in :mod:`cxrkit.io.dicom`.
* How coloured the file was is kept as :attr:`XRay.colour` (:func:`chroma`,
  measured before the gray conversion; a colour JPEG is measured on a 1/8-scale colour decode,
  so its gray pixels stay libjpeg's luma), for the input gate's colour-photograph check.
* Most PNGs are decoded by :mod:`cxrkit.io.png` (about twice OpenCV's speed, the same pixels);
  the rest, and every irregular file, by OpenCV.
* Every failure raises :class:`ImageReadError`, naming the file and the reason.

All functions are pure (no global state, no OpenCV settings changed): safe to call from threads
and worker processes.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from cxrkit.io.xray import (
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    PNG_SIGNATURE,
    RADIOGRAPH_MODALITIES,
    ImageReadError,
    XRay,
    check_dimensions,
    check_min_side,
    minmax_to_uint8,
)

SUPPORTED = ("PNG", "JPEG", "DICOM")
SNIFF_BYTES = 132  # what sniff_format looks at: up to and including DICOM's "DICM" at 128

_DICOM_NO_PREAMBLE_LE = (b"\x02\x00", b"\x08\x00")  # group 0002 / 0008, little endian
_DICOM_NO_PREAMBLE_BE = (b"\x00\x02", b"\x00\x08")  # the same, big endian (explicit VR)

_PNG_IEND_CHUNK = b"IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers C0..CF, except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS = 0xDA
# Markers without a length field: TEM and RST0..RST7.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def sniff_format(data: bytes) -> str | None:
    """Return ``"PNG"``, ``"JPEG"`` or ``"DICOM"`` from the leading bytes of ``data``, else None.

    Only ``data[:SNIFF_BYTES]`` is looked at. A DICOM data set without preamble is recognised by
    its first tag being in group 0002 (file meta) or 0008 (identification): little endian, or
    big endian followed by an explicit VR (two capital letters); :func:`read_xray_bytes` then
    parses it with pydicom's ``force=True``.
    """
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(_JPEG_SOI):
        return "JPEG"
    if data[128:132] == b"DICM" or data[:2] in _DICOM_NO_PREAMBLE_LE:
        return "DICOM"
    vr = data[4:6]
    if data[:2] in _DICOM_NO_PREAMBLE_BE and len(vr) == 2 and vr.isalpha() and vr.isupper():
        return "DICOM"
    return None


def read_xray(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    modalities: Collection[str] | None = RADIOGRAPH_MODALITIES,
    min_side: int = MIN_SIDE,
) -> XRay:
    """Read the PNG, JPEG or DICOM file at ``path`` as an :class:`XRay` (``pixels``: (H, W) uint8).

    ``modalities``: the DICOM Modality values accepted (case-insensitive); a DICOM of another
    modality is refused before decoding. ``None`` accepts any. PNG and JPEG have no modality and
    are never refused by it.

    Raises:
        ImageReadError: missing/unreadable/empty file, unknown content, truncated or corrupt
            data, more than ``max_pixels`` pixels, a side under ``min_side`` pixels
            (:data:`~cxrkit.io.xray.MIN_SIDE`), an unsupported DICOM, a DICOM without pixel
            data or of a modality not in ``modalities``.
    """
    return read_xray_bytes(
        read_file(path),
        name=str(path),
        max_pixels=max_pixels,
        modalities=modalities,
        min_side=min_side,
    )


def read_file(path: str | Path) -> bytes:
    """The bytes of the file at ``path``; :class:`ImageReadError` naming why it cannot be read."""
    name = str(path)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(name, "is a directory, not a file") from None
    except PermissionError:
        raise ImageReadError(name, "permission denied") from None
    except OSError as exc:
        raise ImageReadError(name, f"cannot open file ({exc.strerror or exc})") from exc


def read_xray_bytes(
    data: bytes,
    *,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    modalities: Collection[str] | None = RADIOGRAPH_MODALITIES,
    min_side: int = MIN_SIDE,
) -> XRay:
    """Decode an in-memory PNG, JPEG or DICOM (e.g. an upload); same rules as :func:`read_xray`.

    ``name`` is used as :attr:`XRay.source` and in error messages.
    """
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt == "PNG":
        return check_min_side(_read_png(data, name, max_pixels), min_side)
    if fmt == "JPEG":
        return check_min_side(_read_jpeg(data, name, max_pixels), min_side)
    if fmt == "DICOM":
        # Imported here: keeps pydicom off the PNG/JPEG path.
        from cxrkit.io.dicom import read_dicom_bytes

        xray = read_dicom_bytes(data, name=name, max_pixels=max_pixels, modalities=modalities)
        return check_min_side(xray, min_side)
    raise ImageReadError(name, f"not an image: unrecognised content {data[:16]!r}")


def _decode(data: bytes, flags: int) -> np.ndarray | None:
    """cv2.imdecode without copying ``data``; None when OpenCV cannot decode it."""
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        return None


CHROMA_SAMPLES = 256
"""Pixels per side at most that :func:`chroma` looks at (a regular grid of the image)."""


def chroma(img: np.ndarray) -> float:
    """``(H, W)`` or ``(H, W, 3|4)`` colour image (any channel order, alpha ignored) -> the mean
    of ``(max - min)`` over its colour channels, divided by the dtype's maximum (0.0 for gray),
    on a grid of at most :data:`CHROMA_SAMPLES` x :data:`CHROMA_SAMPLES` pixels."""
    if img.ndim != 3 or img.shape[2] < 3:
        return 0.0
    step_y = max(1, img.shape[0] // CHROMA_SAMPLES)
    step_x = max(1, img.shape[1] // CHROMA_SAMPLES)
    rgb = img[::step_y, ::step_x, :3]
    spread = rgb.max(axis=2).astype(np.float32) - rgb.min(axis=2)
    top = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0
    return float(spread.mean()) / top


def _to_gray_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3|4) BGR[A] of uint8/uint16 -> (H, W) uint8 (alpha ignored)."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return img if img.dtype == np.uint8 else minmax_to_uint8(img)


def _read_png(data: bytes, name: str, max_pixels: int) -> XRay:
    # Signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4) + depth (1) + ...
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError(name, "truncated PNG data (no IHDR header)")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    check_dimensions(name, height, width, max_pixels)
    if not data.endswith(_PNG_IEND_CHUNK) and data.rfind(b"IEND", 33) < 0:
        raise ImageReadError(name, "truncated PNG data (no IEND chunk)")
    # Imported here: numba loads with the first PNG, not with every command.
    from cxrkit.io.png import decode_png

    img = decode_png(data)  # None: outside its case or irregular, so OpenCV decides
    if img is None:
        img = _decode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(name, "corrupt PNG data")
    return XRay(_to_gray_uint8(img), name, "PNG", data[24], None, None, chroma(img))


class JpegHeader(NamedTuple):
    """A JPEG's frame header (SOF) and where its first scan starts."""

    height: int
    width: int
    precision: int  # bits per sample: 8, or 12 (extended), 2-16 (lossless)
    components: int  # 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK
    scan: int  # offset of the first SOS marker
    sof: int  # the SOF marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Walk the JPEG markers up to the first scan; None when there is no frame and scan header."""
    frame: tuple[int, int, int, int, int] | None = None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_STANDALONE:
            i += 2
        elif marker == _JPEG_SOS:
            return None if frame is None else JpegHeader(*frame[:4], i, frame[4])
        else:
            if marker in _JPEG_SOF and i + 9 <= len(data):
                height = int.from_bytes(data[i + 5 : i + 7], "big")
                width = int.from_bytes(data[i + 7 : i + 9], "big")
                components = data[i + 9] if i + 10 <= len(data) else 1
                frame = (height, width, data[i + 4], components, marker)
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def check_jpeg(data: bytes, name: str, max_pixels: int) -> JpegHeader:
    """The header of a JPEG that can be decoded, checked before decoding: an
    :class:`ImageReadError` for a missing header, too many pixels or no end-of-image marker."""
    header = jpeg_header(data)
    if header is None:
        raise ImageReadError(name, "truncated or corrupt JPEG header (no frame and scan header)")
    check_dimensions(name, header.height, header.width, max_pixels)
    if data.rfind(_JPEG_EOI, header.scan) < 0:
        raise ImageReadError(name, "truncated JPEG data (no end-of-image marker)")
    return header


def _read_jpeg(data: bytes, name: str, max_pixels: int) -> XRay:
    header = check_jpeg(data, name, max_pixels)
    # IMREAD_GRAYSCALE: libjpeg outputs luma directly (fast) and EXIF orientation is applied.
    img = _decode(data, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ImageReadError(name, "corrupt or unsupported JPEG data")
    reduced = _decode(data, cv2.IMREAD_REDUCED_COLOR_8) if header.components >= 3 else None
    colour = chroma(reduced) if reduced is not None else 0.0
    return XRay(_to_gray_uint8(img), name, "JPEG", header.precision, None, None, colour)
