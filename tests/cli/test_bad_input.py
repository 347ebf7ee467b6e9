"""Bad input, table-driven: every row is a command line with one thing wrong, built in a
temporary folder. Each must end with exit 2, one line on stderr naming what was wrong, no
traceback, and every input file unchanged (hashed before and after)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

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
    busy_port: int = 0  # a port this test process listens on


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


def _raw_with_entry(world: World, change: Callable[[list[str]], list[str]]) -> Path:
    """A copy of the raw NIH folder (images linked) whose Data_Entry lines ``change`` edits."""
    raw = world.tmp / "raw"
    raw.mkdir()
    (raw / "images").symlink_to(world.raw / "images")
    for name in ("train_val_list.txt", "test_list.txt", "BBox_List_2017.csv"):
        shutil.copy(world.raw / name, raw / name)
    entry = (world.raw / "Data_Entry_2017.csv").read_text().splitlines(keepends=True)
    (raw / "Data_Entry_2017.csv").write_text("".join(change(entry)))
    return raw


def _conflicting_rows(world: World) -> tuple[list[str], list[Path]]:
    def twice(entry: list[str]) -> list[str]:
        first = entry[1].split(",")
        first[1] = "Hernia" if first[1] != "Hernia" else "No Finding"  # same image, other label
        return [*entry, ",".join(first)]

    raw = _raw_with_entry(world, twice)
    argv = ["prepare", "nih", "--root", str(raw), "--out", str(world.tmp / "prep"),
            "--workers", "1"]  # fmt: skip
    return argv, [raw / "Data_Entry_2017.csv"]


def _leaky_lists(world: World) -> tuple[list[str], list[Path]]:
    raw = _raw_with_entry(world, lambda entry: entry)
    entry = pd.read_csv(raw / "Data_Entry_2017.csv", usecols=["Image Index", "Patient ID"])
    images = entry.groupby("Patient ID")["Image Index"].agg(list)
    moved = next(names[0] for names in images if len(names) > 1)  # one film of a patient of many
    train_val = (raw / "train_val_list.txt").read_text().split()
    test = (raw / "test_list.txt").read_text().split()
    lists = [n for n in train_val if n != moved], [n for n in test if n != moved] + [moved]
    for name, names in zip(("train_val_list.txt", "test_list.txt"), lists, strict=True):
        (raw / name).write_text("\n".join(names) + "\n")
    argv = ["prepare", "nih", "--root", str(raw), "--out", str(world.tmp / "prep"),
            "--workers", "1"]  # fmt: skip
    return argv, [raw / "train_val_list.txt", raw / "test_list.txt"]


def _foreign_label(world: World) -> tuple[list[str], list[Path]]:
    def opacity(entry: list[str]) -> list[str]:
        first = entry[1].split(",")
        first[1] = "Lung Opacity"  # VinDr's word; not one of NIH's 14
        return [entry[0], ",".join(first), *entry[2:]]

    raw = _raw_with_entry(world, opacity)
    argv = ["prepare", "nih", "--root", str(raw), "--out", str(world.tmp / "prep"),
            "--workers", "1", "--strict-labels"]  # fmt: skip
    return argv, [raw / "Data_Entry_2017.csv"]


def _copy_prepared(world: World, change: Callable[[Path], None]) -> Path:
    """A copy of the prepared folder (its cache file copied too), changed by ``change``."""
    prep = world.tmp / "prep-copy"
    shutil.copytree(world.prep, prep)
    change(prep)
    return prep


def _no_training_images(world: World) -> tuple[list[str], list[Path]]:
    def all_val(prep: Path) -> None:
        table = pd.read_csv(prep / "manifest.csv")
        table.loc[table["split"] == "train", "split"] = "val"
        table.to_csv(prep / "manifest.csv", index=False)

    prep = _copy_prepared(world, all_val)
    argv = _train(world, "trainer.max_epochs=1")
    argv[argv.index(str(world.prep))] = str(prep)
    return argv, [prep / "manifest.csv"]


def _truncated_cache(world: World) -> tuple[list[str], list[Path]]:
    def truncate(prep: Path) -> None:
        (cache,) = (prep / "cache").glob("*.u8")
        with cache.open("r+b") as fh:
            fh.truncate(cache.stat().st_size // 2)

    prep = _copy_prepared(world, truncate)
    argv = _train(world, "trainer.max_epochs=1")
    argv[argv.index(str(world.prep))] = str(prep)
    return argv, [prep / "manifest.csv", *(prep / "cache").glob("*.u8")]


def _not_a_model(world: World) -> tuple[list[str], list[Path]]:
    folder = world.tmp / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("weights to come")
    return _train(world, f"model.backbone=hf:{folder}"), [folder / "notes.txt"]


CASES: dict[str, tuple[Build, str]] = {
    "train: an hf: backbone folder that is not a model": (
        _not_a_model,
        "is not a Hugging Face model folder: no config.json",
    ),
    "train: an hf: Hub id neither cached nor downloadable": (
        lambda w: (_train(w, "model.backbone=hf:cxrkit-tests/no-such-model"), []),
        "hf:cxrkit-tests/no-such-model",
    ),
    "train: an open_clip: architecture that does not exist": (
        lambda w: (_train(w, "model.backbone=open_clip:ViT-Q-99"), []),
        "open_clip:ViT-Q-99 is neither a folder nor an architecture open_clip ships",
    ),
    "prepare: one image listed twice with other labels": (
        _conflicting_rows,
        "is listed 2 times with different labels",
    ),
    "prepare --strict-labels: a label outside the vocabulary": (
        _foreign_label,
        "not among NIH's 14 findings: Lung Opacity (1 images)",
    ),
    "prepare: official lists that split a patient": (
        _leaky_lists,
        "patient leakage caused by the dataset's official split lists",
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
    "train: no training images in the folder": (_no_training_images, "no training images in"),
    "train: a truncated image cache": (_truncated_cache, "is missing or incomplete"),
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
    "infer --devices: more processes than CPU cores": (
        lambda w: (
            [
                "infer",
                "--checkpoint",
                str(w.ckpt),
                "--source",
                str(w.image),
                "--out",
                str(w.tmp / "p.csv"),
                "--device",
                "cpu",
                "--devices",
                "4096",
            ],
            [],
        ),  # fmt: skip
        "--devices 4096 processes on",
    ),
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
    "infer --device cuda on a machine without a GPU": (
        lambda w: (
            f"infer --checkpoint {w.ckpt} --source {w.image} --out {w.tmp}/p.csv "
            "--device cuda".split()
            if not torch.cuda.is_available()
            else pytest.skip("this machine has a CUDA GPU"),
            [],
        ),
        "--device cuda: this machine has no CUDA GPU",
    ),
    "eval --checkpoint --device cuda on a machine without a GPU": (
        lambda w: (
            f"eval --checkpoint {w.ckpt} --data {w.prep} --out {w.tmp}/ev --device cuda".split()
            if not torch.cuda.is_available()
            else pytest.skip("this machine has a CUDA GPU"),
            [],
        ),
        "--device cuda: this machine has no CUDA GPU",
    ),
    "infer --device cuda:7": (
        lambda w: (
            f"infer --checkpoint {w.ckpt} --source {w.image} --out {w.tmp}/p.csv "
            "--device cuda:7".split(),
            [],
        ),
        "--device cuda:7: this machine has",
    ),
    "infer --device tpu": (
        lambda w: (
            f"infer --checkpoint {w.ckpt} --source {w.image} --out {w.tmp}/p.csv "
            "--device tpu".split(),
            [],
        ),
        "unknown --device 'tpu'; did you mean 'cpu'?",
    ),
    "infer --precision fp16 on the CPU": (
        lambda w: (
            f"infer --checkpoint {w.ckpt} --source {w.image} --out {w.tmp}/p.csv "
            "--device cpu --precision fp16".split(),
            [],
        ),
        "--precision fp16 on the CPU",
    ),
    "eval --predictions with --device": (
        lambda w: (_eval(w, "--device", "cpu"), [w.preds]),
        "--device and --precision run a model: they go with --checkpoint",
    ),
    "serve: a port already in use": (
        lambda w: (["serve", "--checkpoint", str(w.ckpt), "--port", str(w.busy_port)], []),
        "cannot listen on 127.0.0.1:",
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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        world = dataclasses.replace(world, tmp=tmp_path, busy_port=busy.getsockname()[1])
        argv, kept = build(world)
        kept = [*kept, world.ckpt, world.image]
        before = _digest(kept)
        capsys.readouterr()
        code = main(argv)
    out, err = capsys.readouterr()
    assert "open http" not in out  # serve prints its banner only once it can listen
    assert code == 2, err
    # warnings about the (tiny) fixture data may precede it, each one line of their own
    lines = [ln for ln in err.splitlines() if ln.strip() and f"{argv[0]}: warning: " not in ln]
    assert len(lines) == 1 and lines[0].startswith(f"cxrkit {argv[0]}: error: "), err
    assert message in lines[0] and "Traceback" not in err
    assert _digest(kept) == before
    if argv[0] == "train":  # refused before anything was written
        assert not (tmp_path / "run").exists()


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


def test_tiny_images_and_skipped_files_are_named(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    folder = tmp_path / "films"
    folder.mkdir()
    shutil.copy(world.image, folder / "frontal.png")
    cv2.imwrite(str(folder / "icon.png"), np.full((1, 1), 200, np.uint8))
    (folder / "scan.tiff").write_bytes(b"II*\x00" + bytes(64))
    capsys.readouterr()
    out_csv = tmp_path / "p.csv"
    code = main(["infer", "--checkpoint", str(world.ckpt), "--source", str(folder), "--out",
                 str(out_csv), "--workers", "0"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 3, err  # partial: one image could not be predicted
    assert [line for line in err.splitlines() if "were skipped" in line] == [
        f"cxrkit infer: warning: 1 file(s) under {folder} are not PNG, JPEG or DICOM and were "
        "skipped: scan.tiff"
    ]
    rows = pd.read_csv(out_csv).set_index("image_id")
    assert rows.loc["frontal.png", "status"] == "ok"
    assert rows.loc["icon.png", "status"].startswith("error: image is 1x1 pixels; a chest X-ray")
    code = main(["cam", "--checkpoint", str(world.ckpt), "--image", str(folder / "icon.png"),
                 "--out", str(tmp_path / "cams")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3, err  # as infer: the image is skipped with its reason, nothing drawn
    assert f"skipped {folder / 'icon.png'}: image is 1x1 pixels" in err
    assert not list((tmp_path / "cams").glob("*.png"))
