"""The shortcut audit (``eval --audit``): metadata-only baseline, strata, embedding probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import MANUFACTURERS, fake_padchest
from sklearn.metrics import roc_auc_score

from cxrkit.cli.parser import main
from cxrkit.data.manifest import load_manifest
from cxrkit.data.prepare import prepare
from cxrkit.errors import UserError
from cxrkit.evaluate.audit import check_columns, metadata_baseline, shortcut_audit
from cxrkit.evaluate.audit_output import audit_table, format_audit
from cxrkit.evaluate.metrics import roc_auc
from cxrkit.evaluate.probe import (
    embedding_probe,
    one_vs_rest_auroc,
    out_of_fold,
    patient_folds,
)
from cxrkit.evaluate.runs import EvalOptions, evaluate_checkpoint

CLASSES = ["Edema", "Mass"]


def cohort(n_patients: int = 1200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Patients with 1-4 images: metadata, labels ``(n, 2)`` (Edema is exactly "the film is
    AP", Mass is independent of everything) and model scores ``(n, 2)`` with some signal."""
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), rng.integers(1, 5, n_patients))
    n = len(patient)
    sex = np.where(rng.random(n_patients) < 0.5, "M", "F")[patient]
    table = pd.DataFrame(
        {
            "image_id": [f"{i:05d}.png" for i in range(n)],
            "patient_id": patient.astype(str),
            "view": np.where(rng.random(n) < 0.35, "AP", "PA"),
            "sex": sex,
            "age": rng.integers(5, 95, n_patients)[patient],
        }
    )
    y = np.c_[(table["view"] == "AP").to_numpy(float), (rng.random(n) < 0.25).astype(float)]
    scores = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
    return table, y, scores


def test_baseline_guesses_a_finding_fixed_by_view_and_not_an_unrelated_one() -> None:
    table, y, scores = cohort()
    base = metadata_baseline(table, y, ["view", "sex"], table["patient_id"].to_numpy())
    auroc = roc_auc(y, base.scores)
    assert auroc[0] > 0.99  # Edema is the view: metadata alone gives it away
    assert auroc[1] == pytest.approx(0.5, abs=0.05)  # Mass: nothing to guess from
    audit = shortcut_audit(
        table, y, scores, classes=CLASSES, groups=table["patient_id"].to_numpy(), n_boot=100
    )
    edema = audit["baseline"]["per_class"]["Edema"]
    assert edema["baseline_auroc"] == pytest.approx(auroc[0], abs=1e-9)
    assert edema["baseline_auroc"] > edema["model_auroc"]
    assert edema["difference"] < 0 and edema["difference_ci"][1] < 0  # the model is worse
    assert edema["model_auroc"] == pytest.approx(roc_auc_score(y[:, 0], scores[:, 0]))
    low, high = edema["model_auroc_ci"]
    assert low <= edema["model_auroc"] <= high
    mass = audit["baseline"]["per_class"]["Mass"]
    assert mass["baseline_auroc_ci"][0] < 0.5 < mass["baseline_auroc_ci"][1] + 0.02
    assert audit["columns"]["used"] == ["view", "sex", "age_band"]
    assert list(audit["columns"]["unavailable"]) == ["site"]
    assert "no site or scanner column" in audit["columns"]["unavailable"]["site"]
    assert mass["caution"] is None and audit["baseline"]["degrees_of_freedom"] == 6
    small, y_small, s_small = cohort(n_patients=40, seed=9)  # ~25 Mass cases for 6 dof
    few = shortcut_audit(small, y_small, s_small, classes=CLASSES, n_boot=0)
    assert "degrees of freedom" in few["baseline"]["per_class"]["Mass"]["caution"]
    assert "few events" in format_audit(few)


