"""How much the input gate's in-distribution flag rate depends on which patients the
validation split happened to draw, under each threshold rule.

Two rules (:mod:`cxrkit.models.gate_threshold`): ``pooled``, what ``cxrkit gate`` sets (the
PAC threshold on the held-out training scores, 5 folds by patient, together with the
validation scores: at most the rate with 90% confidence over the draw), and ``validation
only``, what cards before it had (the conformal quantile of the validation scores: the rate
on average over the draw). This pools the validation and test films of a prepared folder,
redraws ``--resplits`` patient-wise splits of the same sizes, sets both thresholds on each
(the same training features and held-out training scores; the validation part redrawn) and
reports the share of the redrawn test films flagged: mean, median, 10th and 90th
percentiles, the share of draws above the rate, and the folder's own split among them.
Features come from the same fp32 pass as ``cxrkit gate``.

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
from cxrkit.models.gate import DEFAULT_FALSE_ALARM_RATE, RULE_PAC, FeatureGate
from cxrkit.models.gate_threshold import DEFAULT_CONFIDENCE

RULES = ("pooled", "validation only")


def test_shares(
    gate: FeatureGate, held_out: np.ndarray, val: np.ndarray, test: np.ndarray, rate: float
) -> dict[str, float]:
    """Per rule: the share of ``test`` rows ``(N, D)`` that ``gate`` flags with its threshold
    set on ``val`` rows ``(M, D)`` (and, pooled, the training rows' ``held_out`` scores);
    ``"fell back"``: 1.0 when the pooled rule fell back to validation alone."""
    val_scores, test_scores = gate.score(val), gate.score(test)
    shares = {}
    for rule, extra in zip(RULES, (held_out, None), strict=True):
        gate.set_threshold(val_scores, extra, rate, DEFAULT_CONFIDENCE)
        shares[rule] = float(np.mean(gate.flags(test_scores)))
        if extra is not None:  # did `cxrkit gate` keep the pooled rule on this draw?
            shares["fell back"] = float(gate.threshold_rule != RULE_PAC)
    return shares


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
    train_rows = manifest.rows("train")
    train = predictor.embed_manifest(manifest, train_rows)
    gate = FeatureGate.estimate(train)
    held_out = FeatureGate.held_out_scores(train, train_rows["patient_id"].astype(str).to_numpy())
    assert held_out is not None, "too few training patients for held-out scores"
    val_rows, test_rows = manifest.rows("val"), manifest.rows("test")
    val, test = (
        predictor.embed_manifest(manifest, val_rows),
        predictor.embed_manifest(manifest, test_rows),
    )
    own = test_shares(gate, held_out, val, test, a.rate)
    pool = np.concatenate([val, test])
    patients = np.concatenate([val_rows["patient_id"], test_rows["patient_id"]]).astype(str)
    unique = np.unique(patients)
    n_val_patients = val_rows["patient_id"].nunique()
    rng = np.random.default_rng(a.seed)
    draws: dict[str, list[float]] = {rule: [] for rule in (*RULES, "fell back")}
    for _ in range(a.resplits):
        chosen = rng.choice(unique, size=n_val_patients, replace=False)
        is_val = np.isin(patients, chosen)
        for rule, share in test_shares(gate, held_out, pool[is_val], pool[~is_val], a.rate).items():
            draws[rule].append(share)
    figures: dict[str, object] = {
        "false_alarm_rate": a.rate,
        "confidence": DEFAULT_CONFIDENCE,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "resplits": a.resplits,
        "pooled_fell_back": {"own_split": bool(own["fell back"]), "draws": sum(draws["fell back"])},
    }
    print(
        f"{len(train)} training, {len(val)} validation, {len(test)} test films; gate at "
        f"{a.rate:.0%}; {a.resplits} patient-wise re-draws of val/test; the pooled rule fell "
        f"back to validation alone on {figures['pooled_fell_back']['draws']:.0f} draws"
        f"{' and on the own split' if own['fell back'] else ''}"
    )
    for rule in RULES:
        s = np.array(draws[rule])
        figures[rule] = {
            "own_split": own[rule],
            "mean": float(s.mean()),
            "median": float(np.median(s)),
            "p10": float(np.quantile(s, 0.1)),
            "p90": float(np.quantile(s, 0.9)),
            "share_above_rate": float(np.mean(s > a.rate)),
            "own_split_percentile": float(np.mean(s < own[rule])),
        }
        f = figures[rule]
        print(
            f"{rule:>16}: own split {own[rule]:.1%} of test films flagged; re-draws mean "
            f"{f['mean']:.1%}, median {f['median']:.1%}, p10 {f['p10']:.1%}, p90 {f['p90']:.1%}; "
            f"above {a.rate:.0%} in {f['share_above_rate']:.0%} of draws"
        )
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
