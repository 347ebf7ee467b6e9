"""A faster decoder for the PNGs chest X-ray datasets ship, bit-identical to OpenCV's.

NIH ChestX-ray14 (1024 x 1024, 8-bit gray) and PadChest (16-bit gray) are PNG. OpenCV (libpng
and zlib) spends ~9 ms of a core on one NIH film, about as long as a 2-core CPU needs to run
DenseNet121 on two of them, so decoding bounds ``infer`` and ``prepare`` there. This decoder
inflates with ISA-L (``isal``, ~2.3x zlib) and undoes PNG's row filters in compiled code
(numba; two rows at a time, which hides most of the Average/Paeth dependency chain): about
4 ms for the same film (``benchmarks/bench_decode.py``, docs/benchmarks.md).

It covers the common case only: non-interlaced, 8- or 16-bit gray, RGB or RGBA, no
transparency chunk, no palette, no animation. For anything else, and for any irregularity
OpenCV or libpng would object to (a CRC mismatch, a truncated or over-long zlib stream, a bad
filter byte, an unknown critical or malformed chunk type, a side over libpng's 1,000,000
pixels, ...), :func:`decode_png` returns None and the caller decodes with OpenCV, which then
gives its own result or error: the outcome is OpenCV's, only faster for most files. One known
leniency: ISA-L inflates a deflate stream whose Huffman code is incomplete, which zlib
refuses; the stream must still end with the right Adler-32 of the pixels, so only a deliberately
crafted (or very broken) encoder produces such a file.

The compiled row filters are cached on disk by numba (next to this module, else in the user's
cache folder): the first use after an install compiles them once (a few seconds). Where
neither folder can be written (a read-only install and home), every process compiles them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numba
import numpy as np
from isal import isal_zlib

from cxrkit.io.xray import PNG_SIGNATURE

_MAX_SIDE = 1_000_000  # libpng's default user limit on width and height
_MAX_PIXELS = 1 << 30  # OpenCV's default limit (CV_IO_MAX_IMAGE_PIXELS)
_MAX_CHUNK = 8_000_000 - 12  # OpenCV's limit on one chunk it reads ("user chunk data")
_BACKGROUND_LENGTHS = (1, 2, 6)  # bKGD's valid lengths, which OpenCV checks
_CHANNELS = {0: 1, 2: 3, 6: 4}  # colour type -> samples per pixel (gray, RGB, RGBA)
_TO_OPENCV = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}  # OpenCV's channel order
# palette, transparency, animation: OpenCV decides
_REFUSED = (b"PLTE", b"tRNS", b"acTL", b"fcTL", b"fdAT")


def decode_png(data: bytes) -> np.ndarray | None:
    """PNG bytes -> what ``cv2.imdecode(data, cv2.IMREAD_UNCHANGED)`` returns for them:
    ``(H, W)`` gray or ``(H, W, 3|4)`` BGR[A], uint8 or uint16 (native byte order); None when
    the file is outside the covered case or irregular (decode it with OpenCV). Never raises
    for malformed bytes. Check the declared size against your pixel limit first (``read_xray``
    does): at most that much memory is inflated."""
    layout = _layout(data) if data.startswith(PNG_SIGNATURE) else None
    if layout is None:
        return None
    height, width, depth, channels, idat = layout
    if idat[0] >> 4 > 7:
        return None  # a zlib window over 32 KiB: zlib refuses it, ISA-L would not
    row_bytes = width * channels * depth // 8
    expected = height * (row_bytes + 1)
    try:
        stream = isal_zlib.decompressobj()
        raw = stream.decompress(idat, expected + 1)
    except isal_zlib.error:
        return None
    if len(raw) != expected or not stream.eof or stream.unused_data:
        return None
    rows = _unfilter(np.frombuffer(raw, np.uint8), height, row_bytes, channels * depth // 8)
    if rows is None:
        return None
    img = rows.view(">u2").astype(np.uint16) if depth == 16 else rows
    if channels == 1:
        return img
    return cv2.cvtColor(img.reshape(height, width, channels), _TO_OPENCV[channels])


def _layout(data: bytes) -> tuple[int, int, int, int, bytes] | None:
    """(height, width, bit depth, channels, the concatenated IDAT data) of a PNG in the covered
    case with every chunk's CRC correct; None otherwise."""
    view = memoryview(data)
    header: tuple[int, int, int, int] | None = None
    idat: list[memoryview] = []
    idat_done = False
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data) or not _valid_kind(kind) or (kind != b"IDAT" and length > _MAX_CHUNK):
            return None
        if isal_zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return None
        if kind == b"IHDR":
            if header is not None or pos != len(PNG_SIGNATURE) or length != 13:
                return None
            header = _header(data[pos + 8 : pos + 21])
            if header is None:
                return None
        elif kind == b"IDAT":
            if idat_done:
                return None  # IDAT chunks must be consecutive
            idat.append(view[pos + 8 : end - 4])
        elif kind == b"IEND":
            break
        elif kind in _REFUSED or kind[0] < 0x61:
            return None  # refused, or an unknown critical chunk (upper-case first letter)
        elif kind == b"bKGD" and length not in _BACKGROUND_LENGTHS:
            return None
        if idat and kind != b"IDAT":
            idat_done = True
        pos = end
    else:
        return None  # no IEND
    if header is None or not idat:
        return None
    return (*header, b"".join(idat))


