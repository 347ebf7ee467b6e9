"""Reading the training split: the memmap cache against LitData shards, 0 and 2 loader workers.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_shards.py [--work /tmp/bench-shards] [--patients 1200]
        [--size 256] [--batch-size 64] [--rounds 11] [--epochs 5]

Draws a phantom (``cxrkit synth``'s generator, ``--patients`` patients, 1-5 images each) and
prepares it twice at ``--size`` px, ``--format memmap`` and ``--format litdata`` (kept in
``--work`` and reused by later runs). Then, for each reader and each worker count, one
training loader (``cxrkit.train.loaders.make_loader``: shuffled, whole batches, the sampler
of ``cxrkit train``, no augmentation: the reader alone) reads every training batch once to
warm up (and start its persistent workers); then ``--rounds`` rounds each read ``--epochs``
epochs from every loader, in an order rotated from round to round, and the median images/s of
each loader is printed. Files are read from the page cache after the warm-up: what is measured is
the reader's cost, not the disk's. Local folders only: an object store is not measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cxrkit.data.manifest import HEADER_NAME, load_manifest
from cxrkit.data.prepare import prepare
from cxrkit.data.synth.dataset import generate_dataset
from cxrkit.train.loaders import combine, make_loader

FORMATS = ("memmap", "litdata")
WORKERS = (0, 2)


def prepared(work: Path, patients: int, size: int) -> dict[str, Path]:
    """The phantom prepared in both formats under ``work`` (made once, then reused)."""
    phantom = work / "phantom"
    if not (phantom / "Data_Entry_2017.csv").is_file():
        cpus = os.cpu_count() or 1
        generate_dataset(
            phantom, n_patients=patients, size=size, seed=0, workers=cpus, progress=False
        )
    folders = {}
    for cache_format in FORMATS:
        folders[cache_format] = out = work / cache_format
        if not (out / HEADER_NAME).is_file():
            prepare(
                "nih",
                phantom,
                out,
                size=size,
                workers=os.cpu_count() or 1,
                cache_format=cache_format,
                overwrite=True,
                progress=False,
            )
    return folders


def epochs(loader: DataLoader, count: int) -> tuple[int, float]:
    """``(images, seconds)`` of reading every batch of ``loader``, ``count`` times over."""
    started = time.perf_counter()
    images = sum(len(labels) for _ in range(count) for _, labels in loader)
    return images, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-shards"))
    parser.add_argument("--patients", type=int, default=1200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=5, help="epochs read per loader and round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="no positive training images")

    folders = prepared(args.work, args.patients, args.size)
    loaders: dict[tuple[str, int], DataLoader] = {}
    for cache_format, folder in folders.items():
        data = combine([load_manifest(folder)], None)
        train = data.split("train").batches(data.caches)
        for workers in WORKERS:
            loaders[cache_format, workers] = make_loader(
                train, batch_size=args.batch_size, shuffle=True, num_workers=workers, seed=0
            )
    n = len(train)
    print(f"training split: {n} images of {args.size} px, batches of {args.batch_size}")
    for loader in loaders.values():
        epochs(loader, 1)  # warm-up: page cache, persistent workers started
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in loaders}
    keys = list(loaders)
    for r in range(args.rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            images, seconds = epochs(loaders[key], args.epochs)
            assert images == n * args.epochs, (key, images, n)
            rates[key].append(images / seconds)
    for (cache_format, workers), values in rates.items():
        print(
            f"{cache_format:8s} {workers} worker(s): {statistics.median(values):9,.0f} images/s "
            f"(median of {len(values)}; min {min(values):,.0f}, max {max(values):,.0f})"
        )


if __name__ == "__main__":
    main()