def test_grouped_folds_never_put_one_patient_on_both_sides() -> None:
    table, y, _ = cohort(n_patients=300, seed=1)
    patients = table["patient_id"].to_numpy()
    codes = (table["sex"] == "M").to_numpy(int)
    for folds in (
        patient_folds(patients, 5),
        patient_folds(patients, 5, target=codes, seed=3),
        metadata_baseline(table, y, ["view"], patients).folds,
    ):
        assert set(np.unique(folds)) == set(range(5))
        per_patient = pd.Series(folds).groupby(patients).nunique()
        assert (per_patient == 1).all()  # a patient's images are all in one fold
        for k in range(5):
            assert not set(patients[folds == k]) & set(patients[folds != k])
    # out of fold: a fold's scores do not move when its own labels change
    folds = patient_folds(patients, 5)
    features = np.c_[(table["view"] == "AP").to_numpy(float), codes]
    target = y[:, 1].astype(int)
    before, _ = out_of_fold(features, target, folds, n_classes=2, categorical=True)
    flipped = np.where(folds == 0, 1 - target, target)
    after, _ = out_of_fold(features, flipped, folds, n_classes=2, categorical=True)
    assert np.allclose(before[folds == 0], after[folds == 0])
    assert not np.allclose(before[folds != 0], after[folds != 0])
    # pooling identical rows gives the plain fit's scores
    plain, _ = out_of_fold(features, target, folds, n_classes=2, categorical=False)
    assert np.corrcoef(plain[:, 1], before[:, 1])[0, 1] > 0.999


def test_strata_match_scikit_learn_on_each_subset_and_explain_empty_cells() -> None:
    table, y, scores = cohort(n_patients=400, seed=2)
    audit = shortcut_audit(
        table,
        y,
        scores,
        classes=CLASSES,
        groups=table["patient_id"].to_numpy(),
        columns=["view", "sex", "age_band"],
        n_boot=50,
    )
    rows = {(r["finding"], r["column"], r["group"]): r for r in audit["strata"]["rows"]}
    for sex in ("F", "M"):
        subset = (table["sex"] == sex).to_numpy()
        for j, name in enumerate(CLASSES):
            want = roc_auc_score(y[subset, j], scores[subset, j])
            assert rows[(name, "sex", sex)]["auroc"] == pytest.approx(want, abs=1e-12)
            assert rows[(name, "sex", sex)]["auroc_ci"] is not None
    # Edema is "AP": the PA stratum has no positive and says so instead of a number
    pa = rows[("Edema", "view", "PA")]
    assert pa["auroc"] is None and pa["n_positive"] == 0 and "no positive" in pa["reason"]
    assert rows[("Edema", "view", "AP")]["reason"] == "no negative image in this group"
    assert {g for f, c, g in rows if c == "age_band"} == {"<20", "20-39", "40-59", "60-79", "80+"}
    csv = audit_table(audit)
    empty = csv[(csv["part"] == "strata") & (csv["finding"] == "Edema") & (csv["group"] == "PA")]
    assert np.isnan(empty["auroc"].iloc[0]) and "no positive" in empty["reason"].iloc[0]
    assert set(csv["part"]) == {"baseline", "strata", "probe"}
    probe = csv[csv["part"] == "probe"]
    assert probe["reason"].str.contains("needs --checkpoint").all()
    assert "embedding probe: needs --checkpoint" in format_audit(audit)


