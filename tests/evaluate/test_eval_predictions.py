"""Evaluating any tool's predictions CSV, comparing two models, and the evaluation dict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrkit.data.manifest import load_manifest
from cxrkit.errors import UserError
from cxrkit.evaluate.compare import compare
from cxrkit.evaluate.predictions import match_columns
from cxrkit.evaluate.results import subgroups
from cxrkit.evaluate.runs import EvalOptions, evaluate_predictions


def _peer_predictions(
    prepared: Path, tmp_path: Path, *, signal: float, seed: int, drop: int = 0
) -> Path:
    """A fake peer's CSV: paths (not ids), odd column spellings, some extra/missing images."""
    m = load_manifest(prepared)
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"Path": ["/elsewhere/" + i for i in m.table["image_id"]]})
    for f in m.findings:
        y = np.nan_to_num(m.table[f].to_numpy())
        table[f"prob_{f.upper().replace(' ', '_')}"] = np.clip(
            signal * y + rng.normal(0.3, 0.2, len(y)), 0, 1
        )
    table = table.iloc[drop:]
    extra = pd.DataFrame({"Path": ["/elsewhere/not_in_labels.png"]})
    out = tmp_path / f"peer_{seed}.csv"
    pd.concat([table, extra]).to_csv(out, index=False)
    return out


def test_match_columns_rules() -> None:
    cols = ["Image Index", "prob_EFFUSION", "pleural_thickening", "Mass"]
    got = match_columns(cols, ["Effusion", "Pleural Thickening", "Mass", "Hernia"], where="x")
    assert got == {
        "Effusion": "prob_EFFUSION",
        "Pleural Thickening": "pleural_thickening",
        "Mass": "Mass",
    }
    with pytest.raises(UserError, match="no column for any"):
        match_columns(["a", "b"], ["Effusion"], where="x.csv")


def test_predictions_from_another_tool(prepared: Path, tmp_path: Path) -> None:
    peer = _peer_predictions(prepared, tmp_path, signal=0.5, seed=0, drop=2)
    result = evaluate_predictions(
        peer, prepared, tmp_path / "ev", options=EvalOptions(n_boot=50, calibration="none")
    )
    m = result.metrics
    assert m["missing"]["in_predictions_only"] == 1
    assert m["thresholds"]["split"] == "val"
    table = pd.read_csv(peer)
    table["key"] = table["Path"].str.rsplit("/", n=1).str[-1]
    man = load_manifest(prepared).rows("test").merge(table, left_on="image_id", right_on="key")
    assert m["n_images"] == len(man)
    for f in m["classes"]:
        y = man[f]
        if y.nunique() == 2:
            want = roc_auc_score(y, man[f"prob_{f.upper().replace(' ', '_')}"])
            assert m["per_class"][f]["auroc"] == pytest.approx(want, abs=1e-12)
    assert (tmp_path / "ev" / "report.html").is_file()
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_images"] == len(man)


def test_predictions_against_nih_metadata_labels(shared_data: Path, tmp_path: Path) -> None:
    from cxrkit.data.datasets.nih import read_labels

    labels = read_labels(shared_data / "nih-sample" / "Data_Entry_2017_v2020.csv.gz")
    sample = labels.sample(3000, random_state=0)
    rng = np.random.default_rng(1)
    preds = pd.DataFrame({"Image Index": sample["image_id"]})
    for f in ("Effusion", "Cardiomegaly", "Pleural Thickening"):
        preds[f] = np.clip(sample[f].to_numpy() * 0.4 + rng.random(len(sample)), 0, 1)
    path = tmp_path / "p.csv"
    preds.to_csv(path, index=False)
    result = evaluate_predictions(
        path,
        shared_data / "nih-sample" / "Data_Entry_2017_v2020.csv.gz",
        tmp_path / "ev",
        dataset="nih",
        options=EvalOptions(n_boot=0, report=False),
    )
    m = result.metrics
    assert m["classes"] == ["Cardiomegaly", "Effusion", "Pleural Thickening"]
    assert m["missing"]["in_labels_only"] == len(labels) - 3000
    for f in m["classes"]:
        assert m["per_class"][f]["auroc"] == pytest.approx(
            roc_auc_score(sample[f], preds[f]), abs=1e-12
        )
    assert any("fixed at 0.5" in w for w in m["warnings"])


