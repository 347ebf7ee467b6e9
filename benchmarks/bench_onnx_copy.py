"""`infer --checkpoint best.ckpt` with its ONNX copy, against PyTorch and torchxrayvision.

A DenseNet121 checkpoint at 224 (letterbox 256; untrained stand-in weights, speed does not
depend on them) is written with cxrkit's own checkpoint writer; its ONNX copy is exported the
way `infer` does it (the first Predictor with ``onnx_copy=True``, timed once). Then, in
alternating rounds: torchxrayvision's pipeline (``txv_baseline.py`` in its own venv), and for
each cxrkit path its model-only rate (ready normalised batches of 16) and its end-to-end rate
(``predict_paths`` over every image: decode, letterbox, resize, normalise, forward, sigmoid,
as ``infer`` runs it). The order of the cxrkit paths rotates between rounds; figures are per
round and medians::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_onnx_copy.py \\
        ../shared/data/nih-sample/images --rounds 5

Paths: ``copy`` (``--backend auto --precision fp32``: the ONNX copy under onnxruntime),
``copy-opencv-png`` (the same, PNGs decoded by OpenCV as before :mod:`cxrkit.io.png`),
``torch-fp32`` (``--backend torch --precision fp32``), ``torch-bf16`` (``--backend torch
--precision bf16``: what ``auto`` runs on a CPU with native bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import cxrkit.io.png
from cxrkit.bench.inference import stand_in
from cxrkit.deploy.batch import predict_paths
from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.sources import resolve_sources
from cxrkit.models.checkpoint import CARD_FORMAT, atomic_torch_save

HERE = Path(__file__).resolve().parents[1]
TXV = HERE.parent / "shared" / "tools" / "txv_baseline.py"
PATHS = {
    "copy": {"precision": "fp32", "onnx_copy": True},
    "torch-fp32": {"precision": "fp32", "backend": "torch"},
    "torch-bf16": {"precision": "bf16", "backend": "torch"},
}


def write_checkpoint(path: Path) -> Path:
    """A cxrkit checkpoint of an untrained DenseNet121 (card and ``model.``-prefixed state)."""
    loaded = stand_in("densenet121", 224, 256)
    state = {f"model.{k}": v for k, v in loaded.model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(
        {"model_card": {**loaded.card, "format": CARD_FORMAT}, "state_dict": state}, path
    )
    return path


def model_rate(predictor: Predictor, x: torch.Tensor, batches: int = 4) -> float:
    """Images/s of ``batches`` forward passes of ``x`` (one untimed first)."""
    with torch.inference_mode(), predictor.autocast():
        predictor.backend(x)
        start = time.perf_counter()
        for _ in range(batches):
            predictor.backend(x)
    return len(x) * batches / (time.perf_counter() - start)


@contextlib.contextmanager
def opencv_png() -> Iterator[None]:
    """PNGs decoded by OpenCV, as before cxrkit.io.png (its decoder steps aside for all)."""
    fast = cxrkit.io.png.decode_png
    cxrkit.io.png.decode_png = lambda data: None
    try:
        yield
    finally:
        cxrkit.io.png.decode_png = fast


def end_to_end_rate(predictor: Predictor, paths: list[Path], decoder: str = "fast") -> float:
    """Images/s of one ``predict_paths`` pass (decoding threads, ``--workers 0``)."""
    with opencv_png() if decoder == "opencv" else contextlib.nullcontext():
        start = time.perf_counter()
        for _ in predict_paths(predictor, paths, workers=0):
            pass
        return len(paths) / (time.perf_counter() - start)


def txv_rate(images: Path, python: str) -> float:
    """torchxrayvision's figure (its own process, 2 threads)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [python, str(TXV), str(images)], capture_output=True, text=True, env=env, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--xrv-python", default=os.environ.get("XRV_PYTHON", "/tmp/xrv/bin/python"))
    a = parser.parse_args()
    torch.set_num_threads(2)
    paths = resolve_sources(a.images)
    with tempfile.TemporaryDirectory(prefix="cxrkit-onnx-copy-") as tmp:
        ckpt = write_checkpoint(Path(tmp) / "run" / "checkpoints" / "best.ckpt")
        start = time.perf_counter()
        predictors = {"copy": Predictor.from_checkpoint(ckpt, batch_size=16, **PATHS["copy"])}
        print(
            f"first Predictor with the copy (export + check): {time.perf_counter() - start:.1f} s"
        )
        start = time.perf_counter()
        predictors["copy"] = Predictor.from_checkpoint(ckpt, batch_size=16, **PATHS["copy"])
        print(f"second Predictor (copy reused): {time.perf_counter() - start:.1f} s")
        assert predictors["copy"].backend_name == "onnx"
        for key, options in PATHS.items():
            if key != "copy":
                predictors[key] = Predictor.from_checkpoint(ckpt, batch_size=16, **options)
        x = torch.randn(16, 1, 224, 224).contiguous(memory_format=torch.channels_last)
        for predictor in predictors.values():  # warm-up
            list(predict_paths(predictor, paths[:32], workers=0))
        keys = list(predictors)
        rows = []
        for r in range(a.rounds):
            row: dict[str, float] = {"txv": txv_rate(a.images, a.xrv_python)}
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                row[f"model {key}"] = model_rate(predictors[key], x)
                decoders = ["fast", "opencv"] if key == "copy" else ["fast"]
                for decoder in decoders[r % len(decoders) :] + decoders[: r % len(decoders)]:
                    suffix = "-opencv-png" if decoder == "opencv" else ""
                    row[f"e2e {key}{suffix}"] = end_to_end_rate(predictors[key], paths, decoder)
            rows.append(row)
            print(
                f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True
            )
    print(f"\n{len(paths)} images, torch threads {torch.get_num_threads()}, per round:")
    print(
        "| round | txv | e2e copy | vs txv | e2e/model copy | e2e torch-fp32 | vs txv | "
        "e2e torch-bf16 | vs txv | model copy | model fp32 | model bf16 | copy/bf16 e2e | "
        "copy/bf16 model | e2e copy, OpenCV PNG | its e2e/model |"
    )
    print("|" + "---|" * 16)
    for r, row in enumerate([*rows, {k: statistics.median(x[k] for x in rows) for k in rows[0]}]):
        t = row["txv"]
        name = str(r + 1) if r < len(rows) else "median"
        cells = [
            name, f"{t:.2f}", f"{row['e2e copy']:.1f}", f"{row['e2e copy'] / t:.2f}x",
            f"{row['e2e copy'] / row['model copy']:.2f}", f"{row['e2e torch-fp32']:.1f}",
            f"{row['e2e torch-fp32'] / t:.2f}x", f"{row['e2e torch-bf16']:.1f}",
            f"{row['e2e torch-bf16'] / t:.2f}x", f"{row['model copy']:.1f}",
            f"{row['model torch-fp32']:.1f}", f"{row['model torch-bf16']:.1f}",
            f"{row['e2e copy'] / row['e2e torch-bf16']:.2f}",
            f"{row['model copy'] / row['model torch-bf16']:.2f}",
            f"{row['e2e copy-opencv-png']:.1f}",
            f"{row['e2e copy-opencv-png'] / row['model copy']:.2f}",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
