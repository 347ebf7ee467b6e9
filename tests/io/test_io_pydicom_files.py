"""Every file of pydicom's own test suite (``pydicom/data/test_files``: every transfer syntax,
colour, multi-frame, big endian, deflated, no pixels, truncated, not DICOM at all) gives exactly
one outcome through :func:`cxrkit.io.read_xray`: an XRay or an ImageReadError naming the file
and what was found, with any modality accepted and with the default radiograph gate."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from cxrkit.io import RADIOGRAPH_MODALITIES, ImageReadError, XRay, read_xray

pydicom = pytest.importorskip("pydicom")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on malformed files


def _test_files() -> Path | None:
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files"
    return root if root.is_dir() else None


ROOT = _test_files()
FILES = sorted(p for p in ROOT.rglob("*") if p.is_file()) if ROOT else []
NAMES = [p.relative_to(ROOT).as_posix() for p in FILES]
SKIP_NO_FILES = pytest.mark.skipif(not FILES, reason="pydicom's test files are not installed")

# Not PNG, JPEG or DICOM by content (no_meta.dcm is garbage to pydicom too: a stray leading byte).
NOT_AN_IMAGE = {
    "README.txt",
    "crayons.icc",
    "no_meta.dcm",
    "rtplan.dump",
    "rtstruct.dump",
    "test1.json",
    "test_PN.json",
    "zipMR.gz",
    "dicomdirtests/README.txt",
    "dicomdirtests/TINY_ALPHA/README",
}
# DICOM objects without pixel data: what the error must say was found.
NO_PIXELS = {
    "ExplVR_BigEndNoMeta.dcm": "a DICOM RT Ion Plan object (Modality RTPLAN)",
    "ExplVR_LitEndNoMeta.dcm": "a DICOM RT Ion Plan object (Modality RTPLAN)",
    "UN_sequence.dcm": "a DICOM CT Image object",
    "empty_charset_LEI.dcm": "a DICOM object of unknown SOP Class (not an image, or truncated)",
    "no_meta_group_length.dcm": "a DICOM RT Image object",
    "priv_SQ.dcm": "a DICOM MR Image object",
    "reportsi.dcm": "a DICOM Basic Text SR object (Modality SR)",
    "reportsi_with_empty_number_tags.dcm": "a DICOM Basic Text SR object (Modality SR)",
    "rtplan.dcm": "a DICOM RT Plan object (Modality RTPLAN)",
    "rtplan_truncated.dcm": "a DICOM RT Plan object (Modality RTPLAN)",
    "rtstruct.dcm": "a DICOM RT Structure Set object (Modality RTSTRUCT)",
    "test-SR.dcm": "a DICOM Comprehensive SR object (Modality SR)",
    "waveform_ecg.dcm": "a DICOM 12-lead ECG Waveform object (Modality ECG)",
}
# Pixel data that cannot be decoded (pydicom's own pixel_array fails on them too).
UNDECODABLE = {
    "JPEG-lossy.dcm": "corrupt or truncated DICOM pixel data (Unable to decode",
    "JPEG2000-embedded-sequence-delimiter.dcm": "corrupt or truncated DICOM pixel data (",
    "MR_truncated.dcm": "corrupt or truncated DICOM pixel data (The number of bytes",
    "badVR.dcm": "invalid DICOM NumberOfFrames '1A' (not an integer)",
    "meta_missing_tsyntax.dcm": "DICOM file has pixel data but no Rows/Columns",
    "nested_priv_SQ.dcm": "DICOM file has pixel data but no Rows/Columns",
}


def expected_error(name: str) -> str | None:
    """The reason (a part of it) any-modality reading must give, None for an XRay."""
    if name in NOT_AN_IMAGE:
        return "not an image: unrecognised content"
    if name in NO_PIXELS:
        return f"no pixel data: {NO_PIXELS[name]}"
    if Path(name).name.startswith("DICOMDIR"):  # the media index and its variants
        return "no pixel data: a DICOM Media Storage Directory object"
    if name.startswith("dicomdirtests/TINY_ALPHA/PT"):  # CT images stripped of their pixels
        return "no pixel data: a DICOM CT Image object (Modality CT)"
    return UNDECODABLE.get(name)


def outcome(path: Path, **kwargs) -> XRay | ImageReadError:
    """read_xray's result or its ImageReadError; any other exception fails the test. The
    files' own sizes are read (some are 10 px wide): the minimum side is tested on its own."""
    try:
        xray = read_xray(path, **{"min_side": 1, **kwargs})
    except ImageReadError as err:
        assert err.path == str(path) and repr(str(path)) in str(err)  # names the file
        return err
    assert isinstance(xray, XRay) and xray.source == str(path)
    assert xray.pixels.ndim == 2 and xray.pixels.dtype == np.uint8 and xray.pixels.size > 0
    return xray


