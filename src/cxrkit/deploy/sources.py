"""What ``--source`` names: image paths from a file, a folder, a glob, a ``.txt`` or a ``.csv``.

Shared by ``infer``, ``cam`` and the localisation scores, so every command that takes images
lists them the same way, in the same stable order:

* an image file: itself;
* a folder: every file under it (recursive) whose suffix is one of :data:`IMAGE_SUFFIXES`;
* a glob pattern (``*``, ``?``, ``[``) that is not itself a path: the files it matches;
* a ``.txt`` file: one path per line; a ``.csv`` file: its first column named in
  :data:`PATH_COLUMNS`. Relative paths in both are relative to the list's folder.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from cxrkit.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
PATH_COLUMNS = ("path", "Path", "image", "filename", "file", "Image Index")


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
        files = sorted(
            p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files:
            raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
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


def _relative_to(p: Path, base: Path) -> Path:
    return p if p.is_absolute() else base / p
