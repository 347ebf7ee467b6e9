"""The image cache: every image decoded once, letterboxed to ``size``, stored as uint8.

Layout in a prepared folder ``PREP/cache/``:

- ``images_<size>.u8``: a raw memory-mapped array of shape ``(n, size, size)``, uint8;
- ``images_<size>.state``: one byte per slot (0 = to do, 1 = written, 2 = failed), so an
  interrupted build resumes where it stopped instead of starting over;
- ``images_<size>.json``: what is being cached (hash of the path list, size, CLAHE), so a
  build only resumes work that was started with the same inputs.

Training and evaluation read slices of the memmap; they never decode a PNG/DICOM per epoch.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxrkit.data.preprocess import Clahe, prepare_image
from cxrkit.errors import UserError
from cxrkit.files import write_json
from cxrkit.io.images import read_xray
from cxrkit.io.xray import RADIOGRAPH_MODALITIES, ImageReadError

TODO, DONE, FAILED = 0, 1, 2
_CHUNK = 64


@dataclass
class CacheBuild:
    """What a build did: the cache file, its size, and the images that failed with reasons."""

    file: Path
    size: int
    n: int
    failures: dict[int, str]
    resumed: int  # slots already written by an earlier, interrupted build


def cache_paths(cache_dir: Path, size: int) -> tuple[Path, Path]:
    """The data file and the state file of a cache of ``size`` pixels in ``cache_dir``."""
    return cache_dir / f"images_{size}.u8", cache_dir / f"images_{size}.state"


def open_cache(file: str | Path, n: int, size: int) -> np.memmap:
    """Open a built cache read-only as a ``(n, size, size)`` uint8 memmap."""
    file = Path(file)
    expected = n * size * size
    if not file.is_file() or file.stat().st_size != expected:
        found = file.stat().st_size if file.is_file() else "no file"
        raise UserError(
            f"image cache {file} is missing or incomplete ({found} bytes, expected {expected}); "
            "run `cxrkit prepare` again"
        )
    return np.memmap(file, dtype=np.uint8, mode="r", shape=(n, size, size))


_Task = tuple[str, str, int, int, "Clahe | None", "tuple[str, ...] | None", list[tuple[int, str]]]


def _work(args: _Task) -> list[tuple[int, str | None]]:
    """Decode a chunk of images into their slots; return (slot, error or None) for each."""
    data_file, state_file, n, size, clahe, modalities, items = args
    data = np.memmap(data_file, dtype=np.uint8, mode="r+", shape=(n, size, size))
    state = np.memmap(state_file, dtype=np.uint8, mode="r+", shape=(n,))
    results: list[tuple[int, str | None]] = []
    for slot, path in items:
        try:
            pixels = read_xray(path, modalities=modalities).pixels
            data[slot] = prepare_image(pixels, size, clahe)
            state[slot] = DONE
            results.append((slot, None))
        except ImageReadError as err:
            state[slot] = FAILED
            results.append((slot, err.reason))
    data.flush()
    state.flush()
    return results


def build_cache(
    paths: Sequence[str | Path],
    cache_dir: str | Path,
    *,
    size: int = 256,
    workers: int = 1,
    progress: bool = True,
    clahe: Clahe | None = None,
    modalities: Collection[str] | None = RADIOGRAPH_MODALITIES,
) -> CacheBuild:
    """Decode ``paths`` into the cache (slot ``i`` holds ``paths[i]``), resuming if possible.
    A DICOM of a modality outside ``modalities`` (None: any) fails with the reason.

    A build resumes only when the same paths, size and CLAHE settings were being cached
    (recorded in ``images_<size>.json``). A file that cannot be read never stops the build: its
    slot stays zero and the reason is returned in :attr:`CacheBuild.failures` (and retried by
    the next build).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_file, state_file = cache_paths(cache_dir, size)
    settings_file = data_file.with_suffix(".json")
    n = len(paths)
    settings = {
        "paths_sha256": hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest(),
        "size": size,
        "clahe": clahe.to_dict() if clahe else None,
    }
    resumable = (
        data_file.is_file()
        and state_file.is_file()
        and settings_file.is_file()
        and json.loads(settings_file.read_text()) == settings
        and data_file.stat().st_size == n * size * size
        and state_file.stat().st_size == n
    )
    if not resumable:
        np.memmap(data_file, dtype=np.uint8, mode="w+", shape=(max(n, 1), size, size)).flush()
        np.memmap(state_file, dtype=np.uint8, mode="w+", shape=(max(n, 1),)).flush()
        write_json(settings_file, settings)
    state = np.fromfile(state_file, dtype=np.uint8)
    todo = [i for i in range(n) if state[i] != DONE]
    resumed = n - len(todo)
    chunks = [
        (
            str(data_file),
            str(state_file),
            n,
            size,
            clahe,
            None if modalities is None else tuple(modalities),
            [(i, str(paths[i])) for i in todo[k : k + _CHUNK]],
        )
        for k in range(0, len(todo), _CHUNK)
    ]
    failures: dict[int, str] = {}
    bar = tqdm(total=n, initial=resumed, desc="caching images", unit="img", disable=not progress)
    with bar:
        if workers > 1 and len(chunks) > 1:
            with mp.get_context("spawn").Pool(workers) as pool:
                for results in pool.imap_unordered(_work, chunks):
                    _collect(results, failures, bar)
        else:
            for chunk in chunks:
                _collect(_work(chunk), failures, bar)
    return CacheBuild(file=data_file, size=size, n=n, failures=failures, resumed=resumed)


def _collect(results: list[tuple[int, str | None]], failures: dict[int, str], bar: tqdm) -> None:
    for slot, error in results:
        if error is not None:
            failures[slot] = error
    bar.update(len(results))
