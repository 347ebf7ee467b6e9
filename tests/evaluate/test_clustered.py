"""Uncertainty respects patients everywhere, and calibration never moves a ranking figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrkit.evaluate.bootstrap import paired_auroc_difference
from cxrkit.evaluate.calibration import compare_methods
from cxrkit.evaluate.results import evaluate, subgroups
from cxrkit.evaluate.runs import EvalOptions, evaluate_predictions

CLASSES = ["Effusion", "Edema"]


def patients_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """80 patients with 1-3 images each: labels, two models' scores, patient ids, metadata."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(80), rng.integers(1, 4, 80)).astype(str)
    n = len(groups)
    y = (rng.random((n, 2)) < 0.3).astype(float)
    a = np.clip(y * 0.35 + rng.random((n, 2)) * 0.65, 0, 1)
    b = np.clip(y * 0.15 + rng.random((n, 2)) * 0.85, 0, 1)
    y[rng.random((n, 2)) < 0.05] = np.nan  # some unknown labels
    table = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "patient_id": groups})
    return y, a, b, table


def duplicate(x: np.ndarray | pd.DataFrame, times: int = 10):
    """Every row ``times`` times, inside its patient."""
    if isinstance(x, pd.DataFrame):
        return x.loc[x.index.repeat(times)].reset_index(drop=True)
    return np.repeat(x, times, axis=0)