def _valid_kind(kind: bytes) -> bool:
    """Four ASCII letters, the third upper-case (the reserved bit), as libpng requires."""
    return kind.isalpha() and kind.isascii() and 0x41 <= kind[2] <= 0x5A


def _header(ihdr: bytes) -> tuple[int, int, int, int] | None:
    """IHDR's 13 bytes -> (height, width, bit depth, channels); None outside the covered case."""
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, colour, compression, filtering, interlace = ihdr[8:13]
    if depth not in (8, 16) or colour not in _CHANNELS:
        return None
    if not (1 <= width <= _MAX_SIDE and 1 <= height <= _MAX_SIDE and width * height <= _MAX_PIXELS):
        return None
    if compression or filtering or interlace:
        return None
    return height, width, depth, _CHANNELS[colour]


def _unfilter(raw: np.ndarray, height: int, row_bytes: int, bpp: int) -> np.ndarray | None:
    """``(height * (row_bytes + 1),)`` inflated IDAT -> ``(height, row_bytes)`` uint8 rows with
    PNG's filters undone (``bpp``: bytes per pixel); None for a filter byte above 4."""
    filters = raw[:: row_bytes + 1]
    if int(filters.max()) > 4:
        return None
    return _unfilter_rows(raw, height, row_bytes, bpp)


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``numba.njit`` (GIL released, no bounds checks) with numba's on-disk cache where it can
    write one; else compiled in each process (numba refuses ``cache=True`` at decoration when
    no cache folder is writable)."""
    try:
        return numba.njit(nogil=True, boundscheck=False, cache=True)(fn)
    except RuntimeError as err:
        if "cannot cache" not in str(err):
            raise
        return numba.njit(nogil=True, boundscheck=False)(fn)


@numba.njit(inline="always")
def _predict(kind: int, left: int, up: int, up_left: int) -> int:
    """PNG's Average (3) or Paeth (4) predictor, branch-free for Paeth."""
    if kind == 3:
        return (left + up) >> 1
    pa = abs(up - up_left)
    pb = abs(left - up_left)
    pc = abs(left + up - 2 * up_left)
    other = up_left + (up - up_left) * np.int32(pb <= pc)
    return other + (left - other) * (np.int32(pa <= pb) & np.int32(pa <= pc))


@_compiled
def _row_pair(out, raw, o, src, row_bytes, kind1, kind2):
    """Rows at ``o`` and ``o + row_bytes`` of ``out``, both Average/Paeth, 1 byte per pixel:
    two dependency chains interleaved."""
    above, below, src2 = o - row_bytes, o + row_bytes, src + row_bytes + 1
    left1 = up_left1 = left2 = up_left2 = np.int32(0)
    for c in range(row_bytes):
        up1 = np.int32(out[above + c])
        value1 = (np.int32(raw[src + c]) + _predict(kind1, left1, up1, up_left1)) & 255
        left2 = (np.int32(raw[src2 + c]) + _predict(kind2, left2, value1, up_left2)) & 255
        left1, up_left1, up_left2 = value1, up1, value1
        out[o + c] = value1
        out[below + c] = left2


@_compiled
def _unfilter_rows(raw, height, row_bytes, bpp):
    """See :func:`_unfilter` (filter bytes already checked)."""
    out = np.empty((height + 1) * row_bytes, np.uint8)  # row 0: the zero row above the image
    out[:row_bytes] = 0
    r = 0
    while r < height:
        src, o = r * (row_bytes + 1) + 1, (r + 1) * row_bytes
        kind, above = raw[src - 1], o - row_bytes
        r += 1
        if bpp == 1 and r < height and kind >= 3 and raw[src + row_bytes] >= 3:
            _row_pair(out, raw, o, src, row_bytes, kind, raw[src + row_bytes])
            r += 1
        elif kind == 0:
            out[o : o + row_bytes] = raw[src : src + row_bytes]
        elif kind == 2:
            for c in range(row_bytes):
                out[o + c] = np.uint8(raw[src + c] + out[above + c])
        else:
            for channel in range(bpp):
                left = up_left = np.int32(0)
                for c in range(channel, row_bytes, bpp):
                    up = np.int32(out[above + c])
                    if kind == 1:
                        left = (np.int32(raw[src + c]) + left) & 255
                    else:
                        left = (np.int32(raw[src + c]) + _predict(kind, left, up, up_left)) & 255
                    up_left = up
                    out[o + c] = left
    return out[row_bytes:].reshape(height, row_bytes)
