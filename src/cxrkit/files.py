"""Writing files so that nothing is half-written, and JSON that every parser reads.

* :func:`atomic_write` — the one way cxrkit replaces a file: write a temporary file in the same
  folder, flush it to disk, rename it over the target. A reader (or a process killed
  mid-write) sees either the old file or the complete new one; a kill leaves at most a
  ``.<name>.*.tmp`` beside it, which :func:`remove_stale_temps` clears.
* :func:`claim_folder` — the one way a command takes an output folder: it writes a
  :data:`MARKER` file there, and ``--overwrite`` deletes only a folder holding the marker of
  the same kind of output (a run, a bundle, ...), never a folder cxrkit did not make.
* :func:`json_float` / :func:`strict_json` — strict JSON: NaN and infinities become ``null``
  (Python's ``json`` would write ``NaN``, which JSON parsers in browsers and other languages
  reject). :func:`write_json` writes strict JSON atomically.

The standard library and :mod:`cxrkit.errors` only: every stage, and the torch-free
evaluation, can use it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from cxrkit.errors import UserError

MARKER = ".cxrkit-output"  # {"made_by": "cxrkit", "kind": ...}
TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files: ``.<name>.<random>.tmp``


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, flush it to disk, then rename
    it over ``path``: ``path`` is always either the old file or the complete new one. A process
    killed mid-write leaves only a ``.<name>.*.tmp`` beside it (:func:`remove_stale_temps`).

    A ``path`` that exists but is not a regular file (``/dev/null``, a pipe, a folder) is
    refused: the rename would replace the device itself."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(
            f"{path} is not a regular file (a device, pipe or folder); give a file path to write"
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have made
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) into ``path`` through :func:`atomic_write`."""
    data = text.encode()
    atomic_write(path, lambda fh: fh.write(data))


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls left in ``folder``;
    returns them."""
    stale = sorted(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def json_float(x: Any) -> float | None:
    """One number for strict JSON: a float, or None for NaN, infinities and non-numbers."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts/lists/tuples, as None
    (dict keys become strings; tuples lists). Other values are returned as they are."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented strict JSON (see :func:`strict_json`) with a final newline,
    atomically."""
    atomic_write_text(path, json.dumps(strict_json(value), indent=2) + "\n")


# Folders cxrkit wrote before it wrote markers: kind -> (file, text it always holds).
LEGACY = {
    "prepared dataset": ("manifest.json", '"cxrkit-manifest/'),
    "bundle": ("model_card.json", '"cxrkit-bundle/'),
    "run": ("run.json", '"cxrkit": "'),
    "demo": ("prepared/manifest.json", '"cxrkit-manifest/'),
    "evaluation": ("metrics.json", '"cxrkit": "'),
    "comparison": ("compare.json", '"per_class"'),
    "localisation": ("localization.json", '"methods"'),
}


def folder_kind(folder: Path) -> str | None:
    """The kind of cxrkit output ``folder`` holds: from its :data:`MARKER`, or for a folder
    written before markers existed from the file only that kind holds (:data:`LEGACY`)."""
    try:
        return str(json.loads((folder / MARKER).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for kind, (name, text) in LEGACY.items():
        path = folder / name
        if path.is_file() and text in path.read_text(errors="replace")[:65536]:
            return kind
    return None


def claim_folder(
    folder: str | Path, kind: str, *, overwrite: bool = False, resume: bool = False, hint: str = ""
) -> Path:
    """Make ``folder`` the output folder of a ``kind`` of cxrkit output and mark it so.

    A missing or empty folder is created and marked. A non-empty one is refused (UserError
    naming it) unless it holds this ``kind``'s marker and either ``resume`` (its contents are
    kept, e.g. an interrupted cache) or ``overwrite`` (it is deleted and made anew). A
    non-empty folder without the marker, or with another kind's, is never deleted. ``hint``
    ends the message for a folder of this kind that needs ``--overwrite``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()):
        found = folder_kind(folder)
        if found != kind:
            what = (
                f"a cxrkit {found} folder" if found else f"files cxrkit did not write (no {MARKER})"
            )
            raise UserError(
                f"{folder} is not empty and holds {what}; cxrkit replaces only a cxrkit {kind} "
                "folder: choose another --out, or empty or remove it yourself"
            )
        if resume:
            return folder
        if not overwrite:
            raise UserError(
                f"{folder} already holds a cxrkit {kind}; choose another --out, pass "
                f"--overwrite{hint}"
            )
        shutil.rmtree(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError) as err:
        raise UserError(f"cannot create --out {folder}: {err.strerror or err}") from None
    # No timestamp: the same command writes the same bytes (synth's same seed, same bytes).
    write_json(folder / MARKER, {"made_by": "cxrkit", "kind": kind})
    return folder
