"""Patient-wise stratified splits, the leakage check and split fingerprints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrkit.data.splits import (
    LeakageError,
    check_no_leakage,
    split_fingerprints,
    stratified_patient_split,
)
from cxrkit.errors import UserError


def _data(n_patients: int = 400, seed: int = 0) -> tuple[pd.Series, np.ndarray]:
    rng = np.random.default_rng(seed)
    images_per = rng.integers(1, 5, n_patients)
    pids = np.repeat(np.arange(n_patients), images_per)
    rates = np.array([0.3, 0.1, 0.02])
    per_patient = rng.random((n_patients, 3)) < rates
    labels = per_patient[pids].astype(np.float32)
    labels[rng.random(labels.shape) < 0.05] = np.nan
    return pd.Series(pids.astype(str)), labels


def test_no_patient_in_two_splits_and_fractions_respected() -> None:
    pids, labels = _data()
    split = stratified_patient_split(pids, labels, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    table = pd.DataFrame({"patient_id": pids, "split": split})
    check_no_leakage(table)
    patients = table.groupby("split")["patient_id"].nunique()
    assert abs(patients["train"] / 400 - 0.7) < 0.05
    assert abs(patients["test"] / 400 - 0.2) < 0.05


def test_rare_finding_is_spread_over_splits() -> None:
    pids, labels = _data(seed=1)
    split = stratified_patient_split(pids, labels, {"train": 0.5, "test": 0.5}, seed=0)
    table = pd.DataFrame({"patient_id": pids, "split": split, "rare": labels[:, 2] == 1})
    rare_patients = table[table["rare"]].groupby("split")["patient_id"].nunique()
    assert set(rare_patients.index) == {"train", "test"}
    assert abs(rare_patients["train"] - rare_patients["test"]) <= 2


def test_same_seed_same_split_other_seed_differs() -> None:
    pids, labels = _data()
    f = {"train": 0.8, "test": 0.2}
    a = stratified_patient_split(pids, labels, f, seed=5)
    b = stratified_patient_split(pids, labels, f, seed=5)
    c = stratified_patient_split(pids, labels, f, seed=6)
    assert (a == b).all()
    assert (a != c).any()


def test_bad_fractions_rejected() -> None:
    pids, labels = _data(20)
    with pytest.raises(UserError, match="sum to 1"):
        stratified_patient_split(pids, labels, {"train": 0.8, "test": 0.3}, seed=0)


def test_leakage_check_catches_a_planted_leak() -> None:
    table = pd.DataFrame(
        {"patient_id": ["1", "1", "2", "3"], "split": ["train", "test", "train", "val"]}
    )
    with pytest.raises(LeakageError, match=r"1 patient\(s\).*e\.g\. 1"):
        check_no_leakage(table)


def test_leakage_from_the_official_lists_says_so() -> None:
    table = pd.DataFrame(
        {
            "patient_id": ["1", "1", "2", "3"],
            "split": ["train", "test", "train", "val"],
            "official_split": ["trainval", "test", "trainval", ""],
        }
    )
    expected = r"official split lists: 1 patient\(s\).*patient 1: test, trainval\); correct"
    with pytest.raises(LeakageError, match=expected):
        check_no_leakage(table)
    table["official_split"] = [np.nan, "test", "trainval", ""]  # a missing value: "no list"
    with pytest.raises(LeakageError, match=r"patient 1: no list, test\)"):
        check_no_leakage(table)
    table["official_split"] = ["", "", "trainval", ""]  # drawn by cxrkit: not the lists' fault
    with pytest.raises(LeakageError, match=r"^patient leakage: 1 patient"):
        check_no_leakage(table)


def test_fingerprints_depend_only_on_patient_sets() -> None:
    t1 = pd.DataFrame(
        {"patient_id": ["2", "1", "1", "3"], "split": ["train", "train", "train", "test"]}
    )
    t2 = pd.DataFrame({"patient_id": ["1", "2", "3"], "split": ["train", "train", "test"]})
    t3 = pd.DataFrame({"patient_id": ["1", "3", "2"], "split": ["train", "train", "test"]})
    assert split_fingerprints(t1) == split_fingerprints(t2)
    assert split_fingerprints(t1)["train"] != split_fingerprints(t3)["train"]
