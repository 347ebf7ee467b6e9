"""PNG/JPEG reading, format detection, errors and letterboxing of cxrkit.io."""

from __future__ import annotations

import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrkit.errors import UserError
from cxrkit.io import (
    SNIFF_BYTES,
    ImageReadError,
    letterbox,
    letterbox_geometry,
    read_xray,
    read_xray_bytes,
    sniff_format,
)
from cxrkit.io.xray import MIN_SIDE

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NIH_IMAGES = DATA / "nih-sample" / "images"
REAL_JPEG = DATA / "formats" / "jpeg" / "cxr_16747_3_1.jpg"


def encode(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) * 2 % 256).astype(np.uint8)


# --- real files -------------------------------------------------------------------------------


def test_all_nih_pngs_read_including_rgba():
    paths = sorted(NIH_IMAGES.glob("*.png"))
    if not paths:
        pytest.skip(f"NIH sample not found in {NIH_IMAGES}")
    assert len(paths) == 118
    rgba = [p for p in paths if p.read_bytes()[25] == 6]  # IHDR colour type 6: RGBA
    assert len(rgba) == 2
    for path in paths:
        xray = read_xray(path)
        assert xray.pixels.shape == (1024, 1024) and xray.pixels.dtype == np.uint8
        assert (xray.format, xray.bits_stored, xray.source) == ("PNG", 8, str(path))
        assert xray.modality is None
    for path in rgba:
        bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert bgra.shape == (1024, 1024, 4)
        assert np.array_equal(bgra[..., 0], bgra[..., 2]) and np.array_equal(
            bgra[..., 1], bgra[..., 2]
        )
        assert np.array_equal(read_xray(path).pixels, bgra[..., 2])


def test_nih_threads_give_same_pixels():
    paths = sorted(NIH_IMAGES.glob("*.png"))[:6]
    if not paths:
        pytest.skip(f"NIH sample not found in {NIH_IMAGES}")
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(read_xray, paths))
    for path, xray in zip(paths, threaded, strict=True):
        assert np.array_equal(xray.pixels, read_xray(path).pixels)


def test_real_three_channel_jpeg():
    if not REAL_JPEG.exists():
        pytest.skip(f"real JPEG sample not found: {REAL_JPEG}")
    xray = read_xray(REAL_JPEG)
    assert xray.pixels.shape == (885, 1036) and xray.pixels.dtype == np.uint8
    assert (xray.format, xray.bits_stored, xray.spacing_mm) == ("JPEG", 8, None)
    assert xray.modality is None
    bgr = cv2.imread(str(REAL_JPEG), cv2.IMREAD_COLOR)
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(int)
    assert np.abs(xray.pixels.astype(int) - expected).max() <= 2


# --- generated PNG / JPEG ---------------------------------------------------------------------


def test_png_8bit_kept_exactly(tmp_path):
    img = gradient()
    path = tmp_path / "a.png"
    path.write_bytes(encode(img))
    xray = read_xray(path)
    assert np.array_equal(xray.pixels, img)
    from_bytes = read_xray_bytes(path.read_bytes(), name=str(path))
    assert np.array_equal(from_bytes.pixels, img)
    assert (from_bytes.source, from_bytes.format, from_bytes.bits_stored) == (str(path), "PNG", 8)
    assert read_xray_bytes(path.read_bytes()).source == "<bytes>"


def test_png_16bit_minmax_scaled():
    ramp = np.tile(np.linspace(1000, 5000, 256).astype(np.uint16), (32, 1))
    xray = read_xray_bytes(encode(ramp))
    row = xray.pixels[0].astype(int)
    assert xray.bits_stored == 16 and xray.pixels.dtype == np.uint8
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0)
    expected = np.rint((ramp[0] - 1000.0) * 255 / 4000)
    assert np.abs(row - expected).max() <= 1
    constant = read_xray_bytes(encode(np.full((32, 32), 3000, np.uint16))).pixels
    assert np.array_equal(constant, np.zeros((32, 32), np.uint8))


