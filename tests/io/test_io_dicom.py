"""DICOM path of cxrkit.io: real SIIM samples and data sets generated with pydicom."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fakes import dicom_bytes as to_bytes
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_windowing
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

import cxrkit.io.dicom as dicom_module
from cxrkit.io import ImageReadError, read_xray, read_xray_bytes

DICOM_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "formats" / "dicom"
SIIM = DICOM_DIR / "siim_pneumothorax_sample.dcm"
MONO1 = DICOM_DIR / "monochrome1_sample.dcm"

# A 64 x 256 ramp over the 12-bit range: each column one value, increasing left to right.
RAMP12 = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (64, 1))


def make_ds(arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **attrs) -> Dataset:
    """An uncompressed DX data set holding ``arr`` with extra attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.set_pixel_data(arr, photometric, bits)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def read_ds(ds: Dataset, tmp_path: Path, **kwargs):
    path = tmp_path / "image.dcm"
    path.write_bytes(to_bytes(ds, **kwargs))
    return read_xray(path)


def test_real_siim_and_monochrome1_inverted():
    if not (SIIM.exists() and MONO1.exists()):
        pytest.skip(f"real DICOM samples not found in {DICOM_DIR}")
    mono2, mono1 = read_xray(SIIM), read_xray(MONO1)
    assert mono2.pixels.shape == (1024, 1024) and mono2.pixels.dtype == np.uint8
    assert (mono2.format, mono2.bits_stored, mono2.spacing_mm) == ("DICOM", 8, (0.168, 0.168))
    assert mono2.modality == mono1.modality == "CR"  # secondary captures of CR: read by default
    assert np.array_equal(mono1.pixels, 255 - mono2.pixels)
    corr = np.corrcoef(mono1.pixels.ravel(), mono2.pixels.ravel())[0, 1]
    assert corr < -0.99
    assert np.array_equal(read_xray_bytes(SIIM.read_bytes(), name="u.dcm").pixels, mono2.pixels)


def test_ramp_maps_monotonically_to_full_range(tmp_path):
    xray = read_ds(make_ds(RAMP12), tmp_path)
    row = xray.pixels[0].astype(int)
    assert xray.pixels.shape == (64, 256) and xray.pixels.dtype == np.uint8
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0)
    assert (xray.format, xray.bits_stored, xray.spacing_mm) == ("DICOM", 12, None)
    assert xray.modality is None


def test_monochrome1_16bit_is_reversed(tmp_path):
    ramp16 = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    mono1 = read_ds(make_ds(ramp16, "MONOCHROME1", bits=16), tmp_path).pixels
    mono2 = read_ds(make_ds(ramp16, "MONOCHROME2", bits=16), tmp_path).pixels
    assert mono1[0, 0] == 255 and mono1[0, -1] == 0 and np.all(np.diff(mono1[0].astype(int)) <= 0)
    assert np.array_equal(mono1, 255 - mono2)


def test_rescale_applied_before_window(tmp_path):
    # Stored 0..4080 -> Hounsfield-like -1024..7136; window [-1000, 1000] in rescaled units.
    ds = make_ds(RAMP12, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=2000)
    out = read_ds(ds, tmp_path).pixels[0]
    rescaled = RAMP12[0] * 2.0 - 1024
    assert np.all(out[rescaled <= -1000] == 0) and np.all(out[rescaled > 1000] == 255)
    inside = (rescaled > -1000) & (rescaled <= 1000)
    assert np.all(np.diff(out[inside].astype(int)) >= 0) and 0 < out[inside].min() < 30
    # Without a window the rescale is linear, so min-max gives the same as the raw ramp.
    no_window = make_ds(RAMP12, RescaleSlope=2, RescaleIntercept=-1024)
    assert np.array_equal(
        read_ds(no_window, tmp_path).pixels, read_ds(make_ds(RAMP12), tmp_path).pixels
    )


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_matches_pydicom(tmp_path, function):
    ds = make_ds(RAMP12, WindowCenter=2048, WindowWidth=1024, VOILUTFunction=function)
    out = read_ds(ds, tmp_path).pixels[0].astype(float)
    expected = apply_windowing(RAMP12[0], ds) * 255.0 / 4095.0  # pydicom's range is 0..4095
    assert np.abs(out - expected).max() <= 1.0
    if function != "SIGMOID":
        assert np.all(out[RAMP12[0] < 1536] == 0) and np.all(out[RAMP12[0] > 2560] == 255)


def test_multivalued_and_invalid_windows(tmp_path):
    two = make_ds(RAMP12, WindowCenter=[2048, 100], WindowWidth=[1024, 10])
    one = make_ds(RAMP12, WindowCenter=2048, WindowWidth=1024)
    assert np.array_equal(read_ds(two, tmp_path).pixels, read_ds(one, tmp_path).pixels)
    zero_width = make_ds(RAMP12, WindowCenter=2048, WindowWidth=0)
    assert np.array_equal(
        read_ds(zero_width, tmp_path).pixels, read_ds(make_ds(RAMP12), tmp_path).pixels
    )