def test_probe_reads_sex_off_embeddings_that_encode_it_and_nothing_off_noise() -> None:
    table, _, _ = cohort(n_patients=500, seed=3)
    rng = np.random.default_rng(4)
    male = (table["sex"] == "M").to_numpy(float)
    noise = rng.normal(size=(len(table), 24))
    encoded = noise + np.outer(male, rng.normal(size=24))  # sex along one direction
    patients = table["patient_id"].to_numpy()
    columns = ["sex", "view"]
    found = embedding_probe(encoded, table, columns, patients, n_boot=100)["targets"]
    assert found["sex"]["auroc"] > 0.95 and found["sex"]["kind"] == "binary"
    assert found["sex"]["auroc_ci"][0] > 0.9
    assert found["view"]["auroc"] == pytest.approx(0.5, abs=0.07)
    blind = embedding_probe(noise, table, columns, patients, n_boot=100)["targets"]
    assert blind["sex"]["auroc"] == pytest.approx(0.5, abs=0.07)
    low, high = blind["sex"]["auroc_ci"]
    assert low < 0.5 + 0.03 and high > 0.5 - 0.03
    # one-vs-rest macro, as scikit-learn defines it for several classes
    codes = rng.integers(0, 4, 600)
    proba = rng.dirichlet(np.ones(4), 600) + 0.3 * np.eye(4)[codes]
    proba /= proba.sum(axis=1, keepdims=True)
    macro, ci, _ = one_vs_rest_auroc(codes, proba, np.arange(600), n_boot=50, seed=0)
    want = roc_auc_score(codes, proba, multi_class="ovr", average="macro")
    assert macro == pytest.approx(want, abs=1e-12) and ci[0] < macro < ci[1]


def test_single_valued_and_unknown_columns() -> None:
    table, y, scores = cohort(n_patients=200, seed=5)
    table["view"] = "PA"
    audit = shortcut_audit(
        table, y, scores, classes=CLASSES, groups=table["patient_id"].to_numpy(), n_boot=0
    )
    assert "single value (PA)" in audit["columns"]["unavailable"]["view"]
    assert "view" not in audit["columns"]["used"] and audit["baseline"]["reason"] is None
    assert any("view: a single value" in n for n in audit["notes"])
    only_view = shortcut_audit(table, y, scores, classes=CLASSES, columns=["view"], n_boot=0)
    assert only_view["baseline"]["reason"] == "no usable metadata column"
    assert only_view["strata"] is None and "view" in format_audit(only_view)
    with pytest.raises(UserError, match="'NoSuchColumn'.*age, age_band, sex, view"):
        check_columns(table, CLASSES, ["sex", "NoSuchColumn"])


def _predictions(prepared: Path, tmp_path: Path) -> Path:
    m = load_manifest(prepared)
    rng = np.random.default_rng(0)
    preds = m.table[["image_id"]].copy()
    for f in m.findings:
        y = np.nan_to_num(m.table[f].to_numpy())
        preds[f"prob_{f}"] = np.clip(0.4 * y + 0.6 * rng.random(len(y)), 0, 1)
    out = tmp_path / "preds.csv"
    preds.to_csv(out, index=False)
    return out


