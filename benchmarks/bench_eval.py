"""Benchmark evaluation with uncertainty: point estimates, DeLong and patient bootstrap intervals.

Random labels (about 10% prevalence) and scores for ``--images`` images x ``--classes``
findings, about ``--per-patient`` images per patient. Times one full evaluation
(:func:`cxrkit.evaluate.metrics.summarize`, :func:`cxrkit.evaluate.delong.delong_ci` per class
and :func:`cxrkit.evaluate.bootstrap.bootstrap_ci` with ``--boot`` patient resamples of every
figure) against a loop calling ``sklearn.metrics.roc_auc_score`` per class per resample (AUROC
only, same count weights), timed on ``--sklearn-boot`` resamples and extrapolated.

    .venv/bin/python benchmarks/bench_eval.py [--images 25000] [--boot 1000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrkit.evaluate.bootstrap import bootstrap_ci, bootstrap_weights
from cxrkit.evaluate.delong import delong_ci
from cxrkit.evaluate.metrics import summarize


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(result, wall seconds, CPU seconds)`` of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25_000)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--per-patient", type=float, default=3.0)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--sklearn-boot", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.images, args.classes)
    y = (rng.random(shape) < 0.1).astype(float)
    s = rng.random(shape)
    groups = rng.integers(0, round(args.images / args.per_patient), args.images)
    classes = [f"finding{j}" for j in range(args.classes)]
    thresholds = np.full(args.classes, 0.5)

    def evaluate() -> dict[str, np.ndarray]:
        summarize(y, s, classes=classes, thresholds=thresholds)
        [delong_ci(y[:, j], s[:, j]) for j in range(args.classes)]
        return bootstrap_ci(y, s, thresholds=thresholds, groups=groups, n_boot=args.boot)

    intervals, wall, cpu = timed(evaluate)
    print(
        f"{args.images} images x {args.classes} findings, {np.unique(groups).size} patients, "
        f"{args.boot} patient resamples of {len(intervals)} figures: {wall:.2f} s wall "
        f"({cpu:.2f} s CPU) for summarize + DeLong + bootstrap_ci"
    )

    def sklearn_loop() -> None:
        batches = bootstrap_weights(args.images, groups=groups, n_boot=args.sklearn_boot, seed=0)
        for w in np.vstack(list(batches)):
            for j in range(args.classes):
                roc_auc_score(y[:, j], s[:, j], sample_weight=w)

    _, sk_wall, _ = timed(sklearn_loop)
    sk_full = sk_wall * args.boot / args.sklearn_boot
    print(
        f"sklearn roc_auc_score loop (AUROC only): {sk_wall:.2f} s for {args.sklearn_boot} "
        f"resamples -> {sk_full:.1f} s for {args.boot} (extrapolated); "
        f"cxrkit is {sk_full / wall:.0f}x faster while computing every figure"
    )


if __name__ == "__main__":
    main()
