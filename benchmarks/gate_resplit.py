"""How much the input gate's in-distribution flag rate depends on which patients the
validation split happened to draw.

The gate's threshold is the validation scores' conformal 95% point, so a new film from the
same population exceeds it with probability 5% *on average over the draw of the validation
split*; with a small validation split one draw can sit far from that average. This pools the
validation and test films of a prepared folder, redraws ``--resplits`` patient-wise splits of
the same sizes, fits the gate on each (the same training features; the threshold on the
redrawn validation films) and reports the share of the redrawn test films flagged: mean,
median, 10th and 90th percentiles, and the folder's own split among them. Features come from
the same fp32 pass as ``cxrkit gate``.

    .venv/bin/cxrkit demo --out /tmp/gate-demo --overwrite
    .venv/bin/python benchmarks/gate_resplit.py --demo /tmp/gate-demo --resplits 200
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.predictor import Predictor
from cxrkit.models.checkpoint import load_checkpoint
from cxrkit.models.gate import DEFAULT_FALSE_ALARM_RATE, FeatureGate


def test_share(train: np.ndarray, val: np.ndarray, test: np.ndarray, rate: float) -> float:
    """The share of ``test`` rows ``(N, D)`` flagged by a gate fitted on ``train`` and
    thresholded on ``val`` at ``rate``."""
    gate = FeatureGate.fit(train, val, false_alarm_rate=rate)
    return float(np.mean(gate.flags(gate.score(test))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="a `cxrkit demo` folder")
    parser.add_argument("--checkpoint", type=Path, help="instead of --demo: a checkpoint")
    parser.add_argument("--data", type=Path, help="with --checkpoint: its prepared folder")
    parser.add_argument("--resplits", type=int, default=200)
    parser.add_argument("--rate", type=float, default=DEFAULT_FALSE_ALARM_RATE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    a = parser.parse_args()
    warnings.filterwarnings("ignore")
    checkpoint = a.checkpoint or a.demo / "run" / "checkpoints" / "best.ckpt"
    manifest = load_manifest(a.data or a.demo / "prepared")
    predictor = Predictor(load_checkpoint(checkpoint), backend="torch", precision="fp32")
    train = predictor.embed_manifest(manifest, manifest.rows("train"))
    val_rows, test_rows = manifest.rows("val"), manifest.rows("test")
    val, test = (
        predictor.embed_manifest(manifest, val_rows),
        predictor.embed_manifest(manifest, test_rows),
    )
    own = test_share(train, val, test, a.rate)
    pool = np.concatenate([val, test])
    patients = np.concatenate([val_rows["patient_id"], test_rows["patient_id"]]).astype(str)
    unique = np.unique(patients)
    n_val_patients = val_rows["patient_id"].nunique()
    rng = np.random.default_rng(a.seed)
    shares = []
    for _ in range(a.resplits):
        chosen = rng.choice(unique, size=n_val_patients, replace=False)
        is_val = np.isin(patients, chosen)
        shares.append(test_share(train, pool[is_val], pool[~is_val], a.rate))
    s = np.array(shares)
    figures = {
        "false_alarm_rate": a.rate,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "own_split": own,
        "resplits": a.resplits,
        "mean": float(s.mean()),
        "median": float(np.median(s)),
        "p10": float(np.quantile(s, 0.1)),
        "p90": float(np.quantile(s, 0.9)),
        "share_above_rate": float(np.mean(s > a.rate)),
        "own_split_percentile": float(np.mean(s < own)),
    }
    print(
        f"{len(train)} training, {len(val)} validation, {len(test)} test films; "
        f"gate at {a.rate:.0%}\n"
        f"the folder's own split: {own:.1%} of test films flagged\n"
        f"{a.resplits} patient-wise re-draws of val/test: mean {s.mean():.1%}, median "
        f"{np.median(s):.1%}, p10 {figures['p10']:.1%}, p90 {figures['p90']:.1%}; above "
        f"{a.rate:.0%} in {figures['share_above_rate']:.0%} of draws; the own split is at the "
        f"{figures['own_split_percentile']:.0%} point"
    )
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
