"""Benchmark the phantom generator: images per second on one core.

Samples patients, renders and PNG-encodes their images in this process with one OpenCV thread
(what one worker of ``cxrkit synth`` does, minus the file write) and reports images/s per core,
from CPU time and from wall-clock time, for the fastest of a few runs (other processes on the
machine slow single runs down).

    .venv/bin/python benchmarks/bench_synth.py [--size 256] [--patients 60]
"""

from __future__ import annotations

import argparse
import time

import cv2

from cxrkit.data.synth.dataset import encode_png, sample_patient
from cxrkit.data.synth.phantom import render


def bench(size: int, patients: int, seed: int = 0) -> tuple[int, float, float]:
    """Sample, render and PNG-encode ``patients`` patients in this process on one thread;
    returns (images, wall seconds, CPU seconds)."""
    cv2.setNumThreads(1)
    images, wall, cpu = 0, time.perf_counter(), time.process_time()
    for pid in range(1, patients + 1):
        patient = sample_patient(seed, pid)
        for study in patient.studies:
            image, _ = render(patient.anatomy, study.acquisition, study.lesions, size)
            encode_png(image)
            images += 1
    return images, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3, help="report the fastest of N runs")
    args = parser.parse_args()
    bench(args.size, 3)  # warm-up: imports, caches
    runs = [bench(args.size, args.patients, seed=1) for _ in range(args.repeat)]
    images, wall, cpu = min(runs, key=lambda run: run[2])
    print(
        f"{images} images at {args.size} px, one core: {images / cpu:.0f} images/s per core "
        f"of CPU time ({1000 * cpu / images:.2f} ms/image); {images / wall:.0f} images/s "
        "wall clock (lower if other processes share the core)"
    )


if __name__ == "__main__":
    main()
