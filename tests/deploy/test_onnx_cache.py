"""`infer --checkpoint best.ckpt` on the CPU at fp32: an ONNX copy exported once beside the
checkpoint, reused, replaced when the checkpoint changes, in the user cache when the folder
cannot be written, and never made for `--backend torch`.

Every test works on its own copy of the session's trained checkpoint (nothing is written beside
the fixture's file). `--precision fp32`: the case where `--backend auto` runs onnxruntime, also
on a CPU with native bf16."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrkit.cli.parser import main
from cxrkit.deploy import onnx_export
from cxrkit.deploy.backends import OnnxBackend
from cxrkit.deploy.onnx_cache import copy_folder, copy_name
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.models.checkpoint import file_sha256, update_card

LINE = "exporting an ONNX copy of best.ckpt once for faster CPU inference: "


@pytest.fixture()
def ckpt(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained checkpoint, in a run-like ``checkpoints`` folder."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    return Path(shutil.copy(trained / "checkpoints" / "best.ckpt", folder / "best.ckpt"))


@pytest.fixture()
def source(phantom: Path, tmp_path: Path) -> Path:
    """A folder of 5 phantom PNGs."""
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((phantom / "images").glob("*.png"))[:5]:
        shutil.copy(p, folder / p.name)
    return folder


def _infer(ckpt: Path, source: Path, out: Path, *extra: str) -> pd.DataFrame:
    """Run `infer` at fp32 on the CPU; the CSV it wrote."""
    argv = ["infer", "--checkpoint", str(ckpt), "--source", str(source), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--precision", "fp32", *extra]) == 0
    return pd.read_csv(out)


def _probs(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()


def test_first_infer_exports_then_reuses_and_matches_torch(
    ckpt: Path, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _infer(ckpt, source, tmp_path / "a.csv")
    copy = copy_folder(ckpt) / copy_name(file_sha256(ckpt))
    printed = capsys.readouterr().out.splitlines()
    assert f"{LINE}{copy}; reused next time" in printed
    assert sum(line.startswith("exporting") for line in printed) == 1
    assert "5 file(s); backend onnx; decoding in background threads" in printed  # no tip
    assert copy.is_file() and ckpt.parent / ".best.ckpt.onnx" == copy.parent
    assert len(copy.stem) == 16 and sorted(os.listdir(copy.parent)) == [copy.name]
    assert OnnxBackend(copy).has_features  # the input gate's second output is there
    record = json.loads((tmp_path / "a.csv.json").read_text())
    assert (record["backend"], record["precision"], record["device"]) == ("onnx", "fp32", "cpu")

    mtime = copy.stat().st_mtime_ns
    second = _infer(ckpt, source, tmp_path / "b.csv")
    printed = capsys.readouterr().out
    assert "exporting" not in printed and "backend onnx" in printed
    assert copy.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(_probs(second), _probs(first))

    torch_run = _infer(ckpt, source, tmp_path / "c.csv", "--backend", "torch")
    assert json.loads((tmp_path / "c.csv.json").read_text())["backend"] == "torch"
    assert len(first) == 5 and (first["status"] == "ok").all()
    np.testing.assert_allclose(_probs(first), _probs(torch_run), rtol=0, atol=1e-4)


def test_a_changed_checkpoint_gets_a_new_copy_and_the_stale_one_goes(
    ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = Predictor.from_checkpoint(ckpt, precision="fp32", onnx_copy=True)
    old = copy_folder(ckpt) / copy_name(file_sha256(ckpt))
    assert first.backend_name == "onnx" and old.is_file()
    update_card(ckpt, note="edited")  # same weights, other bytes: another sha256
    second = Predictor.from_checkpoint(ckpt, precision="fp32", onnx_copy=True)
    new = copy_folder(ckpt) / copy_name(file_sha256(ckpt))
    assert second.backend_name == "onnx" and new != old
    assert sorted(os.listdir(new.parent)) == [new.name]  # the stale copy was removed
    assert capsys.readouterr().out.count(LINE) == 2


def test_a_read_only_checkpoint_folder_uses_the_user_cache(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CXRKIT_CACHE", str(cache))
    copy_folder(ckpt).write_text("")  # root ignores permission bits: the copy's folder is taken
    folder = ckpt.parent
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        predictor = Predictor.from_checkpoint(ckpt, precision="fp32", onnx_copy=True)
        again = Predictor.from_checkpoint(ckpt, precision="fp32", onnx_copy=True)
    finally:
        folder.chmod(stat.S_IRWXU)
    copy = cache / "onnx" / copy_name(file_sha256(ckpt))
    assert predictor.backend_name == again.backend_name == "onnx"
    assert isinstance(again.backend, OnnxBackend) and again.backend.path == copy
    assert sorted(p.name for p in folder.iterdir()) == [".best.ckpt.onnx", "best.ckpt"]


def test_backend_torch_and_bf16_never_export(ckpt: Path, source: Path, tmp_path: Path) -> None:
    _infer(ckpt, source, tmp_path / "t.csv", "--backend", "torch")
    bf16 = Predictor.from_checkpoint(ckpt, precision="bf16", onnx_copy=True)
    plain = Predictor.from_checkpoint(ckpt, precision="fp32")  # the Python default: no copy
    assert bf16.backend_name == plain.backend_name == "torch"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.ckpt"]


def test_a_failed_export_warns_once_and_runs_torch(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object, **__: object) -> None:
        raise UserError("ONNX export failed (RuntimeError: no); export with --no-onnx")

    monkeypatch.setattr(onnx_export, "export_onnx", fail)
    with pytest.warns(UserWarning, match=r"no ONNX copy of best.ckpt .*\(UserError: ONNX export"):
        predictor = Predictor.from_checkpoint(ckpt, precision="fp32", onnx_copy=True)
    assert predictor.backend_name == "torch"
    assert list(copy_folder(ckpt).iterdir()) == []  # nothing half-written left
