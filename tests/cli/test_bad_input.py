"""Bad input, table-driven: every row is a command line with one thing wrong, built in a
temporary folder. Each must end with exit 2, one line on stderr naming what was wrong, no
traceback, and every input file unchanged (hashed before and after)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from cxrkit.cli.parser import main


@dataclass
class World:
    """What the bad inputs are built from: a trained checkpoint, a prepared phantom, its raw
    folder, a predictions CSV and a scratch folder."""

    ckpt: Path
    prep: Path
    raw: Path
    preds: Path
    image: Path
    tmp: Path


Build = Callable[[World], tuple[list[str], list[Path]]]  # -> (argv, the inputs to keep)


def _preds_with(world: World, name: str, value: object) -> Path:
    table = pd.read_csv(world.preds)
    table["prob_Effusion"] = table["prob_Effusion"].astype(object)
    table.loc[table.index[:2], "prob_Effusion"] = value
    path = world.tmp / name
    table.to_csv(path, index=False)
    return path


def _eval(world: World, *extra: str, preds: Path | None = None) -> list[str]:
    preds = preds or world.preds
    return ["eval", "--predictions", str(preds), "--labels", str(world.prep),
            "--out", str(world.tmp / "ev"), "--bootstrap", "0", "--no-report", *extra]  # fmt: skip


def _train(world: World, *sets: str, config: str = "demo") -> list[str]:
    return ["train", "--config", config, "--data", str(world.prep), "--out",
            str(world.tmp / "run"), "--set", *sets]  # fmt: skip


def _prepare(world: World, *extra: str, out: Path | None = None) -> list[str]:
    return ["prepare", "nih", "--root", str(world.raw), "--out",
            str(out or world.tmp / "prep"), "--workers", "1", *extra]  # fmt: skip


def _list_yaml(world: World) -> tuple[list[str], list[Path]]:
    path = world.tmp / "list.yaml"
    path.write_text("- model\n- data\n")
    return _train(world, "trainer.max_epochs=1", config=str(path)), [path]


def _victim(world: World) -> tuple[list[str], list[Path]]:
    victim = world.tmp / world.image.name
    shutil.copy(world.image, victim)
    argv = ["infer", "--checkpoint", str(world.ckpt), "--source", str(victim), "--out",
            str(victim), "--overwrite"]  # fmt: skip
    return argv, [victim]


def _source_list_as_out(world: World) -> tuple[list[str], list[Path]]:
    listing = world.tmp / "list.csv"
    listing.write_text(f"path\n{world.image}\n")
    argv = ["infer", "--checkpoint", str(world.ckpt), "--source", str(listing), "--out",
            str(listing), "--overwrite"]  # fmt: skip
    return argv, [listing]


def _foreign_out(world: World) -> tuple[list[str], list[Path]]:
    thesis = world.tmp / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    argv = ["train", "--config", "demo", "--data", str(world.prep), "--out", str(thesis),
            "--overwrite", "--set", "trainer.max_epochs=1"]  # fmt: skip
    return argv, [thesis / "chapter1.tex"]


def _file_as_out(world: World) -> tuple[list[str], list[Path]]:
    path = world.tmp / "notes.txt"
    path.write_text("keep")
    return _prepare(world, out=path / "sub"), [path]


def _conflicting_rows(world: World) -> tuple[list[str], list[Path]]:
    raw = world.tmp / "raw"
    raw.mkdir()
    (raw / "images").symlink_to(world.raw / "images")
    for name in ("train_val_list.txt", "test_list.txt", "BBox_List_2017.csv"):
        shutil.copy(world.raw / name, raw / name)
    entry = (world.raw / "Data_Entry_2017.csv").read_text().splitlines(keepends=True)
    first = entry[1].split(",")
    first[1] = "Hernia" if first[1] != "Hernia" else "No Finding"  # the same image, other label
    (raw / "Data_Entry_2017.csv").write_text("".join([*entry, ",".join(first)]))
    argv = ["prepare", "nih", "--root", str(raw), "--out", str(world.tmp / "prep"),
            "--workers", "1"]  # fmt: skip
    return argv, [raw / "Data_Entry_2017.csv"]


CASES: dict[str, tuple[Build, str]] = {
    "prepare: one image listed twice with other labels": (
        _conflicting_rows,
        "is listed 2 times with different labels",
    ),
    "eval: a specificity above 1": (
        lambda w: (_eval(w, "--specificities", "1.5"), [w.preds]),
        "--specificities must be",
    ),
    "eval: no specificity": (lambda w: (_eval(w, "--specificities", ""), [w.preds]), "got nothing"),
    "eval: a negative bootstrap count": (
        lambda w: (_eval(w, "--bootstrap", "-5"), [w.preds]),
        "--bootstrap must be 0",
    ),
    "eval: an unknown split": (
        lambda w: (_eval(w, "--split", "bogus"), [w.preds]),
        "has the splits test, train, val",
    ),
    "eval: a probability above 1": (
        lambda w: (_eval(w, preds=(p := _preds_with(w, "high.csv", 1.7))), [p]),
        "'prob_Effusion' must hold probabilities in [0, 1]",
    ),
    "eval: a probability that is text": (
        lambda w: (_eval(w, preds=(p := _preds_with(w, "text.csv", "high"))), [p]),
        "e.g. 'high' for image",
    ),
    "eval: an unknown calibration": (
        lambda w: (_eval(w, "--calibration", "isotonik"), [w.preds]),
        "did you mean 'isotonic'",
    ),
    "train: a misspelt scheduler": (
        lambda w: (_train(w, "optim.scheduler=plateu"), []),
        "did you mean 'plateau'",
    ),
    "train: image size 0": (
        lambda w: (_train(w, "data.image_size=0"), []),
        "data.image_size must be an integer >= 32",
    ),
    "train: a misspelt backbone": (
        lambda w: (_train(w, "model.backbone=densnet121"), []),
        "did you mean 'densenet121'",
    ),
    "train: a YAML list as config": (_list_yaml, "holds a YAML list, expected a mapping"),
    "train --overwrite: a folder cxrkit did not make": (_foreign_out, "files cxrkit did not write"),
    "prepare: a runaway cache size": (
        lambda w: (_prepare(w, "--size", "100000"), []),
        "--size must be 32-4096 pixels",
    ),
    "prepare: no training patients left": (
        lambda w: (_prepare(w, "--val-fraction", "1.0"), []),
        "--val-fraction must be in [0, 1)",
    ),
    "prepare: fractions that sum to 1": (
        lambda w: (_prepare(w, "--val-fraction", "0.5", "--test-fraction", "0.5"), []),
        "leave no patient for training",
    ),
    "prepare: --out under a file": (_file_as_out, "cannot create --out"),
    "infer: --out is the input image": (_victim, "is the --source itself"),
    "infer: --out is the --source list": (_source_list_as_out, "is the --source itself"),
    "infer: an unknown DICOM keyword": (
        lambda w: (
            [
                "infer",
                "--checkpoint",
                str(w.ckpt),
                "--source",
                str(w.image),
                "--out",
                str(w.tmp / "p.csv"),
                "--dicom-tags",
                "PatientNme",
            ],
            [],
        ),  # fmt: skip
        "did you mean 'PatientName'",
    ),
    "serve: a port out of range": (
        lambda w: (["serve", "--checkpoint", str(w.ckpt), "--port", "99999"], []),
        "--port must be between 1 and 65535",
    ),
}


@pytest.fixture(scope="module")
def world(trained: Path, prepared: Path, phantom: Path, tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("bad_input")
    ckpt = trained / "checkpoints" / "best.ckpt"
    image = next((phantom / "images").glob("*.png"))
    preds = tmp / "preds.csv"
    assert main(["infer", "--checkpoint", str(ckpt), "--source", str(phantom / "images"),
                 "--out", str(preds), "--workers", "0"]) == 0  # fmt: skip
    return World(ckpt, prepared, phantom, preds, image, tmp)


def _digest(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(
    case: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, message = CASES[case]
    world = World(world.ckpt, world.prep, world.raw, world.preds, world.image, tmp_path)
    argv, kept = build(world)
    kept = [*kept, world.ckpt, world.image]
    before = _digest(kept)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cxrkit {argv[0]}: error: "), err
    assert message in lines[0] and "Traceback" not in err
    assert _digest(kept) == before


def test_an_unexpected_error_is_one_line_and_a_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrkit.cli import parser

    def broken(_args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setenv("CXRKIT_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(parser, "cmd_datasets", broken)
    code = parser.main(["datasets"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "internal error: ZeroDivisionError: a bug" in err
    logs = list(tmp_path.glob("datasets-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "Traceback" in text and "ZeroDivisionError: a bug" in text and "cxrkit datasets" in text
