"""cxrkit.io.png: the fast PNG decoder gives OpenCV's pixels exactly, or steps aside (None)."""

from __future__ import annotations

import io
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrkit.io import ImageReadError, read_xray, read_xray_bytes
from cxrkit.io.png import decode_png

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type


def chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (kind, body) chunks of a PNG."""
    out, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def build(parts: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(chunk(kind, body) for kind, body in parts)


def ihdr(width: int, height: int, depth: int, colour: int, interlace: int = 0) -> bytes:
    return (
        width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([depth, colour, 0, 0])
    ) + bytes([interlace])


def random_png(seed: int, height: int, width: int, channels: int, depth: int) -> bytes:
    """A PNG of random filtered rows with random filter bytes 0-4: every filter, every pair of
    consecutive filters, the first row's and first column's edge cases."""
    rng = np.random.default_rng(seed)
    row_bytes = width * channels * depth // 8
    raw = rng.integers(0, 256, (height, row_bytes + 1), dtype=np.uint8)
    raw[:, 0] = rng.integers(0, 5, height)
    header = ihdr(width, height, depth, COLOUR_TYPE[channels])
    return build([(b"IHDR", header), (b"IDAT", zlib.compress(raw.tobytes())), (b"IEND", b"")])


def opencv(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def assert_same_as_opencv(data: bytes) -> None:
    got, want = decode_png(data), opencv(data)
    assert got is not None and want is not None
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def filters_used(data: bytes) -> set[int]:
    parts = dict(chunks(data))
    width = int.from_bytes(parts[b"IHDR"][:4], "big")
    depth, colour = parts[b"IHDR"][8], parts[b"IHDR"][9]
    channels = {0: 1, 2: 3, 6: 4}[colour]
    idat = b"".join(body for kind, body in chunks(data) if kind == b"IDAT")
    raw = zlib.decompress(idat)
    return set(raw[:: width * channels * depth // 8 + 1])


@pytest.mark.parametrize(("channels", "depth"), [(1, 8), (1, 16), (3, 8), (4, 8), (3, 16)])
@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 9), (9, 1), (7, 5), (64, 33)])
def test_random_filters_decode_as_opencv_does(channels, depth, height, width):
    for seed in range(3):
        data = random_png(seed, height, width, channels, depth)
        assert_same_as_opencv(data)
    if height == 64:
        assert filters_used(data) == {0, 1, 2, 3, 4}


def natural(height: int, width: int, channels: int, dtype: type) -> np.ndarray:
    """Smooth gradients, an edge and some noise: what an encoder's filter choice sees."""
    yy, xx = np.mgrid[:height, :width]
    base = (yy * 3 + xx * 2) % 256 + (xx > width // 2) * 60
    noise = np.random.default_rng(0).integers(0, 9, (height, width, channels))
    img = (base[..., None] + noise) % 256
    if dtype is np.uint16:
        img = img * 257 + noise
    img = img.astype(dtype)
    return img[..., 0] if channels == 1 else img


OPENCV_FILTERS = {
    "none": cv2.IMWRITE_PNG_FILTER_NONE,
    "sub": cv2.IMWRITE_PNG_FILTER_SUB,
    "up": cv2.IMWRITE_PNG_FILTER_UP,
    "average": cv2.IMWRITE_PNG_FILTER_AVG,
    "paeth": cv2.IMWRITE_PNG_FILTER_PAETH,
    "all": cv2.IMWRITE_PNG_ALL_FILTERS,
}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("filter_name", list(OPENCV_FILTERS))
def test_opencv_written_pngs_decode_as_opencv_does(dtype, channels, filter_name):
    img = natural(37, 29, channels, dtype)
    params = [cv2.IMWRITE_PNG_FILTER, OPENCV_FILTERS[filter_name], cv2.IMWRITE_PNG_COMPRESSION, 9]
    ok, buf = cv2.imencode(".png", img, params)
    assert ok
    assert_same_as_opencv(buf.tobytes())
    np.testing.assert_array_equal(decode_png(buf.tobytes()), img)


def test_pillow_written_pngs_and_ancillary_chunks_decode_as_opencv_does():
    img = natural(40, 50, 3, np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG", dpi=(300, 300), optimize=True)
    assert_same_as_opencv(out.getvalue())
    gray = build(
        [
            chunks(random_png(1, 20, 30, 1, 8))[0],
            (b"gAMA", (45455).to_bytes(4, "big")),
            (b"sBIT", bytes([5])),
            (b"tEXt", b"Comment\x00a phantom"),
            *chunks(random_png(1, 20, 30, 1, 8))[1:],
        ]
    )
    assert_same_as_opencv(gray)


NO_CACHE_FOLDER = """
import sys, numpy as np, cv2
import numba.core.caching
numba.core.caching.CacheImpl._locator_classes = []  # as when no folder can be written
from cxrkit.io.png import decode_png
data = open(sys.argv[1], "rb").read()
want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
assert np.array_equal(decode_png(data), want)
print("decoded without a cache")
"""


def test_decodes_where_numba_cannot_write_its_cache(tmp_path: Path):
    path = tmp_path / "x.png"
    path.write_bytes(random_png(3, 16, 16, 1, 8))
    done = subprocess.run(
        [sys.executable, "-c", NO_CACHE_FOLDER, str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "decoded without a cache"


def test_threads_decode_the_same_pixels():
    blobs = [random_png(seed, 64, 64, 1, 8) for seed in range(8)]
    with ThreadPoolExecutor(4) as pool:
        for got, data in zip(pool.map(decode_png, blobs * 4), blobs * 4, strict=True):
            np.testing.assert_array_equal(got, opencv(data))


def replaced(data: bytes, kind: bytes, body: bytes) -> bytes:
    return build([(k, body if k == kind else b) for k, b in chunks(data)])


def inserted_before_idat(data: bytes, kind: bytes, body: bytes) -> bytes:
    parts = chunks(data)
    at = next(i for i, (k, _) in enumerate(parts) if k == b"IDAT")
    return build([*parts[:at], (kind, body), *parts[at:]])


GRAY = random_png(5, 32, 32, 1, 8)
GRAY_IDAT = dict(chunks(GRAY))[b"IDAT"]


def bad_crc(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 4 + len(GRAY_IDAT)
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def split_idat(data: bytes) -> bytes:
    parts = [p for p in chunks(data) if p[0] != b"IDAT"]
    half = len(GRAY_IDAT) // 2
    idat = [(b"IDAT", GRAY_IDAT[:half]), (b"tEXt", b"a\x00b"), (b"IDAT", GRAY_IDAT[half:])]
    return build([parts[0], *idat, parts[-1]])


def bad_filter(data: bytes) -> bytes:
    raw = bytearray(zlib.decompress(GRAY_IDAT))
    raw[33 * 3] = 5  # the 4th row's filter byte
    return replaced(data, b"IDAT", zlib.compress(bytes(raw)))


def zlib_window(data: bytes, cinfo: int) -> bytes:
    """The IDAT's zlib header declaring a window of 2 ** (cinfo + 8) bytes (FCHECK fixed)."""
    cmf = cinfo << 4 | 8
    flg = next(f for f in range(256) if (cmf * 256 + f) % 31 == 0 and not f & 0x20)
    return replaced(data, b"IDAT", bytes([cmf, flg]) + GRAY_IDAT[2:])


def pillow(mode: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(natural(24, 24, 1, np.uint8)).convert(mode).save(out, format="PNG")
    return out.getvalue()


STEPS_ASIDE = {
    "IDAT CRC mismatch": bad_crc(GRAY),
    "transparency (tRNS)": inserted_before_idat(GRAY, b"tRNS", b"\x00\x07"),
    "interlaced": replaced(GRAY, b"IHDR", ihdr(32, 32, 8, 0, interlace=1)),
    "truncated zlib stream": replaced(GRAY, b"IDAT", GRAY_IDAT[:-40]),
    "data after the zlib stream": replaced(GRAY, b"IDAT", GRAY_IDAT + b"\x00\x00"),
    "stream longer than the image": replaced(
        GRAY, b"IDAT", zlib.compress(zlib.decompress(GRAY_IDAT) + b"\x00" * 33)
    ),
    "filter byte 5": bad_filter(GRAY),
    "unknown critical chunk": inserted_before_idat(GRAY, b"ABCD", b"x"),
    "IDAT chunks not consecutive": split_idat(GRAY),
    "animated (acTL)": inserted_before_idat(GRAY, b"acTL", bytes(8)),
    "no IEND": GRAY[:-12],
    "chunk type with a digit": inserted_before_idat(GRAY, b"a1cD", b"x"),
    "chunk type with the reserved bit set": inserted_before_idat(GRAY, b"abcd", b"x"),
    "zlib window over 32 KiB": zlib_window(GRAY, 8),
    "animation frame (fcTL)": inserted_before_idat(GRAY, b"fcTL", bytes(26)),
    "bKGD of 3 bytes": inserted_before_idat(GRAY, b"bKGD", bytes(3)),
    "a chunk over OpenCV's 8 MB": inserted_before_idat(GRAY, b"prVW", bytes(8_000_000 - 11)),
    "width over libpng's 1,000,000": build(
        [
            (b"IHDR", ihdr(1_000_001, 1, 8, 0)),
            (b"IDAT", zlib.compress(bytes(1_000_002))),
            (b"IEND", b""),
        ]
    ),
    "palette": pillow("P"),
    "gray + alpha": pillow("LA"),
    "1-bit": pillow("1"),
}


@pytest.mark.parametrize("case", list(STEPS_ASIDE))
def test_steps_aside_and_read_xray_gives_what_opencv_gives(case):
    data = STEPS_ASIDE[case]
    assert decode_png(data) is None
    want = opencv(data)
    if want is None or case == "no IEND":
        with pytest.raises(ImageReadError, match="corrupt PNG data|no IEND"):
            read_xray_bytes(data, name="x.png", min_side=1)
    else:
        gray = want if want.ndim == 2 else cv2.cvtColor(want, cv2.COLOR_BGRA2GRAY)
        np.testing.assert_array_equal(read_xray_bytes(data, min_side=1).pixels, gray)


def test_a_zlib_window_of_32_kib_is_fine():
    assert_same_as_opencv(zlib_window(GRAY, 7))


def test_never_raises_on_forged_headers_or_other_bytes():
    huge = build(
        [
            (b"IHDR", ihdr(2**32 - 1, 2**32 - 1, 8, 0)),
            (b"IDAT", zlib.compress(bytes(10))),
            (b"IEND", b""),
        ]
    )
    for data in (huge, b"\0" * 8 + GRAY[8:], b"", SIGNATURE, GRAY[:40], b"\x89PNG" * 9):
        assert decode_png(data) is None


def test_corrupt_data_is_still_refused_with_the_file_name():
    with pytest.raises(ImageReadError, match=r"x\.png.*corrupt PNG data"):
        read_xray_bytes(bad_filter(GRAY), name="x.png", min_side=1)


SKIMAGE = Path(pytest.importorskip("skimage").__file__).parent / "data"


def test_skimage_photographs_decode_as_opencv_does_or_step_aside():
    fast = 0
    for path in sorted(SKIMAGE.glob("*.png")):
        data = path.read_bytes()
        got = decode_png(data)
        if got is not None:
            np.testing.assert_array_equal(got, opencv(data), err_msg=path.name)
            fast += 1
    assert fast >= 10, f"only {fast} of skimage's PNGs took the fast path"


def test_real_nih_films_all_take_the_fast_path(shared_data: Path):
    paths = sorted((shared_data / "nih-sample" / "images").glob("*.png"))
    assert len(paths) >= 100
    for path in paths:
        data = path.read_bytes()
        assert_same_as_opencv(data)
        want = opencv(data)
        gray = want if want.ndim == 2 else cv2.cvtColor(want, cv2.COLOR_BGRA2GRAY)
        np.testing.assert_array_equal(read_xray(path).pixels, gray)
