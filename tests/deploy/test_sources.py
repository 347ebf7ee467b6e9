"""`resolve_sources` lists folders by content: extensionless DICOMs (a PACS export) are found,
README/CSV/hidden files and the DICOMDIR are not, in a stable order, reading 132 bytes a file."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit.deploy.sources import resolve_sources
from cxrkit.errors import UserError
from cxrkit.io import SNIFF_BYTES, read_xray

SHARED_DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "formats" / "dicom"
UID_NAME = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"


def pydicom_test_files() -> Path | None:
    """pydicom's own test files (``pydicom/data/test_files``), None when not installed."""
    try:
        import pydicom.data
    except ImportError:
        return None
    root = Path(pydicom.data.__file__).parent / "test_files"
    return root if root.is_dir() else None


@pytest.fixture(scope="module")
def real_dicom() -> Path:
    """A real chest DICOM: the SIIM sample, else pydicom's CR test file."""
    siim = SHARED_DICOM / "siim_pneumothorax_sample.dcm"
    if siim.is_file():
        return siim
    root = pydicom_test_files()
    cr = None if root is None else root / "dicomdirtests" / "77654033" / "CR1" / "6154"
    if cr is None or not cr.is_file():
        pytest.skip("no real DICOM file (shared SIIM sample or pydicom test files)")
    return cr


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 251)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _pacs_folder(root: Path, dicom: Path) -> list[Path]:
    """A folder as a PACS export and a user leave it; returns the images it holds, sorted."""
    images = [
        root / UID_NAME,
        root / "series2" / "IM000001",
        root / "series2" / "IM000002.DCM",
        _png(root / "png" / "frontal.png"),
        _png(root / "png" / "no_suffix_png"),
    ]
    for p in images:
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(dicom, p)
    (root / "README.txt").write_text("Exported by PACS. Patient list in notes.csv\n")
    (root / "notes.csv").write_text("path,finding\nIM000001,Effusion\n")
    (root / "series2" / "meta.json").write_text('{"study": 1}')
    (root / "series2" / "empty").write_bytes(b"")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    for hidden in (root / ".DS_Store", root / "._frontal.dcm", root / ".cache" / "IM000009"):
        hidden.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dicom, hidden)  # DICOM content, but hidden: skipped
    shutil.copy(dicom, root / "series2" / "DICOMDIR")  # the media index, skipped by name
    return sorted(images)


def test_folder_listed_by_content(tmp_path: Path, real_dicom: Path) -> None:
    expected = _pacs_folder(tmp_path / "export", real_dicom)
    (tmp_path / "export" / "scan.tiff").write_bytes(b"II*\x00" + bytes(64))  # a TIFF: unread
    with pytest.warns(UserWarning) as caught:
        listed = resolve_sources(tmp_path / "export")
    assert listed == expected
    (warning,) = [str(w.message) for w in caught]
    # counted and named (the first five, sorted), hidden files and DICOMDIR not among them
    assert warning.startswith(f"6 file(s) under {tmp_path / 'export'} are not PNG, JPEG or DICOM")
    assert "README.txt, blob.bin, notes.csv, scan.tiff, series2/empty and 1 more" in warning
    assert tmp_path / "export" / UID_NAME in listed
    # The extensionless copy reads exactly as the original.
    # min_side=1: without the shared SIIM sample the fallback is pydicom's 16 px CR file
    copy = read_xray(tmp_path / "export" / UID_NAME, min_side=1)
    original = read_xray(real_dicom, min_side=1)
    assert copy.format == "DICOM" and np.array_equal(copy.pixels, original.pixels)


def test_folder_order_stable(tmp_path: Path, real_dicom: Path) -> None:
    root = tmp_path / "export"
    names = ["b", "a.dcm", "C", "sub/z", "sub/a.png", "A", "1.2.10", "1.2.9"]
    for name in reversed(names):  # created in another order than listed
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_dicom, root / name)
    first = resolve_sources(root)
    assert first == sorted(root / n for n in names) == resolve_sources(str(root))
    assert [p.relative_to(root).as_posix() for p in first] == sorted(names)


