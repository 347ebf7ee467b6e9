"""Reproducible and tracked: what a run folder holds, same seed -> same numbers, and the
clear errors before training (disk space, unwritable folder, logger)."""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml
from conftest import one_torch_thread

from cxrkit.data.manifest import load_manifest
from cxrkit.errors import UserError
from cxrkit.models.checkpoint import load_checkpoint
from cxrkit.train.config import config_to_dict, load_config
from cxrkit.train.fit import fit
from cxrkit.train.run_folder import read_json

FAST = [
    "model.backbone=test_resnet",
    "model.pretrained=false",
    "data.image_size=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.patience=0",
    "trainer.log_every_n_steps=1",
    "logger=none",
]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "epochs.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_folder_records_config_environment_splits_and_metrics(
    trained: Path, prepared: Path
) -> None:
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["model"]["backbone"] == "resnet10t" and config["logger"] == "tensorboard"
    assert config_to_dict(load_config(trained / "config.yaml")) == config  # loads back as is

    info = read_json(trained / "run.json")
    assert info["status"] == "finished" and info["epochs"] == 2
    env = info["environment"]
    assert env["python"] and all(
        env["packages"][p] for p in ("cxrkit", "torch", "timm", "lightning", "numpy")
    )
    git = env["git"]  # this checkout is a git repository, unless the tests run from an sdist
    assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and "dirty" in git)
    header = load_manifest(prepared).header
    (dataset,) = info["data"]["datasets"]
    assert dataset["patients_sha256"] == header["split"]["patients_sha256"]
    assert info["sessions"][0]["resumed_from"] is None and info["sessions"][0]["seconds"] > 0

    rows = _rows(trained)
    findings = config["data"]["findings"]
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert set(rows[0]) >= {"train_loss", "val_loss", "val_macro_auroc", "lr", "seconds"}
    assert set(rows[0]) >= {f"val_auroc_{f}" for f in findings}

    metrics = read_json(trained / "metrics.json")
    scores = [float(r["val_macro_auroc"]) for r in rows]
    assert metrics["epochs"] == 2 and metrics["best_epoch"] == scores.index(max(scores))
    assert metrics["best_val_macro_auroc"] == max(scores) == info["best_val_macro_auroc"]
    assert set(metrics["best_val_auroc"]) == set(findings)
    card = load_checkpoint(trained / "checkpoints" / "best.ckpt").card
    assert card["val_metrics"]["epoch"] == metrics["best_epoch"]
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))


def test_same_seed_on_cpu_gives_identical_runs(prepared: Path, tmp_path: Path) -> None:
    config = [*FAST, "trainer.deterministic=true"]
    try:
        for name in ("a", "b"):
            with one_torch_thread():
                fit(load_config(None, config), prepared, tmp_path / name, progress=False)
    finally:
        torch.use_deterministic_algorithms(False)  # Lightning set it for the whole process
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    for row in (*a, *b):
        del row["seconds"]
    assert a == b and a[0]["val_macro_auroc"]
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])


def test_too_little_disk_space_fails_before_training(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"space for run folder .*MiB \(\d+ bytes\), 0 MiB \(4096"):
        fit(load_config(None, FAST), prepared, out, progress=False)
    assert not (out / "checkpoints").exists() and not (out / "epochs.csv").exists()


def test_unwritable_run_folder_is_a_clear_error(prepared: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write to run folder"):
        fit(load_config(None, FAST), prepared, blocker / "run", progress=False)


def test_logger_choice_is_checked_before_anything_is_written(
    prepared: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="unknown logger 'tensorbord'; did you mean 'tensorboard'"):
        fit(load_config(None, [*FAST, "logger=tensorbord"]), prepared, tmp_path / "r1")
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(UserError, match="pip install mlflow"):
            fit(load_config(None, [*FAST, "logger=mlflow"]), prepared, tmp_path / "r2")
    assert list(tmp_path.iterdir()) == []


def test_mlflow_logger_records_the_run(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sqlalchemy")
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient  # noqa: N806
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    fit(load_config(None, [*FAST, "logger=mlflow"]), prepared, run, progress=False)
    info = read_json(run / "run.json")["mlflow"]
    assert info["tracking_uri"] == f"sqlite:///{(run / 'mlflow.db').resolve()}"
    client = MlflowClient(info["tracking_uri"])
    logged = client.get_run(info["run_id"]).data
    assert logged.params["trainer/max_epochs"] == "1" and "val_macro_auroc" in logged.metrics
