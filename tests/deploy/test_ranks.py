"""Ranks a launcher started: ``torchrun`` and SLURM's ``srun`` (its environment, set by hand)
run ``cxrkit infer`` as 2 CPU ranks (gloo) and write the single-process CSV row for row, resume
after a kill, and refuse what cannot work with one line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.ranks import launched, shard_bounds, spawn_ranks
from cxrkit.deploy.records import record_path
from cxrkit.deploy.sharded import parts_folder
from cxrkit.errors import UserError


@pytest.fixture(scope="module")
def folder(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ranks") / "imgs"
    root.mkdir()
    for p in load_manifest(prepared).rows("test")["path"].iloc[:9]:
        shutil.copy(p, root / Path(p).name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.fixture(scope="module")
def reference(trained: Path, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process CSV."""
    out = tmp_path_factory.mktemp("ranks-ref") / "one.csv"
    assert _cli(_args(trained, folder, out)).returncode == 3  # the broken file: an error row
    return out


def _args(trained: Path, folder: Path, out: Path, *extra: str) -> list[str]:
    ckpt = trained / "checkpoints" / "best.ckpt"
    return ["infer", "--checkpoint", str(ckpt), "--source", str(folder), "--out", str(out),
            "--workers", "0", "--precision", "fp32", "--batch-size", "2", *extra]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    env.pop("WORLD_SIZE", None)
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cxrkit.cli", *args]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=600)


