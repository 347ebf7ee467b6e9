"""GPU figures of issue 13 on phantom data the script makes itself: ``eval`` of ~25,000 images
end to end, ``infer`` images/s with decoding (PNG and JPEG) at 224 and 320 px, batch 64, and
the GPU memory each needed.

Run on a machine with a GPU (all steps also run on a CPU, for checking the script):

    .venv/bin/python benchmarks/bench_gpu.py --out /tmp/gpu-bench --device cuda --json gpu.json
    .venv/bin/python benchmarks/bench_gpu.py --out /tmp/gpu-check --device cpu \\
        --n-eval 300 --n-infer 40 --sizes 64 --backbone resnet10t          # a 1-minute check

Steps, each timed: draw a phantom in NIH layout (``--image-px`` px films, all cores), prepare
it (256 px cache), write an untrained ``--backbone`` checkpoint (speed does not depend on the
weights), ``evaluate_checkpoint`` on its train split (the most images; val is predicted too,
as ``eval`` always does; 200 bootstrap resamples, no report), then for PNG and JPEG copies of
``--n-infer`` films and each ``--sizes`` input size, ``cxrkit bench infer``'s measurement
(model-only and end to end, medians of 3 rounds, ``--batch`` images a batch). Prints one JSON
object (also written to ``--json``) with the card and driver when on CUDA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import cv2
import pandas as pd
import torch

from cxrkit.bench.inference import bench_infer, stand_in
from cxrkit.data.prepare import prepare
from cxrkit.data.synth.dataset import generate_dataset
from cxrkit.evaluate.runs import EvalOptions, evaluate_checkpoint
from cxrkit.models.checkpoint import CARD_FORMAT, atomic_torch_save
from cxrkit.models.devices import resolve_runtime

IMAGES_PER_PATIENT = 2.4  # the phantom's mean (1-5 films each)


def _timed(step: str, times: dict[str, float], fn):  # noqa: ANN001, ANN202 - any step
    start = time.perf_counter()
    result = fn()
    times[step] = round(time.perf_counter() - start, 1)
    print(f"{step}: {times[step]} s", flush=True)
    return result


def _peak_mb(device: torch.device) -> float | None:
    """Peak GPU memory since the last reset, MiB (None off CUDA); resets it."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 1)


def _checkpoint(path: Path, backbone: str, input_size: int) -> Path:
    """An untrained checkpoint cxrkit loads like a trained one (state dict + model card)."""
    loaded = stand_in(backbone, input_size, letterbox_size=256)
    card = {**loaded.card, "format": CARD_FORMAT, "output_stride": 32, "in_chans": 1}
    state = {f"model.{k}": v for k, v in loaded.model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "model_card": card}, path)
    return path


def _copies(prepared: Path, folder: Path, n: int, ext: str) -> Path:
    """``n`` of the prepared folder's source films re-encoded as ``ext`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = pd.read_csv(prepared / "manifest.csv", usecols=["path"])["path"].tolist()[:n]
    for i, p in enumerate(paths):
        cv2.imwrite(str(folder / f"{i:06d}{ext}"), cv2.imread(p, cv2.IMREAD_GRAYSCALE))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (made anew)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--n-eval", type=int, default=25_000, help="phantom images in all")
    parser.add_argument("--n-infer", type=int, default=2_000, help="films timed by infer")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-px", type=int, default=512, help="phantom film size")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    runtime = resolve_runtime(args.device, args.precision)
    device = runtime.device
    times: dict[str, float] = {}
    n_patients = max(4, math.ceil(args.n_eval / IMAGES_PER_PATIENT))
    _timed("synth", times, lambda: generate_dataset(args.out / "phantom", n_patients=n_patients,
           size=args.image_px, workers=args.workers, overwrite=True, progress=False))  # fmt: skip
    _timed("prepare", times, lambda: prepare("nih", args.out / "phantom", args.out / "prepared",
           size=256, workers=args.workers, overwrite=True, progress=False))  # fmt: skip
    ckpt = _checkpoint(args.out / "stand-in.ckpt", args.backbone, args.sizes[0])
    options = EvalOptions(split="train", n_boot=200, report=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = _timed("eval", times, lambda: evaluate_checkpoint(ckpt, args.out / "prepared",
                    args.out / "eval", options=options, write_card=False, progress=False,
                    device=args.device, precision=args.precision))  # fmt: skip
    n_val = result.metrics.get("calibration", {}).get("n_images") or 0
    figures: dict = {
        "runtime": runtime.line(),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },  # fmt: skip
        "eval": {
            "images_predicted": result.metrics["n_images"] + n_val,
            "seconds": times["eval"],
            "gpu_peak_mib": _peak_mb(device),
        },  # fmt: skip
        "infer": [],
        "step_seconds": times,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        figures["machine"]["gpu"] = {"name": props.name, "memory_mib": props.total_memory >> 20,
                                     "cuda": torch.version.cuda}  # fmt: skip
    for ext in (".png", ".jpg"):
        folder = _copies(args.out / "prepared", args.out / f"infer{ext}", args.n_infer, ext)
        for size in args.sizes:
            bench = bench_infer(folder, backbone=args.backbone, input_size=size,
                                letterbox_size=max(256, size), batch_size=args.batch,
                                workers=min(args.workers, 8), precision=args.precision,
                                onnx=False, device=args.device,
                                gpu_decode=ext == ".jpg")  # fmt: skip
            figures["infer"].append({"format": ext[1:], "input_size": size, "batch": args.batch,
                                     "model_only": bench.model, "end_to_end": bench.end_to_end,
                                     "gpu_peak_mib": _peak_mb(device)})  # fmt: skip
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