def test_voi_lut_sequence_uses_table_range(tmp_path):
    # A 16-bit-nominal table whose values only reach 4095 (a common quirk), domain 1000..3047.
    table = np.sqrt(np.linspace(0, 1, 2048)) * 4095
    item = Dataset()
    item.LUTDescriptor = [2048, 1000, 16]
    item.add_new("LUTData", "US", [int(v) for v in table])
    ds = make_ds(RAMP12, VOILUTSequence=Sequence([item]), WindowCenter=0, WindowWidth=10)
    out = read_ds(ds, tmp_path).pixels[0]
    values = RAMP12[0].astype(int)
    assert np.all(out[values <= 1000] == 0) and np.all(out[values >= 3047] == 255)
    inside = (values > 1000) & (values < 3047)
    expected = np.rint(table.astype(int)[values[inside] - 1000] * 255 / int(table[-1]))
    assert np.abs(out[inside] - expected).max() <= 1


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_lossless_equals_uncompressed(tmp_path, syntax):
    ds = make_ds(RAMP12 // 2 + np.arange(64, dtype=np.uint16)[:, None])
    expected = read_ds(ds, tmp_path).pixels
    try:
        ds.compress(syntax)
    except RuntimeError as exc:  # encoder plugin missing
        pytest.skip(f"cannot encode {syntax.name}: {exc}")
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(read_ds(ds, tmp_path).pixels, expected)


def test_pixel_spacing_kept(tmp_path):
    pixel = make_ds(RAMP12, PixelSpacing=[0.139, 0.143], ImagerPixelSpacing=[0.2, 0.2])
    imager = make_ds(RAMP12, ImagerPixelSpacing=[0.15, 0.16])
    assert read_ds(pixel, tmp_path).spacing_mm == (0.139, 0.143)
    assert read_ds(imager, tmp_path).spacing_mm == (0.15, 0.16)


def test_multiframe_reads_first_frame(tmp_path):
    frames = np.stack([RAMP12, RAMP12[:, ::-1]])
    out = read_ds(make_ds(frames), tmp_path).pixels
    assert out.shape == (64, 256) and out[0, 0] == 0 and out[0, -1] == 255


def test_rgb_dicom_to_gray(tmp_path):
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    ds = make_ds(rgb, "RGB", bits=8)
    assert ds.SamplesPerPixel == 3
    out = read_ds(ds, tmp_path).pixels
    assert out.shape == (32, 32) and np.all(out == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50))


def test_dicom_without_preamble_or_file_meta(tmp_path):
    ds = make_ds(RAMP12)
    del ds.file_meta
    data = to_bytes(ds, implicit_vr=True, little_endian=True)
    assert data[128:132] != b"DICM"
    assert np.array_equal(read_xray_bytes(data).pixels, read_ds(make_ds(RAMP12), tmp_path).pixels)


def _error(tmp_path: Path, data: bytes, **kwargs) -> ImageReadError:
    path = tmp_path / "bad.dcm"
    path.write_bytes(data)
    with pytest.raises(ImageReadError) as info:
        read_xray(path, **kwargs)
    assert str(path) in str(info.value) and info.value.path == str(path)
    return info.value


def test_no_pixel_data(tmp_path):
    ds = make_ds(RAMP12)
    del ds.PixelData
    assert "no pixel data" in _error(tmp_path, to_bytes(ds)).reason


def test_too_many_pixels_refused(tmp_path):
    assert "too many pixels" in _error(tmp_path, to_bytes(make_ds(RAMP12)), max_pixels=1000).reason


def test_truncated_dicom(tmp_path):
    data = to_bytes(make_ds(RAMP12))
    assert "truncated DICOM pixel data" in _error(tmp_path, data[: len(data) - 5000]).reason
    assert "no pixel data" in _error(tmp_path, data[:300]).reason


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_corrupt_compressed_pixel_data(tmp_path):
    ds = make_ds(RAMP12)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 100])  # not a JPEG 2000 code stream
    ds["PixelData"].VR = "OB"
    assert "corrupt or truncated DICOM pixel data (" in _error(tmp_path, to_bytes(ds)).reason
    ds = make_ds(RAMP12)
    ds.compress(RLELossless)
    truncated = to_bytes(ds)[:-100]  # cut inside the encapsulated pixel data
    assert _error(tmp_path, truncated).reason == "truncated or corrupt DICOM pixel data element"


def test_missing_decoder_names_package(tmp_path, monkeypatch):
    ds = make_ds(RAMP12)
    ds.compress(RLELossless)
    data = to_bytes(ds)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    jpeg_data = to_bytes(ds)
    missing = SimpleNamespace(is_available=False)
    monkeypatch.setattr(dicom_module, "get_decoder", lambda _uid: missing)
    assert "pip install pylibjpeg pylibjpeg-rle" in _error(tmp_path, data).reason
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in _error(tmp_path, jpeg_data).reason


def test_unsupported_transfer_syntax(tmp_path):
    ds = make_ds(RAMP12)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    data = to_bytes(ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    assert "unsupported DICOM transfer syntax" in _error(tmp_path, data).reason


def test_palette_color_to_gray(tmp_path):
    indices = np.tile(np.arange(256, dtype=np.uint8), (32, 1))
    ds = make_ds(indices, "PALETTE COLOR", bits=8)
    gray_lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()  # index i -> gray i
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", gray_lut)
    assert np.array_equal(read_ds(ds, tmp_path).pixels, indices)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_malformed_rescale_is_an_error(tmp_path):
    data = to_bytes(make_ds(RAMP12, RescaleIntercept=0, RescaleSlope=7))
    data = data.replace(b"DS\x04\x007.0 ", b"DS\x04\x00x.0 ")  # RescaleSlope "x.0"
    assert "invalid DICOM LUT/rescale attributes" in _error(tmp_path, data).reason
