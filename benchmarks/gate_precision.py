"""Validation and test flag rates of a demo model's input gate with the features computed at
fp32 (what the gate was fitted on) and at bf16 (what ``--precision auto`` runs on CPUs with
native bf16 and on GPUs).

    .venv/bin/cxrkit demo --out /tmp/gate-demo
    .venv/bin/python benchmarks/gate_precision.py /tmp/gate-demo
"""

from __future__ import annotations

import sys

from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.predictor import Predictor
from cxrkit.models.gate import FeatureGate


def main() -> None:
    demo = sys.argv[1] if len(sys.argv) > 1 else "/tmp/gate-demo"  # a `cxrkit demo --out`
    ckpt = f"{demo}/run/checkpoints/best.ckpt"
    manifest = load_manifest(f"{demo}/prepared")
    for precision in ("fp32", "bf16"):
        predictor = Predictor.from_checkpoint(ckpt, precision=precision, backend="torch")
        gate = FeatureGate.from_dict(predictor.card["gate"])
        for split in ("val", "test"):
            features = predictor.embed_manifest(manifest, manifest.rows(split))
            flagged = gate.flags(gate.score(features))
            print(
                f"{precision} {split}: {flagged.mean():.1%} of {len(features)} films flagged "
                f"(threshold {gate.threshold:.2f})"
            )


if __name__ == "__main__":
    main()