def test_cli_audit_of_a_predictions_csv_and_a_bad_column(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    preds, out = _predictions(prepared, tmp_path), tmp_path / "ev"
    common = f"eval --predictions {preds} --labels {prepared} --split train --out {out}"
    assert main([*common.split(), "--audit-columns", "sex,NoSuchColumn"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'NoSuchColumn'" in err
    assert "age_band" in err and "view" in err and "sex" in err
    assert not out.exists()  # refused before anything was computed
    args = [*common.split(), "--audit", "--bootstrap", "30", "--calibration", "none"]
    assert main([*args, "--audit-folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "metadata-only baseline (3-fold" in printed and "needs --checkpoint" in printed
    audit = json.loads((out / "metrics.json").read_text())["audit"]
    assert audit["probe"] == {
        "available": False,
        "reason": "embedding probe: needs --checkpoint (a predictions CSV has no embeddings)",
        "targets": {},
    }
    assert audit["baseline"]["cv"]["folds"] == 3 and audit["bootstrap"]["n"] == 30
    table = pd.read_csv(out / "audit.csv")
    assert {"part", "finding", "column", "group", "auroc", "ci_low", "ci_high"} <= set(table)
    report = (out / "report.html").read_text()
    assert "Shortcut audit" in report and "Metadata-only AUROC" in report


def test_audit_of_a_prepared_padchest_strata_by_its_scanner_column(tmp_path: Path) -> None:
    rows = [  # Cardiomegaly on every 4th image, across all three Manufacturer_DICOM values
        (f"x{i}.png", str(i % 2), f"p{i // 2}", "PA", "['normal']" if i % 4 else "['cardiomegaly']")
        for i in range(120)
    ]
    prepared = tmp_path / "prep"
    prepare("padchest", fake_padchest(tmp_path / "pc", rows), prepared, size=32, progress=False)
    preds, out = _predictions(prepared, tmp_path), tmp_path / "ev"
    args = f"eval --predictions {preds} --labels {prepared} --split train --out {out} --audit"
    assert main([*args.split(), "--bootstrap", "20", "--calibration", "none"]) == 0
    columns = json.loads((out / "metrics.json").read_text())["audit"]["columns"]
    assert columns["used"] == ["sex", "scanner"]  # picked by default: no --audit-columns
    assert set(columns["unavailable"]) == {"view", "age_band"}  # PA only, one age band
    train = load_manifest(prepared).rows("train")
    philips, idc = MANUFACTURERS[0], MANUFACTURERS[1].strip()
    assert set(train["scanner"]) == {philips, idc, ""}
    assert columns["levels"]["scanner"] == {
        name: int((train["scanner"] == value).sum())
        for name, value in ((idc, idc), (philips, philips), ("(missing)", ""))
    }
    strata = json.loads((out / "metrics.json").read_text())["audit"]["strata"]["rows"]
    by_group = {r["group"]: r for r in strata if r["column"] == "scanner"}
    assert set(by_group) == {philips, idc}  # unknown scanner: no stratum of its own
    scores = pd.read_csv(preds).set_index("image_id")["prob_Cardiomegaly"]
    for name in (philips, idc):
        subset = train[train["scanner"] == name]
        row = next(
            r for r in strata
            if (r["column"], r["group"], r["finding"]) == ("scanner", name, "Cardiomegaly")
        )  # fmt: skip
        want = roc_auc_score(subset["Cardiomegaly"], scores.loc[subset["image_id"]])
        assert row["auroc"] == pytest.approx(want, abs=1e-12) and row["n"] == len(subset)
        assert 0 < row["n_positive"] < row["n"] and row["auroc_ci"] is not None
    table = pd.read_csv(out / "audit.csv")
    assert {philips, idc} <= set(table.loc[table["column"] == "scanner", "group"])


def test_checkpoint_audit_probes_the_embeddings(
    trained: Path, prepared: Path, tmp_path: Path
) -> None:
    options = EvalOptions(split="train", audit=True, audit_folds=3, n_boot=30, report=False)
    result = evaluate_checkpoint(
        trained / "checkpoints" / "best.ckpt",
        prepared,
        tmp_path / "ev",
        options=options,
        write_card=False,
        progress=False,
    )
    probe = result.metrics["audit"]["probe"]
    assert probe["available"] and probe["dim"] > 0
    assert set(probe["targets"]) == {"view", "sex", "age_band"}
    sex = probe["targets"]["sex"]
    assert sex["auroc"] is not None and 0 <= sex["auroc"] <= 1 and sex["n"] > 0
    assert (tmp_path / "ev" / "audit.csv").is_file()


def test_real_nih_metadata_view_alone_predicts_edema(shared_data: Path) -> None:
    from cxrkit.data.datasets.nih import read_labels

    labels = read_labels(shared_data / "nih-sample" / "Data_Entry_2017_v2020.csv.gz")
    patients = labels["patient_id"].drop_duplicates().sample(6000, random_state=0)
    table = labels[labels["patient_id"].isin(patients)].reset_index(drop=True)
    y = table[["Edema", "Hernia", "Effusion"]].to_numpy(float)
    base = metadata_baseline(table, y, ["view"], table["patient_id"].to_numpy())
    edema = roc_auc(y, base.scores)[0]
    assert 0.68 < edema < 0.8  # issue 16 measured 0.735 on all 112,120 images
