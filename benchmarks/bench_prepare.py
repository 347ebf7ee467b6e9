"""Speed of ``cxrkit prepare nih`` on real NIH PNGs: parse + split + cache build.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_prepare.py [NIH_ROOT] [--size 256] [--workers 1]

NIH_ROOT defaults to ``../shared/data/nih-sample`` (118 real 1024x1024 PNGs with the full
official metadata). Runs prepare once to warm the page cache, then times a second run into a
fresh folder. Prints the total time and the cache-build rate in images/s (per core when
``--workers 1``). Skips with a message when the folder is absent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cxrkit.data.prepare import prepare

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if not args.root.is_dir():
        print(f"skipped: {args.root} not found")
        return
    with tempfile.TemporaryDirectory() as tmp:
        prepare(
            "nih",
            args.root,
            Path(tmp) / "warm",
            size=args.size,
            workers=args.workers,
            progress=False,
        )
        start = time.perf_counter()
        m = prepare(
            "nih",
            args.root,
            Path(tmp) / "prep",
            size=args.size,
            workers=args.workers,
            progress=False,
        )
        total = time.perf_counter() - start
        n = m.header["counts"]["prepared"]
        from cxrkit.data.cache import build_cache

        paths = m.table["path"].tolist()
        start = time.perf_counter()
        build_cache(
            paths, Path(tmp) / "cache-only", size=args.size, workers=args.workers, progress=False
        )
        cache = time.perf_counter() - start
    print(f"{n} images, size {args.size}, workers {args.workers}")
    print(f"prepare total (parse + split + cache): {total:.2f} s, {n / total:.1f} images/s")
    print(f"cache build only: {n / cache:.1f} images/s")


if __name__ == "__main__":
    main()
