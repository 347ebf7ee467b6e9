"""Image identity is the path, end to end on a CheXpert tree where every image is
``patient*/study*/view1_frontal.jpg``: prepare -> infer -> eval -> compare from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fakes import fake_chexpert

from cxrkit.cli.parser import main
from cxrkit.data.manifest import load_manifest


@pytest.fixture(scope="module")
def chexpert_run(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("chexpert_identity")
    root = fake_chexpert(work / "CheXpert-v1.0-small")
    prep = work / "prep"
    assert main(["prepare", "chexpert", "--root", str(root), "--out", str(prep), "--size", "64",
                 "--views", "all", "--workers", "0"]) == 0  # fmt: skip
    preds = work / "cxrkit.csv"
    ckpt = trained / "checkpoints" / "best.ckpt"
    assert main(["infer", "--checkpoint", str(ckpt), "--source", str(root), "--out",
                 str(preds)]) == 0  # fmt: skip
    return {"root": root, "prep": prep, "preds": preds, "work": work}


def test_infer_writes_ids_relative_to_the_source_root(chexpert_run: dict[str, Path]) -> None:
    table = pd.read_csv(chexpert_run["preds"])
    manifest = load_manifest(chexpert_run["prep"])
    assert table["image_id"].is_unique
    assert set(table["image_id"]) == set(manifest.table["image_id"])  # 35 distinct paths
    assert table["image_id"].str.endswith("view1_frontal.jpg").sum() > 1


def test_eval_and_compare_on_same_named_files(chexpert_run: dict[str, Path]) -> None:
    work, prep, preds = chexpert_run["work"], chexpert_run["prep"], chexpert_run["preds"]
    table = pd.read_csv(preds)
    peer = table.drop(columns=["image_id"]).assign(path=lambda t: "/elsewhere/" + t["path"])
    peer[[c for c in peer.columns if c.startswith("prob_")]] *= 0.5  # another model
    peer.to_csv(work / "peer.csv", index=False)
    for name, csv in (("ours", preds), ("peer", work / "peer.csv")):
        assert main(["eval", "--predictions", str(csv), "--labels", str(prep), "--out",
                     str(work / name), "--bootstrap", "0", "--no-report"]) == 0  # fmt: skip
        metrics = json.loads((work / name / "metrics.json").read_text())
        test_rows = load_manifest(prep).rows("test")
        assert metrics["n_images"] == len(test_rows) == 3
        assert metrics["missing"]["in_predictions_only"] == 0  # other splits are known images
    assert main(["compare", str(preds), str(work / "peer.csv"), "--labels", str(prep),
                 "--out", str(work / "cmp")]) == 0  # fmt: skip
    result = json.loads((work / "cmp" / "compare.json").read_text())
    assert result["n_images"] == 3 and result["only_in_a"] == result["only_in_b"] == 0


def test_bare_file_names_are_refused_as_ambiguous(
    chexpert_run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    work, prep = chexpert_run["work"], str(chexpert_run["prep"])
    table = pd.read_csv(chexpert_run["preds"]).drop(columns=["path"])
    names = table.assign(image_id=table["image_id"].str.rsplit("/", n=1).str[-1])
    names.to_csv(work / "names.csv", index=False)  # many rows 'view1_frontal.jpg'
    names.head(1).to_csv(work / "one.csv", index=False)  # one: which image is it?
    for csv, message in (("names.csv", "has two rows"), ("one.csv", "is ambiguous")):
        code = main(["eval", "--predictions", str(work / csv), "--labels", prep,
                     "--out", str(work / csv[:-4])])  # fmt: skip
        assert code == 2
        err = capsys.readouterr().err
        assert message in err and "view1_frontal.jpg" in err and "relative" in err
        assert err.count("\n") == 1  # one line, no traceback
