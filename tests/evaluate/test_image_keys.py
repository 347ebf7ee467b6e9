"""Image identity is the path: matching another tool's keys, and plain labels CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrkit.errors import UserError
from cxrkit.evaluate.image_keys import match_keys, normalise_key, path_parts
from cxrkit.evaluate.predictions import load_labels, match, read_label_csv, read_predictions

CHEXPERT = [
    "train/patient00001/study1/view1_frontal.jpg",
    "train/patient00001/study2/view1_frontal.jpg",
    "train/patient00002/study1/view1_frontal.jpg",
    "valid/patient64541/study1/view1_frontal.jpg",
]


def keys(*values: str) -> list[int]:
    return match_keys(list(values), CHEXPERT, where="p.csv", labels_where="prep").tolist()


def test_paths_are_compared_by_component() -> None:
    assert path_parts(".\\a//b/./c.png") == ("a", "b", "c.png")
    assert normalise_key("/data/x/y.png") == "data/x/y.png"


def test_relative_path_then_unambiguous_suffix_then_unique_name() -> None:
    assert keys(*CHEXPERT) == [0, 1, 2, 3]
    assert keys("/mnt/CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg") == [2]
    assert keys("patient00001/study2/view1_frontal.jpg") == [1]  # a suffix of the id
    assert keys("C:\\exports\\valid\\patient64541\\study1\\view1_frontal.jpg") == [3]
    assert keys("patient99999/study1/view9_other.jpg") == [-1]  # nothing shares its name
    with pytest.raises(UserError, match="ambiguous"):  # shares 'study1/view1_frontal.jpg'
        keys("patient99999/study1/view1_frontal.jpg")  # with three ids: never a guess
    unique = match_keys(["b.png", "/x/a.png"], ["i/a.png", "i/b.png"], where="p", labels_where="l")
    assert unique.tolist() == [1, 0]


def test_an_exact_id_wins_over_a_longer_id_with_the_same_end() -> None:
    ids = ["x.png", "sub/x.png"]
    assert match_keys(["x.png", "sub/x.png"], ids, where="p", labels_where="l").tolist() == [0, 1]


def test_ambiguous_keys_name_two_colliding_rows() -> None:
    with pytest.raises(UserError, match=r"'view1_frontal.jpg' is ambiguous.*train/patient00001"):
        keys("view1_frontal.jpg")
    with pytest.raises(UserError, match="study1/view1_frontal.jpg"):
        keys("/other/study1/view1_frontal.jpg")


def test_two_rows_naming_one_image_are_an_error() -> None:
    with pytest.raises(UserError, match=r"rows .* are the same image 'train/patient00002"):
        keys(
            "train/patient00002/study1/view1_frontal.jpg",
            "/a/patient00002/study1/view1_frontal.jpg",
        )


def _truth(tmp_path: Path, *, patient: bool = True) -> Path:
    table = pd.DataFrame(
        {
            "image": CHEXPERT,
            **({"Patient": ["p1", "p1", "p2", "p3"]} if patient else {}),
            "Sex": ["F", "F", "M", "M"],
            "Age": [40, 41, 50, 61],
            "Effusion": [1, 0, "", 1],
            "Edema": [0, 0, 1, 0],
            "Cardiomegaly": [-1, 0, 1, 1],  # uncertain: not evaluable as given
        }
    )
    path = tmp_path / "truth.csv"
    table.to_csv(path, index=False)
    return path


def test_plain_labels_csv_findings_patients_and_notes(tmp_path: Path) -> None:
    table, findings, notes = read_label_csv(_truth(tmp_path))
    assert findings == ["Effusion", "Edema"]  # Age is numeric but not 0/1; Sex is text
    assert table["patient_id"].tolist() == ["p1", "p1", "p2", "p3"]
    np.testing.assert_array_equal(table["Effusion"].to_numpy(), [1, 0, np.nan, 1])
    assert len(notes) == 1 and "Cardiomegaly" in notes[0] and "-1" in notes[0]
    table, _, notes = read_label_csv(_truth(tmp_path, patient=False))
    assert table["patient_id"].tolist() == CHEXPERT
    assert any("own patient" in n for n in notes)
    with pytest.raises(UserError, match="did you mean 'Patient'"):
        read_label_csv(_truth(tmp_path), patient_col="patient")


def test_plain_labels_match_predictions_by_path(tmp_path: Path) -> None:
    labels = load_labels(_truth(tmp_path), patient_col="Patient")
    preds = pd.DataFrame(
        {"path": ["/x/" + p for p in CHEXPERT[::-1]], "prob_effusion": [0.9, 0.2, 0.1, 0.8]}
    )
    preds.to_csv(tmp_path / "p.csv", index=False)
    m = match(read_predictions(tmp_path / "p.csv"), labels, where="p.csv")
    assert m.keys.tolist() == CHEXPERT
    np.testing.assert_array_equal(m.y_score[:, 0], [0.8, 0.1, 0.2, 0.9])
    assert m.missing["not_evaluated_findings"] == ["Edema"]
    with pytest.raises(UserError, match="--patient-col is for a plain labels CSV"):
        load_labels(tmp_path, dataset="nih", patient_col="Patient")
