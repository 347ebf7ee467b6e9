"""DICOM rules of cxrkit.io beyond decoding: objects without pixels named, the modality gate
(refused before decoding), PresentationLUTShape and PixelPaddingValue, on generated data sets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from fakes import dicom_bytes as to_bytes
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import cxrkit.io.dicom as dicom_module
from cxrkit.io import RADIOGRAPH_MODALITIES, ImageReadError, read_xray, read_xray_bytes
from cxrkit.io.images import sniff_format
from cxrkit.io.modality import SOP_CLASS_MODALITY
from cxrkit.io.xray import minmax_to_uint8

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # "dx", "inverse "

DX = "1.2.840.10008.5.1.4.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
# 64 x 256 over 1000..3040 (12 bits): each column one value, increasing left to right.
RAMP = np.tile(np.arange(1000, 3048, 8, dtype=np.uint16), (64, 1))


def make_ds(arr: np.ndarray | None = RAMP, sop: str = DX, **attrs) -> Dataset:
    """An uncompressed data set of SOP Class ``sop`` holding ``arr`` (None: no pixels)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop, generate_uid()
    if arr is not None:
        ds.set_pixel_data(arr, attrs.pop("photometric", "MONOCHROME2"), attrs.pop("bits", 12))
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def read(ds: Dataset, tmp_path: Path, **kwargs):
    path = tmp_path / "image.dcm"
    path.write_bytes(to_bytes(ds))
    return read_xray(path, **kwargs)


def error(ds: Dataset, tmp_path: Path, **kwargs) -> str:
    path = tmp_path / "bad.dcm"
    path.write_bytes(to_bytes(ds))
    with pytest.raises(ImageReadError) as info:
        read_xray(path, **kwargs)
    assert info.value.path == str(path) and str(path) in str(info.value)
    return info.value.reason


# --- objects without pixel data ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sop", "modality", "found"),
    [
        (RT_PLAN, "RTPLAN", "a DICOM RT Plan object (Modality RTPLAN)"),
        (BASIC_TEXT_SR, "SR", "a DICOM Basic Text SR object (Modality SR)"),
        ("1.2.3.4.5", "OT", "a DICOM object of SOP Class 1.2.3.4.5 (Modality OT)"),
        (RT_PLAN, None, "a DICOM RT Plan object"),
    ],
)
def test_no_pixel_data_names_the_object(tmp_path, sop, modality, found):
    ds = make_ds(None, sop) if modality is None else make_ds(None, sop, Modality=modality)
    # Not an image at all: "no pixel data" says more than the gate would.
    assert error(ds, tmp_path) == f"no pixel data: {found}"
    assert error(ds, tmp_path, modalities=None) == f"no pixel data: {found}"


def test_big_endian_without_preamble_is_sniffed(tmp_path):
    ds = make_ds(None, RT_PLAN, Modality="RTPLAN")
    del ds.file_meta
    data = to_bytes(ds, implicit_vr=False, little_endian=False)
    assert data[:4] == b"\x00\x08\x00\x16" and sniff_format(data) == "DICOM"
    with pytest.raises(ImageReadError, match="no pixel data: a DICOM RT Plan object"):
        read_xray_bytes(data)
    assert sniff_format(b"\x00\x08\x00\x16ab\x00\x00") is None  # no VR: not DICOM


# --- the modality gate ------------------------------------------------------------------------


def refusal(modality: str, accepted=RADIOGRAPH_MODALITIES) -> str:
    return (
        f"DICOM Modality {modality} is not a radiograph (accepted: {', '.join(accepted)}); "
        f"pass --allow-modality {modality} to read it anyway"
    )


def test_radiograph_modalities():
    assert RADIOGRAPH_MODALITIES == ("CR", "DX", "DR", "RG")


@pytest.mark.parametrize(
    "modality", ["CT", "MR", "US", "NM", "PT", "RTDOSE", "SEG", "OT", "MG", "XA", "PX"]
)
def test_non_radiograph_refused_before_decoding(tmp_path, monkeypatch, modality):
    ds = make_ds(Modality=modality)
    assert read(ds, tmp_path, modalities=None).modality == modality

    def no_decoding(*_args):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(dicom_module, "_decode_first_frame", no_decoding)
    assert error(ds, tmp_path) == refusal(modality)
    with pytest.raises(ImageReadError, match=f"DICOM Modality {modality} is not a radiograph"):
        read_xray_bytes(to_bytes(ds), name="upload")


@pytest.mark.parametrize("tag", ["CR", "DX", "DR", "RG", "dx", " CR "])
def test_radiographs_read(tmp_path, tag):
    assert read(make_ds(Modality=tag), tmp_path).modality == tag.strip().upper()


def test_allowed_modalities(tmp_path):
    ds = make_ds(sop=CT, Modality="CT")
    base = read(make_ds(), tmp_path).pixels
    for allowed in (("ct",), "CT", (*RADIOGRAPH_MODALITIES, "CT"), None):
        xray = read(ds, tmp_path, modalities=allowed)
        assert xray.modality == "CT" and np.array_equal(xray.pixels, base)
    assert error(ds, tmp_path, modalities=["dx", "OT", "DX"]) == refusal("CT", ("DX", "OT"))
    assert "(accepted: none)" in error(ds, tmp_path, modalities=())


