"""Read chest X-rays (PNG, JPEG, DICOM) as display-oriented 8-bit grayscale, and letterbox them.

This is the one image reader of cxrkit: ``prepare``, ``infer``, ``cam`` and ``serve`` all go
through :func:`read_xray` / :func:`read_xray_bytes`, so every entry point sees the same pixels.

* The format is detected from the **content** (magic bytes), never from the file extension:
  PNG signature, JPEG ``FF D8 FF``, DICOM ``DICM`` at offset 128, or a DICOM data set written
  without the 128-byte preamble (first tag in group 0002 or 0008).
* The image size is read from the header (PNG IHDR, JPEG SOF, DICOM Rows x Columns) and images
  with more than ``max_pixels`` pixels are refused **before** decoding (decompression bombs).
* Output is always ``(H, W) uint8`` with air/lungs dark and bone bright. 8-bit PNG and JPEG keep
  their values; colour is converted to gray (alpha ignored); 16-bit PNG is scaled by linear
  min-max of that image (see :func:`minmax_to_uint8`). DICOM rules are in :mod:`cxrkit.io.dicom`.
* Every failure raises :class:`ImageReadError`, naming the file and the reason.

All functions are pure (no global state, no OpenCV settings changed): safe to call from threads
and worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import ArrayLike

from cxrkit.errors import UserError

SUPPORTED = ("PNG", "JPEG", "DICOM")
DEFAULT_MAX_PIXELS = 100_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND_CHUNK = b"IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers C0..CF, except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS = 0xDA
# Markers without a length field: TEM and RST0..RST7.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


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


def sniff_format(data: bytes) -> str | None:
    """Return ``"PNG"``, ``"JPEG"`` or ``"DICOM"`` from the leading bytes of ``data``, else None.

    A DICOM data set without preamble is recognised by its first tag being in group 0002 (file
    meta) or 0008 (identification), little endian; :func:`read_xray_bytes` then parses it with
    pydicom's ``force=True``.
    """
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith(_JPEG_SOI):
        return "JPEG"
    if data[128:132] == b"DICM" or data[:2] in (b"\x02\x00", b"\x08\x00"):
        return "DICOM"
    return None


def read_xray(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> XRay:
    """Read the PNG, JPEG or DICOM file at ``path`` as an :class:`XRay` (``pixels``: (H, W) uint8).

    Raises:
        ImageReadError: missing/unreadable/empty file, unknown content, truncated or corrupt
            data, more than ``max_pixels`` pixels, or an unsupported DICOM.
    """
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(name, "is a directory, not a file") from None
    except PermissionError:
        raise ImageReadError(name, "permission denied") from None
    except OSError as exc:
        raise ImageReadError(name, f"cannot open file ({exc.strerror or exc})") from exc
    return read_xray_bytes(data, name=name, max_pixels=max_pixels)


def read_xray_bytes(
    data: bytes, *, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
) -> XRay:
    """Decode an in-memory PNG, JPEG or DICOM (e.g. an upload); same rules as :func:`read_xray`.

    ``name`` is used as :attr:`XRay.source` and in error messages.
    """
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt == "PNG":
        return _read_png(data, name, max_pixels)
    if fmt == "JPEG":
        return _read_jpeg(data, name, max_pixels)
    if fmt == "DICOM":
        # Imported here: keeps pydicom off the PNG/JPEG path and breaks the import cycle
        # (cxrkit.io.dicom builds XRay and ImageReadError from this module).
        from cxrkit.io.dicom import read_dicom_bytes

        return read_dicom_bytes(data, name=name, max_pixels=max_pixels)
    raise ImageReadError(name, f"not an image: unrecognised content {data[:16]!r}")


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


def _decode(data: bytes, flags: int) -> np.ndarray | None:
    """cv2.imdecode without copying ``data``; None when OpenCV cannot decode it."""
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        return None


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
    img = _decode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(name, "corrupt PNG data")
    return XRay(_to_gray_uint8(img), name, "PNG", data[24], None)


def _jpeg_header(data: bytes) -> tuple[int, int, int, int] | None:
    """Walk the JPEG markers up to the first scan: (height, width, precision, scan offset)."""
    frame: tuple[int, int, int] | None = None
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
            return None if frame is None else (*frame, i)
        else:
            if marker in _JPEG_SOF and i + 9 <= len(data):
                height = int.from_bytes(data[i + 5 : i + 7], "big")
                width = int.from_bytes(data[i + 7 : i + 9], "big")
                frame = (height, width, data[i + 4])
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _read_jpeg(data: bytes, name: str, max_pixels: int) -> XRay:
    header = _jpeg_header(data)
    if header is None:
        raise ImageReadError(name, "truncated or corrupt JPEG header (no frame and scan header)")
    height, width, precision, scan = header
    check_dimensions(name, height, width, max_pixels)
    if data.rfind(_JPEG_EOI, scan) < 0:
        raise ImageReadError(name, "truncated JPEG data (no end-of-image marker)")
    # IMREAD_GRAYSCALE: libjpeg outputs luma directly (fast) and EXIF orientation is applied.
    img = _decode(data, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ImageReadError(name, "corrupt or unsupported JPEG data")
    return XRay(_to_gray_uint8(img), name, "JPEG", precision, None)


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


def _layout(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
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
    scale, _, _, pad_y, pad_x = _layout(height, width, size)
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
    scale, new_h, new_w, pad_y, pad_x = _layout(height, width, size)
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
