"""Writing files so that nothing is half-written, and JSON that every parser reads.

* :func:`atomic_write` — the one way cxrkit replaces a file: write a temporary file in the same
  folder, flush it to disk, rename it over the target. A reader (or a process killed
  mid-write) sees either the old file or the complete new one; a kill leaves at most a
  ``.<name>.*.tmp`` beside it, which :func:`remove_stale_temps` clears.
* :func:`json_float` / :func:`strict_json` — strict JSON: NaN and infinities become ``null``
  (Python's ``json`` would write ``NaN``, which JSON parsers in browsers and other languages
  reject). :func:`write_json` writes strict JSON atomically.

Pure standard library: every stage, and the torch-free evaluation, can use it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files: ``.<name>.<random>.tmp``


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, flush it to disk, then rename
    it over ``path``: ``path`` is always either the old file or the complete new one. A process
    killed mid-write leaves only a ``.<name>.*.tmp`` beside it (:func:`remove_stale_temps`)."""
    path = Path(path)
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
