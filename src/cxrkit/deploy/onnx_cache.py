"""An ONNX copy of a checkpoint file, exported once, so ``infer --checkpoint best.ckpt`` runs
at a bundle's speed on CPUs where ``--backend auto`` would pick onnxruntime for a bundle (the
CPU at fp32; :func:`cxrkit.deploy.backends.copy_applies`).

Where the copy goes, keyed by the first 16 hex digits of the checkpoint file's sha256::

    RUN/checkpoints/.best.ckpt.onnx/<sha256[:16]>.onnx      beside the checkpoint, else
    $CXRKIT_CACHE/onnx/<sha256[:16]>.onnx                   when that folder is not writable
                                                            (default ~/.cache/cxrkit)

The first run exports the network with :func:`cxrkit.deploy.onnx_export.export_onnx` (the exporter
and the onnxruntime-vs-PyTorch check of ``cxrkit export``: logits within 1e-4 on a random
batch, the input gate's ``features`` as a second output), into a temporary folder, then copies
it into place through :func:`cxrkit.files.atomic_write`: a reader sees no copy or a whole,
verified one. It prints one line; later runs find the copy and print nothing. A changed
checkpoint has another sha256: its copy is exported anew and the copies of earlier versions
beside it are removed (in the shared user cache, copies are keyed by content only and kept).
When the export fails, or neither folder can be written, one warning names why and the
PyTorch backend runs instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from cxrkit.deploy.backends import OnnxBackend
from cxrkit.files import atomic_write
from cxrkit.models.checkpoint import LoadedModel

KEY_LENGTH = 16  #: hex digits of the checkpoint's sha256 in a copy's name
COPY_NAME = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}\.onnx")


def copy_folder(checkpoint: Path) -> Path:
    """``RUN/checkpoints/best.ckpt`` -> ``RUN/checkpoints/.best.ckpt.onnx``."""
    return checkpoint.with_name(f".{checkpoint.name}.onnx")


def user_cache() -> Path:
    """``$CXRKIT_CACHE/onnx``, or ``~/.cache/cxrkit/onnx`` without that variable."""
    root = os.environ.get("CXRKIT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "cxrkit") / "onnx"


def copy_name(sha256: str) -> str:
    """``<sha256[:16]>.onnx``: the copy of the checkpoint file whose content has ``sha256``."""
    return f"{sha256[:KEY_LENGTH]}.onnx"


def remove_stale(folder: Path, keep: str) -> list[Path]:
    """Delete the copies in ``folder`` (a checkpoint's own copy folder) other than ``keep``:
    those of earlier versions of the checkpoint. Returns them."""
    stale = [p for p in folder.iterdir() if COPY_NAME.fullmatch(p.name) and p.name != keep]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def onnx_copy_backend(
    loaded: LoadedModel, *, notify: Callable[[str], None] = print
) -> OnnxBackend | None:
    """An onnxruntime backend over the ONNX copy of ``loaded.source`` (a checkpoint file),
    exported first when there is none (``notify`` gets the one line saying so). None, after
    one warning naming why, when it cannot be exported or written: run PyTorch then."""
    checkpoint = loaded.source
    assert checkpoint is not None and checkpoint.is_file()
    name = copy_name(str(loaded.source_sha256))
    beside = copy_folder(checkpoint)
    for folder in (beside, user_cache()):
        found = _open(folder / name)
        if found is not None:
            if folder == beside:
                remove_stale(beside, keep=name)
            return found
    target = _writable(beside) or _writable(user_cache())
    if target is None:
        _warn(checkpoint, f"neither {beside} nor {user_cache()} can be written")
        return None
    path = target / name
    notify(
        f"exporting an ONNX copy of {checkpoint.name} once for faster CPU inference: {path}; "
        "reused next time"
    )
    try:
        _export(loaded, path)
    except Exception as err:  # noqa: BLE001 - any failure: say why once, run PyTorch
        _warn(checkpoint, f"{type(err).__name__}: {str(err).split('; ')[0][:300]}")
        return None
    if target == beside:
        remove_stale(beside, keep=name)
    return OnnxBackend(path)


def _export(loaded: LoadedModel, path: Path) -> None:
    """Export and verify ``loaded.model`` into a temporary folder, then copy the file to
    ``path`` atomically. The exporter's own printing is kept off stdout."""
    from cxrkit.deploy.onnx_export import export_onnx  # the exporter only when exporting

    size = int(loaded.card["input_size"])
    with tempfile.TemporaryDirectory(prefix="cxrkit-onnx-") as tmp:
        exported = Path(tmp) / path.name
        with contextlib.redirect_stdout(io.StringIO()):
            export_onnx(loaded.model.eval(), exported, size)
        with open(exported, "rb") as src:
            atomic_write(path, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))


def _open(path: Path) -> OnnxBackend | None:
    """A backend over an existing copy; None when there is none, or when it does not load (a
    damaged file, removed so that it is exported again)."""
    if not path.is_file():
        return None
    try:
        return OnnxBackend(path)
    except Exception:  # noqa: BLE001 - onnxruntime's errors for an unreadable model vary
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def _writable(folder: Path) -> Path | None:
    """``folder`` (created) when a file can be written in it, else None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return None
    return folder


def _warn(checkpoint: Path, why: str) -> None:
    warnings.warn(
        f"no ONNX copy of {checkpoint.name} for faster CPU inference ({why}); running PyTorch",
        UserWarning,
        stacklevel=3,
    )
