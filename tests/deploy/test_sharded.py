"""``infer --devices N``: N processes (spawned) on the CPU write the CSV a single process
writes, in the source's order, resumable after a kill; impossible device counts are refused."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrkit.cli.parser import main
from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.ranks import rank_devices
from cxrkit.deploy.sharded import parts_folder
from cxrkit.errors import UserError


@pytest.fixture(scope="module")
def folder(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test images in two sub-folders (ids are relative paths), and one unreadable file."""
    root = tmp_path_factory.mktemp("sharded") / "imgs"
    for k, p in enumerate(load_manifest(prepared).rows("test")["path"].iloc[:10]):
        sub = root / ("a" if k % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, sub / Path(p).name)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


def _infer(ckpt: Path, folder: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--checkpoint", str(ckpt), "--source", str(folder), "--out", str(out),
                 "--workers", "0", "--precision", "fp32", "--batch-size", "3", *extra])  # fmt: skip


def test_two_processes_write_the_single_process_csv(
    trained: Path, folder: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    assert _infer(ckpt, folder, tmp_path / "one.csv") == 3  # the broken file: an error row
    assert _infer(ckpt, folder, tmp_path / "two.csv", "--devices", "2") == 3
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    n = len(list(folder.rglob("*.png")))
    assert n > 6 and list(two.columns) == list(one.columns) and len(two) == len(one) == n
    text = [c for c in one.columns if not c.startswith("prob_")]
    pd.testing.assert_frame_equal(two[text], one[text])  # order, ids, status, calls
    probs = [c for c in one.columns if c.startswith("prob_")]
    np.testing.assert_allclose(two[probs].to_numpy(), one[probs].to_numpy(), atol=1e-6)
    assert not parts_folder(tmp_path / "two.csv").exists()  # merged, parts removed
    # Resuming a finished run predicts nothing again and changes nothing.
    before = (tmp_path / "two.csv").read_bytes()
    assert _infer(ckpt, folder, tmp_path / "two.csv", "--devices", "2", "--resume") == 3
    assert (tmp_path / "two.csv").read_bytes() == before


def test_a_killed_run_resumes_from_its_parts(
    trained: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    out = tmp_path / "p.csv"
    assert _infer(ckpt, folder, out, "--devices", "2") == 3
    full = out.read_text()
    # As a kill would leave it: part 0 with two rows and half a third, part 1 empty, no OUT.
    rows = full.splitlines(keepends=True)
    parts = parts_folder(out)
    parts.mkdir()
    (parts / "part-0.csv").write_text("".join(rows[:3]) + rows[3][:10])
    shutil.copy(out.with_name(out.name + ".json"), parts / "part-0.csv.json")
    out.unlink()
    assert _infer(ckpt, folder, out, "--devices", "2") == 2  # not continued unless asked
    assert "parts of an unfinished run; pass --resume" in capsys.readouterr().err
    assert _infer(ckpt, folder, out, "--devices", "2", "--resume") == 3
    resumed, reference = pd.read_csv(out), pd.read_csv(io.StringIO(full))
    assert resumed["path"].tolist() == reference["path"].tolist()
    probs = [c for c in reference.columns if c.startswith("prob_")]
    np.testing.assert_allclose(resumed[probs].to_numpy(), reference[probs].to_numpy(), atol=1e-6)


def test_impossible_device_counts_are_refused() -> None:
    with pytest.raises(UserError, match="CPU core"):
        rank_devices("cpu", 10_000)
    with pytest.raises(UserError, match="at least 1"):
        rank_devices("cpu", 0)
    with pytest.raises(UserError, match="not on mps"):
        rank_devices("mps", 2)
    if not __import__("torch").cuda.is_available():
        with pytest.raises(UserError, match="CUDA GPUs, 0 visible"):
            rank_devices("cuda", 2)
