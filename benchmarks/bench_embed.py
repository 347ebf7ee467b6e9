"""Benchmark ``cxrkit embed`` on the CPU: images/s of a backbone over a prepared phantom.

Runs :func:`cxrkit.deploy.embed.embed` (the Predictor's forward pass, chunked float16 writes)
on every image of a prepared folder and reports images/s of the embedding pass.

    .venv/bin/cxrkit synth --out /tmp/be/ph --n-patients 100 --size 256
    .venv/bin/cxrkit prepare nih --root /tmp/be/ph --out /tmp/be/prep --size 256
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_embed.py --data /tmp/be/prep \
        --backbone resnet50 --image-size 224
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from cxrkit.deploy.embed import embed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared folder")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        done = embed(
            a.data,
            Path(tmp) / "emb",
            backbone=a.backbone,
            pretrained=False,
            image_size=a.image_size,
            batch_size=a.batch_size,
            device="cpu",
            precision=a.precision,
            progress=False,
        )
    print(
        f"{a.backbone} at {a.image_size} px, torch threads {torch.get_num_threads()}, "
        f"precision {a.precision}: {done.n} images in {done.seconds:.1f} s = "
        f"{done.n / done.seconds:.1f} images/s (D = {done.dim})"
    )


if __name__ == "__main__":
    main()
