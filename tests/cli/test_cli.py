"""The command line end to end on a tiny phantom, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_OVERRIDES

from cxrkit.cli.parser import main


def _cli(command: str, *extra: str) -> int:
    """Run ``cxrkit <command>`` (split on spaces) plus ``extra`` arguments in-process."""
    return main([*command.split(), *extra])


def test_full_flow_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ph, prep, run, ev = (str(tmp_path / n) for n in ("ph", "prep", "run", "eval"))
    assert _cli(f"synth --out {ph} --n-patients 40 --size 64 --workers 1") == 0
    assert "wrote" in capsys.readouterr().out
    assert _cli(f"prepare nih --root {ph} --out {prep} --size 64 --workers 2") == 0
    assert "prepared" in capsys.readouterr().out
    train = f"train --config demo --data {prep} --out {run} --set"
    assert _cli(train, *TINY_OVERRIDES, "data.findings=null") == 0
    ckpt = Path(run) / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()
    assert _cli(f"eval --checkpoint {ckpt} --data {prep} --out {ev} --bootstrap 50") == 0
    out = capsys.readouterr().out
    assert "macro" in out and "Sen@Spec(0.8)" in out
    metrics = json.loads((Path(ev) / "metrics.json").read_text())
    assert metrics["n_images"] == len(
        pd.read_csv(Path(prep) / "manifest.csv").query("split == 'test'")
    )
    preds_csv = tmp_path / "preds.csv"
    assert _cli(f"infer --checkpoint {ckpt} --source {ph}/images --out {preds_csv}") == 0
    preds = pd.read_csv(preds_csv)
    assert len(preds) == len(list((Path(ph) / "images").glob("*.png")))
    assert (preds["status"] == "ok").all()
    image = sorted((Path(ph) / "images").glob("*.png"))[0]
    assert _cli(f"cam --checkpoint {ckpt} --image {image} --out {tmp_path / 'cam'}") == 0
    assert list((tmp_path / "cam").glob("*.png"))
    # A run folder is never overwritten silently.
    assert _cli(train, *TINY_OVERRIDES) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrkit.cli",
            "prepare",
            "nih",
            "--root",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "prep"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and str(tmp_path / "nope") in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [
                "train",
                "--config",
                "demo",
                "--data",
                "{prep}",
                "--out",
                "{tmp}/r",
                "--set",
                "model.backbone=resnet1O",
            ],
            "unknown backbone",
        ),
        (
            ["train", "--config", "dmeo", "--data", "{prep}", "--out", "{tmp}/r"],
            "did you mean 'demo'",
        ),
        (
            ["train", "--config", "demo", "--data", "{tmp}", "--out", "{tmp}/r"],
            "not a prepared dataset",
        ),
        (
            ["eval", "--checkpoint", "{tmp}/none.ckpt", "--data", "{prep}", "--out", "{tmp}/e"],
            "does not exist",
        ),
        (
            [
                "infer",
                "--checkpoint",
                "{tmp}/none.ckpt",
                "--source",
                "{tmp}",
                "--out",
                "{tmp}/p.csv",
            ],
            "does not exist",
        ),
    ],
)
def test_bad_input_messages(
    argv: list[str], message: str, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [a.format(prep=prepared, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_infer_exit_code_when_some_files_fail(
    trained: Path, tmp_path: Path, phantom: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    image = sorted((phantom / "images").glob("*.png"))[0]
    (folder / image.name).write_bytes(image.read_bytes())
    (folder / "empty.png").write_bytes(b"")
    code = main(
        [
            "infer",
            "--checkpoint",
            str(trained / "checkpoints" / "best.ckpt"),
            "--source",
            str(folder),
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert code == 3
    assert "1 image(s) predicted, 1 failed" in capsys.readouterr().out


def test_unknown_dataset_lists_the_choices(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "nhi", "--root", "x", "--out", "y"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nhi'" in capsys.readouterr().err


def test_bench_loader_prints_the_three_figures(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(
            ["bench", "loader", "--data", str(prepared), "--image-size", "48", "--batch-size", "8"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "decode originals" in out and "cache loader" in out and "loader / decode" in out