def _torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "cxrkit.cli", *args]  # fmt: skip
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _srun(args: list[str], ranks: int = 2, **env: str) -> list[subprocess.CompletedProcess[str]]:
    """``ranks`` processes with the environment srun gives its tasks on one node."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cxrkit.cli", *args],
            env=_env(
                SLURM_NTASKS="2",
                SLURM_PROCID=str(k),
                SLURM_LOCALID=str(k),
                SLURM_NODEID="0",
                SLURM_NNODES="1",
                SLURM_JOB_NAME="cxrkit-test",
                SLURM_NTASKS_PER_NODE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                **env,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(ranks)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _same_rows(out: Path, reference: Path) -> None:
    one, two = pd.read_csv(reference), pd.read_csv(out)
    n = len(list(Path(one["path"][0]).parent.glob("*.png")))
    assert list(two.columns) == list(one.columns) and len(two) == len(one) == n > 5
    text = [c for c in one.columns if not c.startswith("prob_")]
    pd.testing.assert_frame_equal(two[text], one[text])  # order, ids, status, calls
    probs = [c for c in one.columns if c.startswith("prob_")]
    np.testing.assert_allclose(two[probs].to_numpy(), one[probs].to_numpy(), atol=1e-6)
    assert not parts_folder(out).exists()
    assert json.loads(record_path(out).read_text())["processes"] == 2


def test_torchrun_ranks_write_the_single_process_csv_and_resume_a_kill(
    trained: Path, folder: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ranks.csv"
    run = _torchrun(_args(trained, folder, out))
    assert run.returncode != 0, run.stderr  # exit 3 on both ranks: torchrun reports failure
    assert run.stdout.count("image(s) predicted, 1 failed") == 1  # rank 0 alone prints
    assert "2 prediction ranks (torchrun)" in run.stdout
    _same_rows(out, reference)
    # As a kill of the ranks would leave it: part 0 with two rows and half a third, no OUT.
    rows = out.read_text().splitlines(keepends=True)
    parts = parts_folder(out)
    parts.mkdir()
    (parts / "part-0.csv").write_text("".join(rows[:3]) + rows[3][:10])
    shutil.copy(out.with_name(out.name + ".json"), parts / "part-0.csv.json")
    out.unlink()
    run = _torchrun(_args(trained, folder, out, "--resume"))
    assert "2 already done (resumed)" in run.stdout, run.stdout + run.stderr
    _same_rows(out, reference)


@pytest.mark.slow  # srun's ranks are also run by the eval test below
def test_srun_ranks_write_the_single_process_csv(
    trained: Path, folder: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "slurm.csv"
    zero, one = _srun(_args(trained, folder, out))
    assert zero.returncode == one.returncode == 3, zero.stderr + one.stderr
    assert "2 prediction ranks (slurm)" in zero.stdout and one.stdout == ""
    _same_rows(out, reference)


def test_an_error_on_rank_zero_ends_every_rank_with_one_line(
    trained: Path, folder: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exists.csv"
    shutil.copy(reference, out)
    zero, one = _srun(_args(trained, folder, out))
    assert zero.returncode == one.returncode == 2
    assert "exists; pass --resume to continue it or --overwrite" in zero.stderr
    assert one.stderr.strip() == "" and one.stdout == ""  # the reason is printed once


def test_a_lone_process_that_looks_launched_fails_in_seconds(
    trained: Path, folder: Path, tmp_path: Path
) -> None:
    """``SLURM_NTASKS=2`` in an sbatch script without srun: no rank 1 will ever come."""
    (zero,) = _srun(_args(trained, folder, tmp_path / "x.csv"), ranks=1,
                    CXRKIT_RENDEZVOUS_TIMEOUT="2")  # fmt: skip
    assert zero.returncode == 2
    assert "could not meet the other ranks" in zero.stderr and "srun" in zero.stderr
    assert len(zero.stderr.strip().splitlines()) == 1


def test_devices_under_a_launcher_is_refused(trained: Path, folder: Path, tmp_path: Path) -> None:
    (zero,) = _srun(_args(trained, folder, tmp_path / "x.csv", "--devices", "2"), ranks=1)
    assert zero.returncode == 2
    assert "--devices 2 under slurm, which started 2 ranks already" in zero.stderr


def test_launch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC"))]:
        monkeypatch.delenv(key)
    assert launched() is None
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: nothing to coordinate
    assert launched() is None
    for key, value in {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
                       "SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "job",
                       "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_NODELIST": "gpu[3-4]",
                       "SLURM_JOB_ID": "123456"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    launch = launched()
    assert launch is not None
    assert (launch.launcher, launch.rank, launch.world) == ("slurm", 5, 8)
    assert (launch.local_rank, launch.local_world, launch.address) == (1, 4, "gpu3")
    assert launch.port == 15000 + 3456  # Lightning's port from the job id
    assert launch.device("cpu")[0] == "cpu" and launch.device("cpu")[1] >= 1
    # srun -n 8 (no --ntasks-per-node), in a job named "interactive", step 2: still ranks
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    monkeypatch.setenv("SLURM_STEP_ID", "2")
    launch = launched()
    assert launch is not None and (launch.rank, launch.world, launch.local_world) == (5, 8, 4)
    assert launch.port == 15000 + 3456 + 2  # two steps of one job meet on two ports
    monkeypatch.delenv("SLURM_PROCID")  # an salloc shell: the allocation, not a task
    assert launched() is None


@pytest.mark.parametrize("n,ranks", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_are_contiguous_and_cover_every_item(n: int, ranks: int) -> None:
    bounds = shard_bounds(n, ranks)
    assert len(bounds) == ranks and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [len(s) for s in np.array_split(np.arange(n), ranks)]


@dataclass(frozen=True)
class _Job:
    rank: int
    device: str = "cpu"
    threads: int = 1
    marker: str = ""  # a file the working ranks touch
    how: str = ""  # how rank 1 fails: "user" (a UserError) or "crash"


def _fail_one_sleep_the_rest(job: _Job) -> None:
    """Rank 1 fails at once (a UserError, or a plain crash); the others work for a minute."""
    if job.rank == 1:
        if job.how == "user":
            raise UserError("rank 1 found a bad file")
        os._exit(3)
    Path(job.marker).touch()
    time.sleep(60)


@pytest.mark.parametrize("how", ["user", "crash"])
def test_a_failing_process_stops_the_others_at_once(tmp_path: Path, how: str) -> None:
    started = time.monotonic()
    jobs = [_Job(rank=k, marker=str(tmp_path / "working"), how=how) for k in range(2)]
    with pytest.raises(UserError) as err:
        spawn_ranks(_fail_one_sleep_the_rest, jobs, tmp_path / "errors", remedy="rerun it")
    assert time.monotonic() - started < 45  # not the sleeping ranks' minute
    if how == "user":
        assert str(err.value) == "rank 1 found a bad file (1 other process(es) stopped)"
    else:
        assert str(err.value) == (
            "prediction process 1 (cpu) ended with exit code 3 (1 other process(es) "
            "stopped); rerun it"
        )
    assert not list((tmp_path / "errors").glob("*.error"))


def _eval(trained: Path, prepared: Path, out: Path, *extra: str) -> list[str]:
    ckpt = trained / "checkpoints" / "best.ckpt"
    return ["eval", "--checkpoint", str(ckpt), "--data", str(prepared), "--out", str(out),
            "--precision", "fp32", "--bootstrap", "20", "--no-report", "--no-write-card",
            "--audit", "--audit-folds", "2", *extra]  # fmt: skip


def _same_metrics(out: Path, reference: Path) -> None:
    """The same predictions and the same metrics, audit included, as one process."""
    one = pd.read_csv(reference / "predictions_test.csv")
    two = pd.read_csv(out / "predictions_test.csv")
    assert list(two.columns) == list(one.columns) and len(two) == len(one) > 5
    pd.testing.assert_series_equal(two["image_id"], one["image_id"])
    np.testing.assert_allclose(two.iloc[:, 2:].to_numpy(), one.iloc[:, 2:].to_numpy(), atol=1e-6)
    m1, m2 = (json.loads((f / "metrics.json").read_text()) for f in (reference, out))
    assert m2["runtime"]["processes"] == 2 and m1["runtime"]["processes"] == 1
    for key in ("macro", "thresholds", "calibration"):
        assert json.dumps(m2[key], sort_keys=True) == json.dumps(m1[key], sort_keys=True), key
    # The audit's probe ran on the embeddings gathered from both processes.
    assert m2["audit"]["probe"] == m1["audit"]["probe"] and m1["audit"]["probe"]


def test_eval_in_two_processes_gives_the_metrics_of_one(
    trained: Path, prepared: Path, tmp_path: Path
) -> None:
    assert _cli(_eval(trained, prepared, tmp_path / "one")).returncode == 0
    run = _cli(_eval(trained, prepared, tmp_path / "two", "--devices", "2"))
    assert run.returncode == 0, run.stderr
    _same_metrics(tmp_path / "two", tmp_path / "one")
    zero, one = _srun(_eval(trained, prepared, tmp_path / "slurm"))
    assert zero.returncode == one.returncode == 0, zero.stderr + one.stderr
    assert "images;" in zero.stdout and one.stdout == ""  # rank 0 alone evaluates and prints
    _same_metrics(tmp_path / "slurm", tmp_path / "one")
