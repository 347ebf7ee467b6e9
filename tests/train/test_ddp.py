"""DDP: a 2-process run (CPU, gloo) logs the validation macro AUROC of the *whole* validation
set, equal to a single-process run's on the same data and weights.

The classic bug is each rank scoring its own shard, or the distributed sampler padding the
validation set to a multiple of the world size with duplicated images. Here the validation
split has an odd number of images and an odd number (> 1) of batches, so Lightning's padded
``DistributedSampler(Wrapper)`` would score a duplicated batch and the AUROC would differ.

Both runs train one step with ``optim.lr=0`` on a LayerNorm network (ConvNeXt, no batch-norm
running statistics), so their weights are exactly the initial ones, seeded alike: the only
thing that can differ is how validation is sharded and gathered. Each run is a subprocess
``python -m cxrkit.cli train``, as a user would launch it; Lightning's DDP launcher starts the
second process.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

VAL_BATCH = 10
COMMON = [
    "model.backbone=convnext_atto",  # LayerNorm: eval outputs do not depend on training batches
    "model.pretrained=false",
    "data.image_size=32",
    f"data.batch_size={VAL_BATCH}",
    "data.num_workers=0",
    "data.findings=null",
    "optim.lr=0",  # the one training step leaves the weights as initialised
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=0.25",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.patience=0",
]
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def odd_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom prepared with 30% validation patients: 29 validation images."""
    from cxrkit.data.prepare import SplitPolicy, prepare
    from cxrkit.data.synth.dataset import generate_dataset

    root = tmp_path_factory.mktemp("ddp")
    generate_dataset(root / "nih", n_patients=60, size=64, seed=3, progress=False)
    prepare("nih", root / "nih", root / "prep", size=64, split=SplitPolicy(0.3), progress=False)
    return root / "prep"


def _train(data: Path, out: Path, *overrides: str) -> tuple[float, dict, float]:
    """Run ``cxrkit train`` in a fresh process; return the logged validation macro AUROC, the
    checkpoint card's ``val_metrics`` and the logged validation loss."""
    env = {
        k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM")
    }
    env["OMP_NUM_THREADS"] = "1"  # two processes on a small machine: no thread oversubscription
    cmd = [sys.executable, "-m", "cxrkit.cli", "train", "--config", "demo", "--data", str(data)]
    cmd += ["--out", str(out), "--set", *COMMON, *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = pd.read_csv(out / "logs" / "metrics.csv")  # what Lightning logged
    logged = metrics["val_macro_auroc"].dropna()
    assert len(logged) == 1, metrics
    card = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["model_card"]
    return float(logged.iloc[0]), card["val_metrics"], float(metrics["val_loss"].dropna().iloc[0])


def test_two_process_ddp_validation_auroc_equals_single_process(
    odd_val: Path, tmp_path: Path
) -> None:
    from cxrkit.data.manifest import load_manifest

    n_val = len(load_manifest(odd_val).rows("val"))
    n_batches = math.ceil(n_val / VAL_BATCH)
    assert n_val % 2 == 1 and n_batches % 2 == 1 and n_batches > 1, "padding must be needed"

    one_auroc, one_card, one_loss = _train(odd_val, tmp_path / "one", "trainer.devices=1")
    ddp_auroc, ddp_card, ddp_loss = _train(
        odd_val, tmp_path / "ddp", "trainer.devices=2", "trainer.strategy=ddp"
    )

    assert one_card["n_images"] == ddp_card["n_images"] == n_val  # each image exactly once
    assert sum(v is not None for v in one_card["auroc"].values()) >= 2, "AUROC defined somewhere"
    assert ddp_auroc == pytest.approx(one_auroc, abs=1e-6)
    assert ddp_card["macro_auroc"] == pytest.approx(one_card["macro_auroc"], abs=1e-6)
    for finding, value in one_card["auroc"].items():
        other = ddp_card["auroc"][finding]
        assert (value is None and other is None) or np.isclose(value, other, rtol=0, atol=1e-6)
    assert ddp_loss == pytest.approx(one_loss, rel=1e-5)
    # Only rank 0 wrote the run folder.
    assert (tmp_path / "ddp" / "run.json").is_file() and (
        tmp_path / "ddp" / "config.yaml"
    ).is_file()