def pydicom_facts(path: Path) -> tuple[str | None, bool]:
    """(Modality upper case, whether pydicom itself decodes the pixels): the oracle."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:
            return None, False
        modality = str(ds.get("Modality") or "").strip().upper() or None
        try:
            ds.pixel_array  # noqa: B018
        except Exception:
            return modality, False
    return modality, True


@SKIP_NO_FILES
@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_any_modality_one_outcome(path: Path) -> None:
    name = path.relative_to(ROOT).as_posix()
    result = outcome(path, modalities=None)
    modality, pydicom_decodes = pydicom_facts(path)
    # An XRay exactly when pydicom itself can decode the pixels.
    assert isinstance(result, XRay) == pydicom_decodes, result
    want = expected_error(name)
    if want is None:
        assert isinstance(result, XRay), f"{name}: {result}"
        assert result.format == "DICOM" and result.modality == modality
    else:
        assert isinstance(result, ImageReadError) and want in result.reason, result


@SKIP_NO_FILES
@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_default_gate_one_outcome(path: Path) -> None:
    name = path.relative_to(ROOT).as_posix()
    result = outcome(path)
    ungated = outcome(path, modalities=None)
    modality, _ = pydicom_facts(path)
    has_pixels = not (name in NOT_AN_IMAGE or "no pixel data" in (expected_error(name) or ""))
    if has_pixels and modality is not None and modality not in RADIOGRAPH_MODALITIES:
        # Refused before decoding: even undecodable pixels (JPEG-lossy.dcm, NM) give this.
        assert isinstance(result, ImageReadError), f"{name} ({modality}) read"
        assert result.reason == (
            f"DICOM Modality {modality} is not a radiograph "
            f"(accepted: {', '.join(RADIOGRAPH_MODALITIES)}); "
            f"pass --allow-modality {modality} to read it anyway"
        )
    elif isinstance(ungated, XRay):
        assert isinstance(result, XRay) and np.array_equal(result.pixels, ungated.pixels)
        assert result.modality in (*RADIOGRAPH_MODALITIES, None)
    else:
        assert isinstance(result, ImageReadError) and result.reason == ungated.reason


@SKIP_NO_FILES
def test_counts_and_refused_modalities() -> None:
    read = refused = errors = 0
    refused_modalities: set[str] = set()
    for path in FILES:
        result = outcome(path)
        if isinstance(result, XRay):
            read += 1
        elif "is not a radiograph" in result.reason:
            refused += 1
            refused_modalities.add(result.reason.split()[2])
        else:
            errors += 1
    # pydicom 3.0: 176 files; gated 11 read (3 CR, 8 SC without Modality), 82 refused, 83
    # other errors; any modality: 89 read, 87 errors (71 without pixels, 10 not DICOM, 6 broken).
    assert {"CT", "MR", "US", "NM", "RTDOSE", "SEG", "OT"} <= refused_modalities
    assert read >= 10 and refused >= 70 and errors >= 80
    ungated = [outcome(p, modalities=None) for p in FILES]
    assert sum(isinstance(r, XRay) for r in ungated) >= 80
    for series in ("CR1/6154", "CR2/6247", "CR3/6278"):  # extensionless CR files: radiographs
        path = ROOT / "dicomdirtests" / "77654033" / series
        if path.is_file():
            assert outcome(path).modality == "CR"


@SKIP_NO_FILES
@pytest.mark.parametrize(
    "group",
    [
        # the same MR image in every transfer syntax: explicit/implicit VR, big endian, RLE,
        # JPEG 2000 lossless, JPEG-LS lossless, and with padded pixel data
        ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm"]
        + ["MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
        + ["MR_small_padded.dcm"],
        # 32-bit RT dose: 15 frames (the first read) vs 1, little/big endian, RLE
        ["rtdose.dcm", "rtdose_1frame.dcm", "rtdose_expb.dcm", "rtdose_expb_1frame.dcm"]
        + ["rtdose_rle.dcm", "rtdose_rle_1frame.dcm"],
        ["liver_1frame.dcm", "liver_expb_1frame.dcm"],  # 1-bit SEG, little/big endian
        ["SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd_jpeg.dcm"],
        # RGB: RLE 8/16/32-bit, 2 frames, JPEG lossless (gdcm)
        ["SC_rgb_rle.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit.dcm"]
        + ["SC_rgb_rle_32bit.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_jpeg_gdcm.dcm"],
    ],
    ids=["mr-transfer-syntaxes", "rtdose-frames-endian-rle", "seg-endian", "rgb-odd", "rgb-rle"],
)
def test_encodings_of_one_image_read_the_same(group: list[str]) -> None:
    paths = [ROOT / name for name in group if (ROOT / name).is_file()]
    if len(paths) < 2:
        pytest.skip(f"{group[0]} and its variants not among pydicom's test files")
    first = read_xray(paths[0], modalities=None, min_side=1).pixels
    for path in paths[1:]:
        pixels = read_xray(path, modalities=None, min_side=1).pixels
        assert pixels.shape == first.shape
        assert np.abs(pixels.astype(int) - first).max() <= 1, path.name