def intervals(tree: object, path: str = "") -> dict[str, tuple[float, float]]:
    """Every reported interval in a metrics dict: keys ending in ``_ci`` (image-level DeLong
    intervals are labelled so and left out: they are meant to ignore patients)."""
    found: dict[str, tuple[float, float]] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key.endswith("_ci") and "delong" not in key and value is not None:
                found[f"{path}{key}"] = (value[0], value[1])
            else:
                found |= intervals(value, f"{path}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found |= intervals(value, f"{path}{i}.")
    return found


def test_duplicating_images_inside_patients_narrows_no_interval() -> None:
    y, a, _, table = patients_data()
    kwargs = {"classes": CLASSES, "thresholds": np.array([0.5, 0.5]), "n_boot": 300, "seed": 1}
    once = evaluate(y, a, groups=table["patient_id"].to_numpy(), **kwargs)
    tenfold = evaluate(
        duplicate(y), duplicate(a), groups=duplicate(table)["patient_id"].to_numpy(), **kwargs
    )
    once |= {"subgroups": subgroups(table, y, a, classes=CLASSES, by=["sex"],
                                    groups=table["patient_id"].to_numpy(), n_boot=300)}  # fmt: skip
    tenfold |= {"subgroups": subgroups(duplicate(table), duplicate(y), duplicate(a),
                                       classes=CLASSES, by=["sex"],
                                       groups=duplicate(table)["patient_id"].to_numpy(),
                                       n_boot=300)}  # fmt: skip
    before, after = intervals(once), intervals(tenfold)
    assert len(before) > 20 and before.keys() == after.keys()
    assert any(k.startswith("subgroups.") for k in before)
    narrower = {k: (before[k], after[k]) for k in before
                if after[k][1] - after[k][0] < (before[k][1] - before[k][0]) - 1e-9}  # fmt: skip
    assert narrower == {}
    # the image-level DeLong interval does narrow: it is the labelled exception
    delong = once["per_class"]["Effusion"]["auroc_delong_ci"]
    delong10 = tenfold["per_class"]["Effusion"]["auroc_delong_ci"]
    assert delong10[1] - delong10[0] < 0.5 * (delong[1] - delong[0])


def test_paired_difference_resamples_patients_for_both_models() -> None:
    y, a, b, table = patients_data(seed=2)
    groups = table["patient_id"].to_numpy()
    once = paired_auroc_difference(y, a, b, groups=groups, n_boot=400, seed=0)
    tenfold = paired_auroc_difference(
        duplicate(y), duplicate(a), duplicate(b), groups=duplicate(table)["patient_id"].to_numpy(),
        n_boot=400, seed=0,
    )  # fmt: skip
    for j in range(2):
        keep = ~np.isnan(y[:, j])
        want = roc_auc_score(y[keep, j], a[keep, j]) - roc_auc_score(y[keep, j], b[keep, j])
        assert once["diff"][j] == pytest.approx(want, abs=1e-12)
        assert once["ci_low"][j] < once["diff"][j] < once["ci_high"][j]
        width = once["ci_high"][j] - once["ci_low"][j]
        assert tenfold["ci_high"][j] - tenfold["ci_low"][j] >= width - 1e-9
        assert 0.0 <= once["p_value"][j] <= 1.0
    same = paired_auroc_difference(y, a, a, groups=groups, n_boot=100, seed=0)
    np.testing.assert_array_equal(same["p_value"], [1.0, 1.0])
    np.testing.assert_array_equal(same["diff"], [0.0, 0.0])


def test_calibration_folds_keep_patients_together() -> None:
    y, a, _, table = patients_data(seed=3)
    y = np.nan_to_num(y)
    groups = table["patient_id"].to_numpy()
    once = compare_methods(y, a, classes=CLASSES, groups=groups)["methods"]["isotonic"]["macro"]
    copies, patients = duplicate(y), duplicate(table)["patient_id"].to_numpy()
    grouped = compare_methods(copies, duplicate(a), classes=CLASSES, groups=patients)
    by_image = compare_methods(copies, duplicate(a), classes=CLASSES)
    # patients kept together: ten copies of each image add nothing, the out-of-fold isotonic
    # scores are those of the single copies
    for key in ("brier", "ece", "nll"):
        assert grouped["methods"]["isotonic"]["macro"][key] == pytest.approx(once[key], rel=1e-9)
    # folds by image put copies of one image on both sides: isotonic looks perfect (leak)
    assert by_image["methods"]["isotonic"]["macro"]["ece"] < 0.1 * once["ece"]


def test_isotonic_calibration_leaves_auroc_and_ap_on_the_raw_scores(
    prepared: Path, tmp_path: Path
) -> None:
    from cxrkit.data.manifest import load_manifest

    table = load_manifest(prepared).table
    rng = np.random.default_rng(0)
    preds = table[["image_id"]].copy()
    for f in ("Effusion", "Cardiomegaly"):
        preds[f"prob_{f}"] = np.clip(table[f].fillna(0) * 0.3 + rng.random(len(table)), 0, 1)
    preds.to_csv(tmp_path / "p.csv", index=False)
    m = evaluate_predictions(
        tmp_path / "p.csv", prepared, tmp_path / "ev",
        options=EvalOptions(calibration="isotonic", n_boot=50, report=False),
    ).metrics  # fmt: skip
    assert m["calibration"]["method"] == "isotonic"
    test = table["split"] == "test"
    for f in ("Effusion", "Cardiomegaly"):
        y, s = table.loc[test, f], preds.loc[test, f"prob_{f}"]
        if y.nunique() == 2:
            assert m["per_class"][f]["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            assert m["per_class"][f]["ap"] == pytest.approx(
                average_precision_score(y, s), abs=1e-12
            )


def test_an_interval_always_contains_its_estimate_and_few_resamples_are_flagged() -> None:
    y, a, _, table = patients_data(seed=4)
    m = evaluate(y, a, classes=CLASSES, thresholds=np.array([0.5, 0.5]),
                 groups=table["patient_id"].to_numpy(), n_boot=1, seed=0)  # fmt: skip
    nodes = [m["macro"], m["micro"], *m["per_class"].values()]
    checked = [
        (node[key.removesuffix("_ci")], node[key])
        for node in nodes
        for key in node
        if key.endswith("_ci") and "delong" not in key and node[key] is not None
    ]
    assert len(checked) > 10
    assert all(low <= estimate <= high for estimate, (low, high) in checked)
    assert any("only 1 bootstrap resamples are unreliable" in w for w in m["warnings"])
    assert any("widened" in w for w in m["warnings"])  # one resample: most exclude it