class _CountingFile:
    """A binary file object that records the size asked for and got by each read."""

    def __init__(self, f, log: list[tuple[int, int]]) -> None:
        self._f, self._log = f, log

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._log.append((n, len(data)))
        return data

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def test_at_most_132_bytes_read_per_file(
    tmp_path: Path, real_dicom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "export"
    root.mkdir()
    with (root / "zeros").open("wb") as f:  # 8 MiB of zeros: not an image, must not be read
        f.truncate(8 << 20)
    shutil.copy(real_dicom, root / "IM0001")
    shutil.copy(real_dicom, root / "known.dcm")
    reads: dict[str, list[tuple[int, int]]] = {}
    real_open = Path.open

    def counting_open(self: Path, mode: str = "r", *args, **kwargs):
        return _CountingFile(
            real_open(self, mode, *args, **kwargs), reads.setdefault(self.name, [])
        )

    def no_read_bytes(self: Path) -> bytes:
        raise AssertionError(f"{self} read whole")

    monkeypatch.setattr(Path, "open", counting_open)
    monkeypatch.setattr(Path, "read_bytes", no_read_bytes)
    assert resolve_sources(root) == [root / "IM0001", root / "known.dcm"]
    assert SNIFF_BYTES == 132
    assert set(reads) == {"zeros", "IM0001"}  # a known suffix is not even opened
    for name, log in reads.items():
        assert all(0 <= asked <= SNIFF_BYTES for asked, _ in log), (name, log)
        assert sum(got for _, got in log) <= SNIFF_BYTES, (name, log)


def test_nothing_found_says_what_was_looked_for(tmp_path: Path, real_dicom: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "README.txt").write_text("no images here")
    (root / "labels.csv").write_text("path\n")
    shutil.copy(real_dicom, root / ".hidden")
    with pytest.raises(UserError, match=r"no images under .*docs: no file with an image suffix"):
        resolve_sources(root)
    with pytest.raises(UserError, match=r"found 2 other file\(s\): README.txt, labels.csv\)$"):
        resolve_sources(root)


def test_single_extensionless_file_is_itself(tmp_path: Path, real_dicom: Path) -> None:
    shutil.copy(real_dicom, tmp_path / UID_NAME)
    assert resolve_sources(tmp_path / UID_NAME) == [tmp_path / UID_NAME]


def test_hidden_only_below_the_folder(tmp_path: Path, real_dicom: Path) -> None:
    root = tmp_path / ".exports" / "study"  # the folder itself may sit in a hidden one
    root.mkdir(parents=True)
    shutil.copy(real_dicom, root / "IM0001")
    assert resolve_sources(root) == [root / "IM0001"]


def test_pydicom_test_files_tree() -> None:
    root = pydicom_test_files()
    if root is None:
        pytest.skip("pydicom's test files are not installed")
    from pydicom.misc import is_dicom

    listed = set(resolve_sources(root))
    files = [p for p in root.rglob("*") if p.is_file()]
    expected = {
        p
        for p in files
        if p.name != "DICOMDIR" and (p.suffix.lower() == ".dcm" or (not p.suffix and is_dicom(p)))
    }
    assert listed == expected
    extensionless = {p for p in listed if not p.suffix}
    assert root / "dicomdirtests" / "77654033" / "CR1" / "6154" in extensionless
    assert len(extensionless) >= 80  # the CR/CT/MR series and TINY_ALPHA's 50 images
    skipped = {p.relative_to(root).as_posix() for p in set(files) - listed}
    assert {"README.txt", "test1.json", "rtplan.dump", "zipMR.gz", "crayons.icc"} <= skipped
    assert {"dicomdirtests/DICOMDIR", "dicomdirtests/TINY_ALPHA/DICOMDIR"} <= skipped
    assert "dicomdirtests/TINY_ALPHA/README" in skipped
