"""Decode speed of cxrkit.io on one CPU core: read_xray, and read_xray + letterbox.

A bare ``cv2.imread`` of the same files is timed first: the speed limit set by the codec (libpng
for PNG), so the reader's own overhead shows.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_decode.py [FOLDER] [--size 256] [--repeat 3]

FOLDER defaults to ``../shared/data/nih-sample/images`` (118 real 1024x1024 NIH PNGs); every
regular file in it is read, whatever its extension. Prints the best images/s over the repeats
after one warm-up pass (so the files are in the page cache). The process is pinned to one core
and OpenCV to one thread. Skips with a message when the folder is absent.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2

from cxrkit.io.geometry import letterbox
from cxrkit.io.images import read_xray

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared/data/nih-sample/images"


def images_per_second(paths: list[Path], work: Callable[[Path], object], repeat: int) -> float:
    """Best throughput of ``work`` over all ``paths``, in images/s, over ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for path in paths:
            work(path)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--size", type=int, default=256, help="letterbox size (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (default 3)")
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

    rows = {
        "cv2.imread only (reference)": lambda path: cv2.imread(str(path), cv2.IMREAD_UNCHANGED),
        "decode (read_xray)": read_xray,
        f"decode + letterbox({args.size})": lambda path: letterbox(
            read_xray(path).pixels, args.size
        ),
    }
    for label, work in rows.items():
        rate = images_per_second(paths, work, args.repeat)
        print(f"{label + ':':<30} {rate:8.1f} images/s on one core")


if __name__ == "__main__":
    main()
