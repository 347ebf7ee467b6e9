"""Decode speed of cxrkit.io on one CPU core: read_xray, and read_xray + letterbox.

Bare decoders of the same files (already in memory) are timed too: ``cv2.imdecode`` (libpng
and zlib, what read_xray used for PNG before :mod:`cxrkit.io.png`) and
:func:`cxrkit.io.png.decode_png` (what it uses now), so the reader's own overhead shows. The
rows alternate within each of ``--repeat`` rounds; each row's median over the rounds is
printed, with the per-round ratio of the two bare decoders.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_decode.py [FOLDER] [--size 256] [--repeat 3]

FOLDER defaults to ``../shared/data/nih-sample/images`` (118 real 1024x1024 NIH PNGs); every
regular file in it is read, whatever its extension. Prints median images/s over the rounds
after one warm-up pass (so the files are in the page cache). The process is pinned to one core
and OpenCV to one thread. Skips with a message when the folder is absent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrkit.io.geometry import letterbox
from cxrkit.io.images import read_xray
from cxrkit.io.png import decode_png

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared/data/nih-sample/images"


def images_per_second(items: list[Any], work: Callable[[Any], object]) -> float:
    """Throughput of ``work`` over all ``items`` (one pass), in images/s."""
    start = time.perf_counter()
    for item in items:
        work(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--size", type=int, default=256, help="letterbox size (default 256)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()

    if not args.folder.is_dir():
        print(f"skipped: image folder not found: {args.folder}")
        return
    paths = sorted(p for p in args.folder.iterdir() if p.is_file())
    if not paths:
        print(f"skipped: no files in {args.folder}")
        return

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)

    shapes = Counter()
    for path in paths:  # warm-up: page cache, lazy imports; also validates every file
        xray = read_xray(path)
        shapes[(xray.format, xray.pixels.shape)] += 1
    summary = ", ".join(f"{n} {fmt} {h}x{w}" for (fmt, (h, w)), n in shapes.most_common())
    print(f"{len(paths)} images in {args.folder}: {summary}")

    blobs = [path.read_bytes() for path in paths]
    opencv, fast = "cv2.imdecode (bytes)", "decode_png (bytes)"
    rows: dict[str, tuple[list[Any], Callable[[Any], object]]] = {
        opencv: (blobs, lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)),
        fast: (blobs, decode_png),
        "read_xray (file)": (paths, read_xray),
        f"read_xray + letterbox({args.size})": (
            paths,
            lambda path: letterbox(read_xray(path).pixels, args.size),
        ),
    }
    rates: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(args.repeat):
        for label, (items, work) in rows.items():
            rates[label].append(images_per_second(items, work))
    for label, values in rates.items():
        rate = statistics.median(values)
        print(f"{label + ':':<34} {rate:8.1f} images/s ({1e3 / rate:.2f} ms) on one core")
    ratios = [f / o for f, o in zip(rates[fast], rates[opencv], strict=True)]
    print(f"decode_png / cv2.imdecode per round: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
