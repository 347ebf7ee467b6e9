"""What ``--source`` names: image paths from a file, a folder, a glob, a ``.txt`` or a ``.csv``.

Shared by ``infer``, ``cam`` and the localisation scores, so every command that takes images
lists them the same way, in the same stable order:

* an image file: itself;
* a folder: every file under it (recursive) that is an image by its **content** or its name
  (:func:`is_image_file`): a file with one of :data:`IMAGE_SUFFIXES` is taken as is; any other
  is taken when its first :data:`~cxrkit.io.images.SNIFF_BYTES` bytes say PNG, JPEG or DICOM
  (:func:`~cxrkit.io.images.sniff_format`), so a PACS export of DICOM files named by UID with
  no extension (``1.2.840.113619.2.55.3.604688119.969.1268071029.320``) is found and a
  ``README.txt`` or ``notes.csv`` beside the images is not. Hidden files and folders (names
  starting with ``.`` below the folder, e.g. macOS ``._image.dcm``) and a ``DICOMDIR`` (the
  media index, a DICOM without pixels) are skipped, as are files that cannot be opened and
  have no image suffix. Every other file left out (a ``.tiff``, a ``.bmp``, a ``notes.csv``)
  is counted and named in a warning, so a folder of TIFFs never reads as "3 images" quietly;
* a glob pattern (``*``, ``?``, ``[``) that is not itself a path: the files it matches;
* a ``.txt`` file: one path per line; a ``.csv`` file: its first column named in
  :data:`PATH_COLUMNS`. Relative paths in both are relative to the list's folder.
"""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import pandas as pd

from cxrkit.errors import UserError
from cxrkit.io.images import SNIFF_BYTES, sniff_format

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
PATH_COLUMNS = ("path", "Path", "image", "filename", "file", "Image Index")
SKIPPED_NAMES = ("DICOMDIR",)  # compared upper case: the DICOM media index, never an image
NAMED_SKIPS = 5  # files named in the warning about files left out of a folder


def resolve_sources(source: str | Path) -> list[Path]:
    """Expand ``source`` into image paths (see module docstring), in a stable order."""
    text = str(source)
    path = Path(source)
    if any(ch in text for ch in "*?[") and not path.exists():
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"--source pattern {text!r} matches no file")
        return files
    if path.is_dir():
        files, left_out = list_folder(path)
        names = ", ".join(str(p.relative_to(path)) for p in left_out[:NAMED_SKIPS])
        names += f" and {len(left_out) - NAMED_SKIPS} more" if len(left_out) > NAMED_SKIPS else ""
        if not files:
            raise UserError(
                f"no images under {path}: no file with an image suffix "
                f"({', '.join(IMAGE_SUFFIXES)}) and none whose content is PNG, JPEG or DICOM "
                f"(hidden files and {', '.join(SKIPPED_NAMES)} are skipped"
                + (f"; found {len(left_out)} other file(s): {names})" if left_out else ")")
            )
        if left_out:
            warnings.warn(
                f"{len(left_out)} file(s) under {path} are not PNG, JPEG or DICOM and were "
                f"skipped: {names}",
                UserWarning,
                stacklevel=2,
            )
        return files
    if not path.is_file():
        raise UserError(f"--source {path} does not exist")
    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        return [_relative_to(Path(ln), path.parent) for ln in lines]
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str)
        column = next((c for c in PATH_COLUMNS if c in table.columns), None)
        if column is None:
            raise UserError(f"{path} has no path column; expected one of {', '.join(PATH_COLUMNS)}")
        return [_relative_to(Path(p), path.parent) for p in table[column].dropna()]
    return [path]


def list_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """The images under ``folder`` (recursive, sorted) and the other files left out, hidden
    files and :data:`SKIPPED_NAMES` excepted (those are skipped without a word)."""
    images, left_out = [], []
    for p in sorted(folder.rglob("*")):
        if is_image_file(p, folder):
            images.append(p)
        elif p.is_file() and not _hidden_or_index(p, folder):
            left_out.append(p)
    return images, left_out


def _hidden_or_index(p: Path, root: Path | None) -> bool:
    parts = p.relative_to(root).parts if root is not None else (p.name,)
    return any(part.startswith(".") for part in parts) or p.name.upper() in SKIPPED_NAMES


def is_image_file(p: Path, root: Path | None = None) -> bool:
    """Whether a folder listing takes ``p`` (see module doc); ``root``: the folder listed,
    so that only names below it count as hidden. Reads at most ``SNIFF_BYTES`` bytes of ``p``,
    and only when its suffix is not an image suffix."""
    if _hidden_or_index(p, root) or not p.is_file():
        return False
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with p.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    return sniff_format(head) is not None


def _relative_to(p: Path, base: Path) -> Path:
    return p if p.is_absolute() else base / p