def test_missing_modality(tmp_path):
    xray = read(make_ds(), tmp_path)  # DX SOP Class, no Modality tag: read
    assert xray.modality is None
    assert read(make_ds(sop="1.2.840.10008.5.1.4.1.1.7"), tmp_path).modality is None  # SC
    assert read(make_ds(Modality=""), tmp_path).modality is None
    # Without the tag, a CT Image Storage object is still a CT.
    assert error(make_ds(sop=CT), tmp_path) == (
        "DICOM without a Modality tag, SOP Class CT Image (CT), is not a radiograph "
        f"(accepted: {', '.join(RADIOGRAPH_MODALITIES)}); pass --allow-modality CT to read it "
        "anyway"
    )
    assert read(make_ds(sop=CT), tmp_path, modalities=("CT",)).modality is None
    assert SOP_CLASS_MODALITY[DX] == "DX" and SOP_CLASS_MODALITY[CT] == "CT"


def test_png_has_no_modality_and_is_never_gated():
    ok, png = cv2.imencode(".png", np.zeros((32, 32), np.uint8))
    assert ok
    xray = read_xray_bytes(png.tobytes(), modalities=())
    assert (xray.format, xray.modality) == ("PNG", None)


def test_unexpected_pydicom_error_is_an_image_read_error(tmp_path, monkeypatch):
    def overflow(*_args):
        raise OverflowError("boom")

    monkeypatch.setattr(dicom_module, "apply_modality_lut", overflow)
    assert error(make_ds(), tmp_path) == "malformed DICOM data set (OverflowError: boom)"


# --- PresentationLUTShape ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME2", "inverse ", True),
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),  # the same inversion said twice: once
        ("MONOCHROME1", "IDENTITY", True),  # contradictory: the photometric interpretation wins
    ],
)
def test_presentation_lut_shape(tmp_path, photometric, shape, inverted):
    base = read(make_ds(), tmp_path).pixels
    attrs = {} if shape is None else {"PresentationLUTShape": shape}
    pixels = read(make_ds(photometric=photometric, **attrs), tmp_path).pixels
    assert np.array_equal(pixels, 255 - base if inverted else base)


# --- PixelPaddingValue ------------------------------------------------------------------------


def padded(value: int = 4095, arr: np.ndarray = RAMP) -> np.ndarray:
    """``arr`` inside an 8-pixel border of ``value``."""
    out = np.full((arr.shape[0] + 16, arr.shape[1] + 16), value, dtype=arr.dtype)
    out[8:-8, 8:-8] = arr
    return out


def test_padding_left_out_of_minmax_and_black(tmp_path):
    inside = read(make_ds(), tmp_path).pixels  # the ramp alone: 0..255
    assert inside.min() == 0 and inside.max() == 255
    # Without the attribute the bright border stretches the range: the ramp loses contrast.
    unmarked = read(make_ds(padded()), tmp_path).pixels
    assert unmarked[8:-8, 8:-8].max() < 200 and unmarked[0, 0] == 255
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        ds = make_ds(padded(), photometric=photometric, PixelPaddingValue=4095)
        pixels = read(ds, tmp_path).pixels
        want = inside if photometric == "MONOCHROME2" else 255 - inside
        assert np.array_equal(pixels[8:-8, 8:-8], want)
        border = np.ones(pixels.shape, bool)
        border[8:-8, 8:-8] = False
        assert np.all(pixels[border] == 0), photometric  # black, inverted or not


def test_padding_with_window_and_range_limit(tmp_path):
    window = {"WindowCenter": 2000, "WindowWidth": 1000}
    inside = read(make_ds(**window), tmp_path).pixels
    arr = padded(4000)
    arr[:4] = 4095  # a range of padding values: 4000..4095
    ds = make_ds(arr, PixelPaddingValue=4095, PixelPaddingRangeLimit=4000, **window)
    pixels = read(ds, tmp_path).pixels
    assert np.array_equal(pixels[8:-8, 8:-8], inside)
    assert pixels[:8].max() == 0 and pixels[:, :8].max() == 0
    # Only the value (no range limit): 4000 stays a pixel, the window maps it to 255.
    pixels = read(make_ds(arr, PixelPaddingValue=4095, **window), tmp_path).pixels
    assert pixels[:4].max() == 0 and np.all(pixels[4:8] == 255)


def test_padding_signed_and_written_unsigned(tmp_path):
    signed = (RAMP.astype(np.int16) - 2000).astype(np.int16)
    inside = read(make_ds(signed), tmp_path).pixels
    ds = make_ds(padded(-2048, signed), PixelPaddingValue=-2048)
    assert ds.PixelRepresentation == 1
    pixels = read(ds, tmp_path).pixels
    assert np.array_equal(pixels[8:-8, 8:-8], inside) and pixels[0, 0] == 0
    del ds.PixelPaddingValue
    ds.add_new(0x00280120, "US", 65536 - 2048)  # the same 16 bits, written unsigned
    assert np.array_equal(read(ds, tmp_path).pixels, pixels)


def test_padding_matching_nothing_or_everything(tmp_path):
    base = read(make_ds(), tmp_path).pixels
    assert np.array_equal(read(make_ds(PixelPaddingValue=0), tmp_path).pixels, base)
    flat = np.full((32, 32), 7, dtype=np.uint16)
    assert read(make_ds(flat, PixelPaddingValue=7), tmp_path).pixels.max() == 0


def test_minmax_excludes():
    values = np.array([0.0, 10.0, 20.0, 1000.0, -50.0])
    exclude = np.array([False, False, False, True, True])
    assert minmax_to_uint8(values, exclude).tolist() == [0, 128, 255, 0, 0]
    assert minmax_to_uint8(values, np.ones(5, bool)).tolist() == [0] * 5
    assert minmax_to_uint8(values[:3]).tolist() == [0, 128, 255]
