"""Benchmark probe training: 100,000 random float16 embeddings of D=768, 14 findings.

The embedding folder is written by cxrkit's own store (:mod:`cxrkit.data.embeddings`) beside a
synthetic manifest (labels at 5-30% prevalence, weakly predictable from the embeddings, a
patient-wise 80/10/10 split; no images: a probe never reads them) and a random
``convnext_tiny`` encoder (768 features). Then ``fit`` runs the shipped ``probe`` recipe, as
``cxrkit train --config probe`` does, and the training loop and the whole run are timed.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_probe.py --n 100000 --dim 768
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrkit.data import embeddings as store
from cxrkit.data.labels import CANONICAL
from cxrkit.data.manifest import write_manifest
from cxrkit.deploy.embed import backbone_model, save_encoder
from cxrkit.models.checkpoint import LoadedModel

FINDINGS = list(CANONICAL[:14])  # NIH's 14


def synthetic_folder(root: Path, *, n: int, dim: int, n_findings: int, seed: int = 0) -> Path:
    """A synthetic prepared folder (manifest only) and its embedding folder; returns EMB."""
    rng = np.random.default_rng(seed)
    findings = FINDINGS[:n_findings]
    x = rng.standard_normal((n, dim)).astype(np.float16)
    w = rng.standard_normal((dim, n_findings)) / np.sqrt(dim)
    prevalence = rng.uniform(0.05, 0.3, n_findings)
    score = x.astype(np.float32) @ w + rng.standard_normal((n, n_findings))
    cut = np.array([np.quantile(score[:, j], 1 - q) for j, q in enumerate(prevalence)])
    labels = (score > cut).astype(np.float32)
    patients = np.arange(n) // 2
    split = np.where(patients % 10 == 0, "val", np.where(patients % 10 == 1, "test", "train"))
    table = pd.DataFrame(
        {
            "image_id": [f"img{i:07d}.png" for i in range(n)],
            "path": [f"images/img{i:07d}.png" for i in range(n)],
            "patient_id": [f"p{p}" for p in patients],
            "study_id": [f"s{i}" for i in range(n)],
            "view": "PA",
            "sex": "F",
            "age": 50.0,
            "split": split,
            "cache_index": np.arange(n),
        }
    )
    for j, f in enumerate(findings):
        table[f] = labels[:, j]
    prep = root / "prep"
    prep.mkdir(parents=True)
    hashes = {
        s: hashlib.sha256(
            ",".join(sorted(set(table.patient_id[table.split == s]))).encode()
        ).hexdigest()
        for s in ("train", "val", "test")
    }
    header = {
        "dataset": "synthetic",
        "findings": findings,
        "split": {"policy": "synthetic 80/10/10 by patient", "patients_sha256": hashes},
        "cache": {"file": "cache/images_64.u8", "size": 64, "n": n, "clahe": None},
    }
    write_manifest(prep, table, header)
    from cxrkit.data.manifest import load_manifest

    manifest = load_manifest(prep)
    encoder = backbone_model("convnext_tiny", findings, 64, None, pretrained=False, image_size=64)
    out = root / "emb"
    settings = {"model": {"backbone": "convnext_tiny", "pretrained": False}}
    record = {
        "dim": dim,
        "dtype": "float16",
        "model": settings["model"],
        "input_size": 64,
        "normalization": encoder.card["normalization"],
        "manifest": {"folder": manifest.origin, "sha256": store.manifest_fingerprint(manifest)},
    }
    writer = store.start(out, settings, manifest.table, record)
    assert writer is not None
    writer.write(np.arange(n), x)
    writer.finish({})
    save_encoder(out, LoadedModel(encoder.model, encoder.card))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--findings", type=int, default=14)
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    a = p.parse_args()
    from cxrkit.train.config import load_config, resolve_recipe
    from cxrkit.train.fit import fit
    from cxrkit.train.run_folder import read_json

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        emb = synthetic_folder(root, n=a.n, dim=a.dim, n_findings=a.findings)
        print(f"wrote {a.n} x {a.dim} embeddings in {time.perf_counter() - t0:.1f} s")
        config = load_config(resolve_recipe("probe"), a.set)
        t0 = time.perf_counter()
        result = fit(config, emb, root / "run", progress=False)
        total = time.perf_counter() - t0
        metrics = read_json(root / "run" / "metrics.json")
        print(
            f"batch {config.data.batch_size}, lr {config.optim.lr}, "
            f"torch threads {torch.get_num_threads()}: {result.epochs} epochs "
            f"(stopped early: {metrics['stopped_early']}) trained in {result.seconds:.1f} s, "
            f"whole run (loading, checkpoints) {total:.1f} s; best val macro AUROC "
            f"{result.best_score:.4f}"
        )


if __name__ == "__main__":
    main()