def test_rgba_png_gray_ignores_alpha():
    gray = gradient()
    rgba = np.dstack([gray, gray, gray, np.arange(gray.size, dtype=np.uint8).reshape(gray.shape)])
    assert np.array_equal(read_xray_bytes(encode(rgba)).pixels, gray)
    color = np.dstack([gray, 255 - gray, gray // 2])
    assert np.array_equal(
        read_xray_bytes(encode(color)).pixels, cv2.cvtColor(color, cv2.COLOR_BGR2GRAY)
    )


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "RGB", "RGBA"])
def test_png_colour_types_match_pillow_gray(mode):
    img = Image.fromarray(gradient()).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = read_xray_bytes(buf.getvalue()).pixels
    expected = np.asarray(img.convert("L"), dtype=int)
    assert out.shape == (48, 64) and np.abs(out.astype(int) - expected).max() <= 1


def test_jpeg_gray_and_color(tmp_path):
    img = gradient(64, 64)
    gray = read_xray_bytes(encode(img, ".jpg"))
    assert gray.format == "JPEG" and gray.bits_stored == 8
    assert np.abs(gray.pixels.astype(int) - img).mean() < 3
    color = read_xray_bytes(encode(np.dstack([img] * 3), ".jpg"))
    assert color.pixels.shape == (64, 64) and np.abs(color.pixels.astype(int) - img).mean() < 3


def test_format_detected_from_content_not_extension(tmp_path):
    png_as_jpg = tmp_path / "really_png.jpg"
    png_as_jpg.write_bytes(encode(gradient()))
    jpg_as_png = tmp_path / "really_jpeg.png"
    jpg_as_png.write_bytes(encode(gradient(), ".jpg"))
    assert read_xray(png_as_jpg).format == "PNG"
    assert read_xray(jpg_as_png).format == "JPEG"


