"""A/B of how ``infer`` shares the cores between decoding and the model (docs/benchmarks.md).

Variants: decoding threads (1 or 2), their priority (normal or nice 19) and whether onnxruntime's
threads spin-wait between operators. All run in this one process on the same images, in a
shuffled order each round, each timed model-only (4 ready batches, before and after) and end to
end (decode, letterbox, resize, normalise, forward over every image); medians over rounds.
The model is the untrained DenseNet121 stand-in of ``cxrkit bench infer``, exported to ONNX
(speed does not depend on the weights).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/decode_ab.py [IMAGES] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxrkit.bench.inference import stand_in
from cxrkit.deploy.backends import ONNX_FILE, OnnxBackend
from cxrkit.deploy.batch import _Decode, decoded_batches
from cxrkit.deploy.onnx_export import export_onnx
from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.sources import resolve_sources
from cxrkit.models.checkpoint import LoadedModel

#: name -> (decoding threads, low priority, onnxruntime spin-waits)
VARIANTS = {
    "1 thread, normal priority, spinning (before)": (1, False, True),
    "1 thread, normal priority, sleeping": (1, False, False),
    "2 threads, normal priority, sleeping": (2, False, False),
    "2 threads, nice 19, spinning": (2, True, True),
    "2 threads, nice 19, sleeping (now)": (2, True, False),
}


def end_to_end(predictor: Predictor, paths: Sequence[Path], threads: int, low: bool) -> float:
    """Images/s of decoding and predicting every image of ``paths`` (all readable)."""
    dataset = _Decode(paths, predictor.letterbox_size, None, ())
    start = time.perf_counter()
    batches = decoded_batches(dataset, predictor.batch_size, 0, threads=threads, low_priority=low)
    for items in batches:
        predictor.predict_batch(torch.from_numpy(np.stack([it.pixels for it in items])))
    return len(paths) / (time.perf_counter() - start)


def model_only(predictor: Predictor, x: torch.Tensor, batches: int = 4) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        predictor.backend(x)
    return len(x) * batches / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="?", default="../shared/data/nih-sample/images")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    paths = resolve_sources(a.images)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = stand_in("densenet121", 224, 256)
        export_onnx(loaded.model, Path(tmp) / ONNX_FILE, 224)
        bundle = LoadedModel(loaded.model, {**loaded.card, "files": {ONNX_FILE: {}}}, Path(tmp))
        runs = {}
        for name, (threads, low, spin) in VARIANTS.items():
            predictor = Predictor(bundle, batch_size=16, precision="fp32", backend="onnx")
            predictor.backend = OnnxBackend(Path(tmp) / ONNX_FILE, spin_wait=spin)
            runs[name] = (predictor, threads, low)
        x = torch.randn(16, 1, 224, 224)
        for predictor, threads, low in runs.values():  # warm-up
            end_to_end(predictor, paths[:32], threads, low)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for r in range(a.rounds):
            order = random.Random(r).sample(list(runs), len(runs))
            before = {name: model_only(runs[name][0], x) for name in order}
            e2e = {name: end_to_end(runs[name][0], paths, *runs[name][1:]) for name in order}
            after = {name: model_only(runs[name][0], x) for name in order}
            for name in runs:
                figures[name].append(((before[name] + after[name]) / 2, e2e[name]))
    print(f"{len(paths)} images, {a.rounds} rounds, medians (images/s):")
    for name, rows in figures.items():
        m = statistics.median(f[0] for f in rows)
        e = statistics.median(f[1] for f in rows)
        print(f"{name}: model-only {m:.1f}, end to end {e:.1f}, ratio {e / m:.2f}")


if __name__ == "__main__":
    main()
