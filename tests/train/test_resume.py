"""Nothing lost: a training process killed with SIGKILL mid-epoch resumes to the same result,
checkpoints are replaced atomically, and resuming refuses what it cannot do."""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import pytest
import torch
import yaml
from conftest import one_torch_thread

from cxrkit.cli.parser import main
from cxrkit.errors import UserError
from cxrkit.files import remove_stale_temps
from cxrkit.models.checkpoint import load_checkpoint
from cxrkit.train.callbacks import AtomicCheckpointIO, BestCheckpoint
from cxrkit.train.config import config_to_dict, load_config, resolve_recipe
from cxrkit.train.fit import fit, resume
from cxrkit.train.run_folder import read_json

# A small, fast network (4.5 MB checkpoints) and 41 batches per epoch, last.ckpt every 2 steps.
KILL_OVERRIDES = [
    "model.backbone=test_resnet",
    "model.pretrained=false",
    "data.image_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.patience=0",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.log_every_n_steps=5",
    "logger=none",
]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as one_torch_thread() here


def _epochs(run: Path) -> list[dict[str, str]]:
    with (run / "epochs.csv").open(newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def uninterrupted(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: KILL_OVERRIDES trained without interruption."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with one_torch_thread():
        fit(load_config(resolve_recipe("demo"), KILL_OVERRIDES), prepared, out, progress=False)
    return out


def test_sigkill_mid_epoch_then_resume_ends_like_the_uninterrupted_run(
    prepared: Path, uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrkit.cli", "train", "--config", "demo"]
        + ["--data", str(prepared), "--out", str(run), "--set", *KILL_OVERRIDES],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ONE_THREAD,
    )
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:  # ended before its first checkpoint: say how, not "no process"
        pytest.fail(f"train exited {proc.returncode} early: {proc.communicate()[1][-2000:]!r}")
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]

    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["callbacks"]["TrainingState"]["mid_epoch"], "the kill landed between epochs"
    assert read_json(run / "run.json")["status"] == "running"
    assert not (run / "metrics.json").exists()
    stale = run / "checkpoints" / ".last.ckpt.killed.tmp"  # as a kill during a write leaves
    stale.write_bytes(b"partial")

    capsys.readouterr()
    with one_torch_thread():
        assert main(["train", "--resume", str(run)]) == 0  # `cxrkit train --resume RUN`
    said = capsys.readouterr().out
    assert f"resumed {run} from epoch {ckpt['epoch']}, step {ckpt['global_step']}" in said

    metrics = read_json(run / "metrics.json")
    assert metrics["epochs"] == 2 and not metrics["stopped_early"]
    rows = _epochs(run)
    assert [r["epoch"] for r in rows] == ["0", "1"]  # each epoch once
    assert rows == _epochs(uninterrupted)  # same batches, same RNG draws: same numbers
    assert metrics == {**read_json(uninterrupted / "metrics.json"), "seconds": metrics["seconds"]}
    best = load_checkpoint(run / "checkpoints" / "best.ckpt")
    assert best.card["val_metrics"]["epoch"] == metrics["best_epoch"]
    assert best.card["val_metrics"]["macro_auroc"] == pytest.approx(metrics["best_val_macro_auroc"])
    assert not stale.exists()
    info = read_json(run / "run.json")
    assert info["status"] == "finished" and len(info["sessions"]) == 2
    assert info["sessions"][1]["resumed_from"] == {
        "epoch": ckpt["epoch"],
        "step": ckpt["global_step"],
    }

    # Resuming a finished run does nothing and says so.
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished (2 epoch(s)" in capsys.readouterr().out
    assert resume(run).already_finished


def _half_writer(obj: object, fh: BinaryIO) -> None:
    """A ``torch.save`` that dies half way through the file: the disk fills up."""
    fh.write(b"half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_write_killed_or_failing_midway_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)
    old = path.read_bytes()

    def killed_half_way(obj: object, fh: BinaryIO) -> None:
        fh.write(b"half a checkpoint")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:  # the child dies writing a new checkpoint over the old one
        torch.save = killed_half_way
        AtomicCheckpointIO().save_checkpoint({"new": 1}, path)
        os._exit(0)  # not reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert path.read_bytes() == old
    assert remove_stale_temps(path.parent)  # the killed write's temporary file
    assert list(path.parent.iterdir()) == [path]

    monkeypatch.setattr(torch, "save", _half_writer)
    with pytest.raises(UserError, match="no space left .* previous last.ckpt is intact"):
        AtomicCheckpointIO().save_checkpoint({"new": 1}, path)
    monkeypatch.undo()
    assert path.read_bytes() == old and list(path.parent.iterdir()) == [path]
    assert torch.load(path, weights_only=True)["step"] == 1


def test_best_checkpoint_follows_a_moved_run_folder(tmp_path: Path) -> None:
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    best = BestCheckpoint(dirpath=new, filename="best", monitor="m", mode="max")
    best.load_state_dict(
        {
            "dirpath": str(old),
            "best_model_score": torch.tensor(0.8),
            "best_model_path": str(old / "best.ckpt"),
            "kth_best_model_path": str(old / "best.ckpt"),
            "kth_value": torch.tensor(0.8),
            "best_k_models": {str(old / "best.ckpt"): torch.tensor(0.8)},
            "last_model_path": "",
        }
    )
    assert best.best_model_score == pytest.approx(0.8)
    assert best.best_model_path == str(new / "best.ckpt")
    assert list(best.best_k_models) == [str(new / "best.ckpt")]


def test_resume_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a cxrkit run folder"):
        resume(tmp_path / "nothing")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump(config_to_dict(load_config(None, KILL_OVERRIDES)))
    )
    (run / "run.json").write_text('{"status": "running"}')
    with pytest.raises(UserError, match=r"cannot change loss\.name, optim\.lr \(only"):
        resume(run, ["optim.lr=0.1", "loss.name=focal", "trainer.max_epochs=5"])
    with pytest.raises(UserError, match="no checkpoints/last.ckpt to resume from"):
        resume(run, ["trainer.max_epochs=5"])
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--config", "demo"]) == 2  # --data and --out missing


class _Payload:
    """Stands for code a tampered checkpoint would run when unpickled."""


def test_resume_reads_checkpoints_weights_only(tmp_path: Path) -> None:
    import pickle

    plain, code = tmp_path / "plain.ckpt", tmp_path / "code.ckpt"
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, plain)
    torch.save({"epoch": 3, "payload": _Payload()}, code)
    io = AtomicCheckpointIO()
    assert io.load_checkpoint(plain)["epoch"] == 3
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        io.load_checkpoint(code, weights_only=False)  # whatever the caller asks
