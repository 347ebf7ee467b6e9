"""Batched JPEG decoding (``infer --gpu-decode``) against the CPU reader: same letterboxed pixels
within one gray level, same structural checks, per-image fallbacks. On the CPU the batched path
runs with torchvision's CPU decoder; the same comparisons on CUDA run only where a GPU is."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from cxrkit.cli.parser import main
from cxrkit.data.preprocess import Clahe, prepare_image
from cxrkit.deploy.batch import predict_paths
from cxrkit.deploy.gate import structural_reasons
from cxrkit.deploy.jpeg_batch import (
    JpegFile,
    colour_of,
    decode_pending,
    letterbox_on,
    read_deferred,
    use_gpu_decode,
)
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.io.geometry import letterbox
from cxrkit.io.images import jpeg_header, read_xray
from cxrkit.io.xray import ImageReadError

SAMPLE = Path("/work/shared/data/formats/jpeg/cxr_16747_3_1.jpg")
#: measured on these images (sizes 64-512): max |delta| 1 gray level, mean at most 0.13
MAX_DELTA, MEAN_DELTA = 1, 0.2
#: measured: |colour - CPU colour| at most 0.0008 on skimage's photographs (gate limit 0.015)
COLOUR_DELTA = 0.01
CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here: nvJPEG decoding cannot run"
)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's deprecation


def _jpeg(path: Path, image: np.ndarray, quality: int = 90) -> Path:
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return path


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 Exif segment whose IFD0 holds Orientation (big-endian TIFF)."""
    tiff = b"MM\0*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += b"\0\0\0\0"
    body = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real and made JPEGs: the sample film, colour photographs, gray odd sizes and aspects."""
    folder = tmp_path_factory.mktemp("jpegs")
    out = [SAMPLE] if SAMPLE.is_file() else []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        out.append(_jpeg(folder / f"{name}.jpg", getattr(data, name)()[..., ::-1]))
    gray = data.camera()
    for h, w in ((333, 517), (1001, 767), (97, 300), (40, 41), (600, 64)):
        out.append(_jpeg(folder / f"gray_{h}x{w}.jpg", cv2.resize(gray, (w, h))))
    photo = cv2.resize(data.astronaut()[..., ::-1], (301, 219))
    out.append(_jpeg(folder / "colour_odd.jpg", photo))
    return out


def _pending(paths: list[Path]) -> list[SimpleNamespace]:
    items = []
    for p in paths:
        jpeg = read_deferred(p)
        assert isinstance(jpeg, JpegFile), p
        items.append(SimpleNamespace(jpeg=jpeg, pixels=None, error=None, checks=[]))
    return items


def _compare(paths: list[Path], size: int, device: str, clahe: Clahe | None = None) -> None:
    """The batched path on ``device`` against read_xray + prepare_image + structural_reasons."""
    items = _pending(paths)
    decode_pending(items, size, clahe, True, torch.device(device))
    for path, it in zip(paths, items, strict=True):
        xray = read_xray(path)
        ref = prepare_image(xray.pixels, size, clahe)
        assert it.error is None and it.jpeg is None
        assert isinstance(it.pixels, torch.Tensor) and it.pixels.device.type == device
        delta = np.abs(it.pixels[0].cpu().numpy().astype(int) - ref)
        # CLAHE's local histograms amplify a one-level step: measured max 5, mean 0.39
        top, mean = (MAX_DELTA, MEAN_DELTA) if clahe is None else (6, 0.5)
        assert delta.max() <= top and delta.mean() <= mean, (path, size, delta.max())
        assert it.checks == structural_reasons(xray), path


@pytest.mark.parametrize("size", [64, 224, 512])
def test_batched_decode_matches_the_cpu_reader(jpegs: list[Path], size: int) -> None:
    _compare(jpegs, size, "cpu")


def test_the_sample_film_is_there() -> None:
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} is absent (/work/shared/data not mounted)")
    sample = read_deferred(SAMPLE)  # a radiograph saved as a 3-component JPEG
    assert isinstance(sample, JpegFile) and sample.colour


def test_colour_statistic_matches(jpegs: list[Path]) -> None:
    from torchvision.io import decode_jpeg

    for path in jpegs:
        if jpeg_header(path.read_bytes()).components != 3:
            continue
        rgb = decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), "RGB")
        assert abs(colour_of(rgb, 1) - read_xray(path).colour) <= COLOUR_DELTA, path


def test_letterbox_geometry_matches_opencv() -> None:
    rng = np.random.default_rng(0)
    for h, w, size in ((1001, 767, 512), (37, 1000, 64), (50, 33, 224), (512, 300, 512)):
        image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        ours = letterbox_on(torch.from_numpy(image), size).numpy().astype(int)
        assert np.abs(ours - letterbox(image, size)).max() <= MAX_DELTA, (h, w, size)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_opencv(tmp_path: Path, orientation: int) -> None:
    plain = _jpeg(tmp_path / "plain.jpg", cv2.resize(data.camera(), (300, 200))).read_bytes()
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(_with_orientation(plain, orientation))
    assert read_deferred(path).orientation == orientation  # type: ignore[union-attr]
    _compare([path], 128, "cpu")


def test_clahe_after_the_letterbox(jpegs: list[Path]) -> None:
    _compare(jpegs[:3], 128, "cpu", Clahe())


def test_what_the_batch_cannot_decode_takes_the_cpu_path(tmp_path: Path) -> None:
    plain = _jpeg(tmp_path / "plain.jpg", data.camera(), 95).read_bytes()
    head = jpeg_header(plain)
    sof = plain.index(b"\xff\xc0")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(plain[: len(plain) // 2])
    with pytest.raises(ImageReadError, match="truncated JPEG data"):
        read_deferred(truncated)
    arithmetic = tmp_path / "arith.jpg"  # SOF9: arithmetic coding, never batched
    arithmetic.write_bytes(plain[: sof + 1] + b"\xc9" + plain[sof + 2 :])
    twelve = tmp_path / "twelve.jpg"  # 12-bit precision in the frame header
    twelve.write_bytes(plain[: sof + 4] + b"\x0c" + plain[sof + 5 :])
    from PIL import Image

    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(data.astronaut()).convert("CMYK").save(cmyk, "JPEG")
    for path in (arithmetic, twelve, cmyk):
        try:
            expected: object = read_xray(path).pixels
        except ImageReadError as err:
            expected = err.reason
        try:
            got = read_deferred(path)
        except ImageReadError as err:
            assert err.reason == expected, path
        else:
            assert not isinstance(got, JpegFile) and np.array_equal(got.pixels, expected), path
    # a scan libjpeg-in-torchvision refuses while OpenCV decodes it: that image alone falls back
    corrupt = bytearray(plain)
    corrupt[head.scan + 600 : head.scan + 5000] = bytes(range(256)) * 17  # 48 bytes short
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(bytes(corrupt))
    items = _pending([tmp_path / "plain.jpg", bad])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decode_pending(items, 64, None, False, torch.device("cpu"))
    assert isinstance(items[0].pixels, torch.Tensor)
    assert isinstance(items[1].pixels, np.ndarray)  # the CPU reader's
    np.testing.assert_array_equal(items[1].pixels[0], prepare_image(read_xray(bad).pixels, 64))


def test_gpu_decode_needs_cuda() -> None:
    cpu = torch.device("cpu")
    assert use_gpu_decode(None, cpu) is False and use_gpu_decode(False, cpu) is False
    assert use_gpu_decode(None, torch.device("cuda", 0)) is True
    with pytest.raises(UserError, match="use --device cuda or --gpu-decode off"):
        use_gpu_decode(True, cpu)


def test_predict_paths_batched_matches(trained: Path, jpegs: list[Path], tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(trained / "checkpoints" / "best.ckpt", batch_size=4)
    png = tmp_path / "gray.png"
    cv2.imwrite(str(png), data.camera())
    missing = tmp_path / "missing.jpg"
    paths = [*jpegs[:6], png, missing]
    plain = list(predict_paths(predictor, paths))
    batched = list(predict_paths(predictor, paths, jpeg_batch=True))
    for a, b in zip(plain, batched, strict=True):
        assert (a.path, a.error) == (b.path, b.error)
        if a.gate is not None:
            assert a.gate.reasons[:1] == b.gate.reasons[:1]  # type: ignore[union-attr]
        if a.probs is None:
            assert b.probs is None
        else:
            np.testing.assert_allclose(a.probs, b.probs, atol=0.02)
    assert batched[-1].error == "file not found"


def test_infer_gpu_decode_on_without_cuda(
    trained: Path, jpegs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(trained / "checkpoints" / "best.ckpt")
    out = tmp_path / "preds.csv"
    argv = ["infer", "--checkpoint", ckpt, "--source", str(jpegs[1]), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--gpu-decode", "on"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "warning" not in ln]
    assert len(lines) == 1 and lines[0].startswith("cxrkit infer: error: --gpu-decode on"), lines
    assert "use --device cuda or --gpu-decode off" in lines[0] and not out.exists()
    assert main([*argv, "--device", "cpu", "--workers", "0"]) == 0
    assert '"decode": "cpu"' in (tmp_path / "preds.csv.json").read_text()


@CUDA
@pytest.mark.parametrize("size", [224, 512])
def test_on_cuda_nvjpeg_matches_the_cpu_reader(jpegs: list[Path], size: int) -> None:
    _compare(jpegs, size, "cuda")


@CUDA
def test_on_cuda_exif_and_fallback(tmp_path: Path) -> None:
    plain = _jpeg(tmp_path / "plain.jpg", cv2.resize(data.camera(), (300, 200))).read_bytes()
    paths = []
    for orientation in (3, 6, 8):
        paths.append(tmp_path / f"o{orientation}.jpg")
        paths[-1].write_bytes(_with_orientation(plain, orientation))
    _compare(paths, 128, "cuda")