def test_compare_two_models(prepared: Path, tmp_path: Path) -> None:
    strong = _peer_predictions(prepared, tmp_path, signal=0.8, seed=1)
    weak = _peer_predictions(prepared, tmp_path, signal=0.1, seed=2)
    result = compare(strong, weak, prepared, tmp_path / "cmp", split=None)
    assert result["per_class"]
    testable = {
        k: r
        for k, r in result["per_class"].items()
        if r["n_positive"] >= 2 and r["n_negative"] >= 2
    }
    assert testable
    for row in testable.values():
        assert row["auc_a"] >= row["auc_b"] - 0.05
        assert 0 <= row["p_value"] <= 1
    same = compare(strong, strong, prepared, tmp_path / "cmp2", split=None)
    assert all(same["per_class"][k]["p_value"] == pytest.approx(1.0) for k in testable)


def test_subgroup_table_and_largest_gap() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    table = pd.DataFrame({"sex": rng.choice(["M", "F"], n), "age": rng.integers(18, 90, n)})
    y = (rng.random((n, 1)) < 0.3).astype(float)
    noise = np.where(table["sex"].to_numpy()[:, None] == "M", 0.1, 4.0)
    s = y + rng.normal(0, 1, (n, 1)) * noise
    out = subgroups(table, y, s, classes=["Effusion"], by=["sex", "age_band"])
    by_group = {(r["column"], r["group"]): r for r in out["rows"]}
    assert by_group[("sex", "M")]["auroc"] > by_group[("sex", "F")]["auroc"]
    assert out["largest_gap"]["Effusion"]["column"] == "sex"
    assert out["largest_gap"]["Effusion"]["low_group"] == "F"
    assert {r["group"] for r in out["rows"] if r["column"] == "age_band"} <= {
        "<20",
        "20-39",
        "40-59",
        "60-79",
        "80+",
    }
    with pytest.raises(UserError, match="no such column"):
        subgroups(table, y, s, classes=["Effusion"], by=["ethnicity"])


def test_eval_writes_into_its_own_folder_never_over_other_files(
    prepared: Path, tmp_path: Path
) -> None:
    peer = _peer_predictions(prepared, tmp_path, signal=0.5, seed=0)
    options = EvalOptions(n_boot=0, report=False, calibration="none")
    theirs = tmp_path / "results"
    theirs.mkdir()
    (theirs / "metrics.json").write_text('{"mine": 1}')
    with pytest.raises(UserError, match="files cxrkit did not write"):
        evaluate_predictions(peer, prepared, theirs, options=options)
    assert json.loads((theirs / "metrics.json").read_text()) == {"mine": 1}
    ours = tmp_path / "ev"
    evaluate_predictions(peer, prepared, ours, options=options)
    evaluate_predictions(peer, prepared, ours, options=options)  # again: its own files
    assert json.loads((ours / "metrics.json").read_text())["n_images"] > 0


def test_predictions_under_srun_are_evaluated_once(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Two srun tasks running `eval --predictions`: task 1 returns 0 at once and writes
    nothing, task 0 evaluates alone and says so (before, both wrote the same --out)."""
    from cxrkit.cli.parser import main

    peer = _peer_predictions(prepared, tmp_path, signal=0.5, seed=0, drop=2)
    args = ["eval", "--predictions", str(peer), "--labels", str(prepared), "--bootstrap", "20"]
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC"))]:
        monkeypatch.delenv(key)
    for key, value in {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_LOCALID": "1",
                       "SLURM_PROCID": "1", "SLURM_NODELIST": "node1", "SLURM_JOB_ID": "7",
                       "SLURM_JOB_NAME": "job"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert not (tmp_path / "one").exists() and capsys.readouterr().out == ""
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    assert main([*args, "--out", str(tmp_path / "zero")]) == 0
    assert "rank 0 evaluates --predictions alone" in capsys.readouterr().out
    assert (tmp_path / "zero" / "metrics.json").is_file()