def test_sniff_format():
    assert sniff_format(encode(gradient())) == "PNG"
    assert sniff_format(encode(gradient(), ".jpg")) == "JPEG"
    assert sniff_format(b"\0" * 128 + b"DICM" + b"\0" * 10) == "DICOM"
    assert sniff_format(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == "DICOM"
    assert sniff_format(b"\x00\x08\x00\x05CS\x00\x0aISO_IR 100") == "DICOM"  # big endian
    assert sniff_format(b"\x00\x08\x00\x05\x00\x00\x00\x0a") is None  # ... needs its VR
    assert sniff_format(b"hello") is None
    # Only the first SNIFF_BYTES count: what folder listing reads of a file.
    assert SNIFF_BYTES == 132 and sniff_format((b"\0" * 128 + b"DICM")[:SNIFF_BYTES]) == "DICOM"


# --- errors -----------------------------------------------------------------------------------


def _huge_png_header() -> bytes:
    """A valid PNG start whose IHDR claims 100000 x 100000 pixels."""
    header = encode(gradient())
    return header[:16] + (100_000).to_bytes(4, "big") * 2 + header[24:]


def _corrupt_png() -> bytes:
    data = bytearray(encode(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    data[60:100] = bytes(40)  # inside IDAT; IEND still present
    return bytes(data)


PNG = encode(gradient())
JPEG = encode(gradient(64, 64), ".jpg")
BAD_CASES = {
    "empty": (b"", {}, "empty file"),
    "text": (b"patient_id,label\n1,Effusion\n", {}, "not an image"),
    "png_half": (PNG[: len(PNG) // 2], {}, "truncated PNG data"),
    "png_header_only": (PNG[:20], {}, "truncated PNG data"),
    "png_corrupt": (_corrupt_png(), {}, "corrupt PNG data"),
    "png_bomb_header": (_huge_png_header(), {}, "too many pixels"),
    "png_small_limit": (PNG, {"max_pixels": 1000}, "too many pixels"),
    "jpeg_half": (JPEG[: len(JPEG) // 2], {}, "truncated JPEG data"),
    "jpeg_header_only": (JPEG[:100], {}, "truncated or corrupt JPEG header"),
    "jpeg_small_limit": (JPEG, {"max_pixels": 1000}, "too many pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_name_path_and_reason(tmp_path, case):
    data, kwargs, reason = BAD_CASES[case]
    path = tmp_path / "x" / "scan.png"
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(ImageReadError) as info:
        read_xray(path, **kwargs)
    err = info.value
    assert isinstance(err, UserError) and err.path == str(path) and reason in err.reason
    assert (
        str(err) == f"cannot read image {str(path)!r}: {err.reason} (expected PNG, JPEG or DICOM)"
    )
    with pytest.raises(ImageReadError, match=reason):
        read_xray_bytes(data, name="upload.png", **kwargs)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="file not found") as info:
        read_xray(tmp_path / "nope.png")
    assert str(tmp_path / "nope.png") in str(info.value)
    with pytest.raises(ImageReadError, match="is a directory"):
        read_xray(tmp_path)


def test_error_survives_pickling():
    err = ImageReadError("a/b.png", "truncated PNG data")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, str(copy)) == (err.path, err.reason, str(err))


# --- letterbox --------------------------------------------------------------------------------


def test_letterbox_wide_white_image():
    out = letterbox(np.full((100, 200), 255, np.uint8), 256)
    assert out.shape == (256, 256) and out.dtype == np.uint8
    white_rows = np.flatnonzero(out.max(axis=1) == 255)
    assert len(white_rows) == 128 and white_rows[0] == 64 and white_rows[-1] == 191
    assert np.all(out[64:192] == 255) and not out[:64].any() and not out[192:].any()
    assert letterbox_geometry(100, 200, 256) == (1.28, 64, 0)


def test_letterbox_tall_and_square():
    tall = letterbox(np.full((400, 100), 9, np.uint8), 256)
    assert np.array_equal(np.flatnonzero(tall.max(axis=0)), np.arange(96, 160))
    img = gradient(512, 512)
    assert np.array_equal(
        letterbox(img, 256), cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
    )
    small = gradient(64, 64)
    assert np.array_equal(
        letterbox(small, 256), cv2.resize(small, (256, 256), interpolation=cv2.INTER_LINEAR)
    )
    assert np.array_equal(letterbox(small, 64), small)


def test_letterbox_rejects_non_2d():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        letterbox(np.zeros((4, 4, 3), np.uint8), 8)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.integers(1, 300))
def test_letterbox_never_crops_and_geometry_round_trips(h, w, size):
    out = letterbox(np.full((h, w), 200, np.uint8), size)
    assert out.shape == (size, size)
    geom = letterbox_geometry(h, w, size)
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    # The content is one centred block whose long side fills the output (short side >= 1 px).
    assert rows[0] == geom.pad_y and cols[0] == geom.pad_x
    assert abs((size - 1 - rows[-1]) - rows[0]) <= 1 and abs((size - 1 - cols[-1]) - cols[0]) <= 1
    assert max(len(rows), len(cols)) == size
    assert abs(len(rows) - max(1.0, h * geom.scale)) <= 0.5 + 1e-9
    assert abs(len(cols) - max(1.0, w * geom.scale)) <= 0.5 + 1e-9
    assert np.all(out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] == 200)
    # Corners of the original map onto the block's corners; points round-trip.
    if min(h, w) * geom.scale >= 1:
        y, x = geom.to_letterbox([0, h], [0, w])
        assert np.allclose(y, [rows[0], rows[-1] + 1], atol=0.5)
        assert np.allclose(x, [cols[0], cols[-1] + 1], atol=0.5)
    back_y, back_x = geom.to_original(*geom.to_letterbox([0.0, h / 3, h], [w / 2, 0.0, w]))
    assert np.allclose(back_y, [0.0, h / 3, h]) and np.allclose(back_x, [w / 2, 0.0, w])


@pytest.mark.parametrize("shape", [(1, 1), (31, 400), (400, 31)])
def test_images_under_the_minimum_side_are_refused_with_their_size(shape, tmp_path):
    path = tmp_path / "icon.png"
    cv2.imwrite(str(path), np.full(shape, 90, np.uint8))
    with pytest.raises(ImageReadError) as err:
        read_xray(path)
    h, w = shape
    assert err.value.path == str(path)
    assert f"image is {w}x{h} pixels" in err.value.reason
    assert f"at least {MIN_SIDE} pixels per side" in err.value.reason
    assert read_xray(path, min_side=1).pixels.shape == shape  # the reader itself can read it
    assert read_xray_bytes(encode(np.full((MIN_SIDE, MIN_SIDE), 9, np.uint8))).pixels.shape == (
        MIN_SIDE,
        MIN_SIDE,
    )
