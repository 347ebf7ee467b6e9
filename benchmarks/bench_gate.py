"""Benchmark the input gate: the share of each image group it flags, and what it costs.

Groups (:mod:`gate_material`): the model's own phantom test images (in distribution: the
target is at most 5% flagged), their negatives, pydicom's CT/MR/US/NM/PT frames read with
modality checks off, skimage's bundled images, random noise and lateral-view phantom chest
films drawn at the test films' size (out of distribution: the target is at least 95%
flagged). Each group goes through ``infer``'s library path
(:func:`cxrkit.deploy.batch.predict_paths`); unreadable files are left out of the shares.
Cost: ``infer`` on the test images with the gate and with it switched off (alternating
rounds, medians), and model-only: ``predict_batch`` against ``predict_with_features`` plus
scoring, on cached batches (``--no-timing`` skips it and measures the shares only).

    .venv/bin/cxrkit demo --out /tmp/gate-demo --overwrite
    .venv/bin/python benchmarks/bench_gate.py --demo /tmp/gate-demo [--no-timing]
    .venv/bin/cxrkit export --checkpoint /tmp/gate-demo/run/checkpoints/best.ckpt \
        --out /tmp/gate-bundle --overwrite
    .venv/bin/python benchmarks/bench_gate.py --checkpoint /tmp/gate-bundle \
        --data /tmp/gate-demo/prepared --backend onnx
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import gate_material as material
import numpy as np
import torch

from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.batch import predict_paths
from cxrkit.deploy.gate_fit import fit_gate
from cxrkit.deploy.predictor import Predictor
from cxrkit.io.images import read_xray

IN_DISTRIBUTION = "phantom test"


def groups(
    prepared: Path, folder: Path, n_negatives: int = 100, n_lateral: int = 100
) -> dict[str, list[Path]]:
    """Each group's image files (written under ``folder`` where made here)."""
    test = [Path(p) for p in load_manifest(prepared).rows("test")["path"]]
    size = max(read_xray(test[0]).pixels.shape)
    return {
        IN_DISTRIBUTION: test,
        "phantom negatives": material.negatives(test[:n_negatives], folder / "neg"),
        "pydicom CT/MR/US/NM/PT": material.dicom_frames(),
        "skimage.data": material.natural_images(folder / "skimage"),
        "random noise": material.noise_images(folder / "noise"),
        "lateral phantoms": material.lateral_films(folder / "lateral", n_lateral, size),
    }


def flag_rates(predictor: Predictor, files: dict[str, list[Path]]) -> dict[str, dict[str, Any]]:
    """Per group: images read, share flagged, and the commonest reasons."""
    out = {}
    for name, paths in files.items():
        verdicts = [
            p.gate for p in predict_paths(predictor, paths, modalities=None) if p.gate is not None
        ]
        flagged = [v for v in verdicts if not v.in_distribution]
        reasons: Counter[str] = Counter()
        for v in flagged:
            reasons.update("feature distance" if r.startswith("feature") else r for r in v.reasons)
        out[name] = {
            "files": len(paths),
            "read": len(verdicts),
            "flagged": len(flagged),
            "rate": len(flagged) / max(1, len(verdicts)),
            "reasons": dict(reasons.most_common(4)),
        }
    return out


def overhead(predictor: Predictor, paths: list[Path], rounds: int) -> dict[str, float]:
    """ms per image with and without the gate: infer end to end, and the model alone."""
    gate = predictor.gate
    timings: dict[str, list[float]] = {"infer_gate": [], "infer_plain": []}
    order = [("infer_gate", gate), ("infer_plain", None)]
    for k in range(rounds):  # alternating which goes first, so neither gets the warm caches
        for key, g in order if k % 2 else order[::-1]:
            predictor.gate = g
            start = time.perf_counter()
            for _pred in predict_paths(predictor, paths):
                pass
            timings[key].append(1000 * (time.perf_counter() - start) / len(paths))
    predictor.gate = gate
    batch = torch.from_numpy(
        np.stack([predictor.preprocess(np.full((256, 256), 100, np.uint8))] * 32)
    )
    for key in ("model_gate", "model_plain"):
        timings[key] = []

    def plain() -> None:
        predictor.predict_batch(batch)

    def gated() -> None:
        _, features = predictor.predict_with_features(batch)
        gate.judge(features, [[]] * len(batch))

    steps = [("model_plain", plain), ("model_gate", gated)]
    for k in range(rounds):
        for key, fn in steps if k % 2 else steps[::-1]:
            start = time.perf_counter()
            fn()
            timings[key].append(1000 * (time.perf_counter() - start) / len(batch))
    return {k: statistics.median(v) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="a `cxrkit demo` folder")
    parser.add_argument("--checkpoint", type=Path, help="instead of --demo: a checkpoint")
    parser.add_argument("--data", type=Path, help="with --checkpoint: its prepared folder")
    parser.add_argument("--backend", default="torch", help="e.g. onnx, with a bundle")
    parser.add_argument("--refit", action="store_true", help="fit the gate again first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-timing", action="store_true", help="the flag shares only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    a = parser.parse_args()
    warnings.filterwarnings("ignore")
    checkpoint = a.checkpoint or a.demo / "run" / "checkpoints" / "best.ckpt"
    prepared = a.data or a.demo / "prepared"
    predictor = Predictor.from_checkpoint(checkpoint, backend=a.backend)
    if a.refit or predictor.gate is None:
        print(fit_gate(checkpoint, prepared, progress=False).describe())
        predictor = Predictor.from_checkpoint(checkpoint, backend=a.backend)
    print(
        f"torch threads {torch.get_num_threads()}, backend {predictor.backend_name} "
        f"{predictor.precision}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = groups(prepared, Path(tmp))
        rates = flag_rates(predictor, files)
        cost = None if a.no_timing else overhead(predictor, files[IN_DISTRIBUTION][:128], a.rounds)
    print("\n| group | images read | flagged | share flagged | main reasons |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, r in rates.items():
        reasons = ", ".join(f"{k} {v}" for k, v in r["reasons"].items()) or "-"
        print(f"| {name} | {r['read']} | {r['flagged']} | {r['rate']:.1%} | {reasons} |")
    if cost is not None:
        print(
            f"\ninfer (decode + model), ms/image: {cost['infer_plain']:.2f} without the gate, "
            f"{cost['infer_gate']:.2f} with it; model only (batch 32): {cost['model_plain']:.2f} "
            f"-> {cost['model_gate']:.2f}"
        )
    if a.json:
        a.json.write_text(json.dumps({"rates": rates, "ms_per_image": cost}, indent=2))


if __name__ == "__main__":
    main()
