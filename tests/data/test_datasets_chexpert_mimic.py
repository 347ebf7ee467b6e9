"""CheXpert and MIMIC-CXR-JPG parsing: the real CheXpert head file on a fake image tree, fake
MIMIC trees, the uncertainty/blank policy, bad inputs, `prepare` end to end and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import fake_chexpert as _fake_chexpert
from fakes import write_images as _write_images
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cxrkit.cli.parser import build_parser
from cxrkit.data.datasets import chexpert, mimic
from cxrkit.data.datasets.uncertainty import (
    COLUMN_OF,
    LABELER_COLUMNS,
    LABELER_FINDINGS,
    PRESETS,
    UncertaintyPolicy,
)
from cxrkit.data.labels import NO_FINDING
from cxrkit.data.prepare import prepare
from cxrkit.data.splits import check_no_leakage
from cxrkit.errors import UserError

HEAD = "formats/chexpert_train_head3000.csv"
N_IMAGES = 200  # images written for the first rows of the real head file


@pytest.fixture(scope="module")
def real_chexpert(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real head file as ROOT/train.csv, images for its first N_IMAGES rows, and a
    two-row valid.csv with images; ROOT is named like the archive's folder."""
    root = tmp_path_factory.mktemp("chexpert") / "CheXpert-v1.0-small"
    root.mkdir()
    shutil.copy(shared_data / HEAD, root / "train.csv")
    head = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    _write_images(root.parent, head["Path"].head(N_IMAGES).tolist())
    valid = head.head(2).copy()
    valid["Path"] = valid["Path"].str.replace("train/patient0000", "valid/patient6454")
    valid[[NO_FINDING, *LABELER_COLUMNS]] = "0.0"
    valid.to_csv(root / "valid.csv", index=False)
    _write_images(root.parent, valid["Path"].tolist())
    return root


def _raw(root: Path) -> pd.DataFrame:
    """The real head file read independently, indexed like the parser's image_id."""
    raw = pd.read_csv(root / "train.csv")
    return raw.set_index(raw["Path"].str.split("/", n=1).str[1])


@pytest.mark.parametrize(
    ("uncertain", "blank"),
    [("u-ones", "zeros"), ("u-zeros", "nan"), ("u-ignore", "zeros"), ("chexpert-best", "nan")],
)
def test_real_chexpert_labels_follow_the_policy(
    real_chexpert: Path, uncertain: str, blank: str
) -> None:
    parsed = chexpert.parse(real_chexpert, uncertain=uncertain, blank=blank, views="all")
    table = parsed.table[parsed.table["official_split"] == "trainval"].set_index("image_id")
    assert len(table) == N_IMAGES
    assert parsed.counts["missing_on_disk"] == 3000 - N_IMAGES
    assert parsed.counts["listed"] == 3002
    raw = _raw(real_chexpert).loc[table.index]
    normal = (raw[NO_FINDING] == 1).to_numpy()
    fill = {"ones": 1.0, "zeros": 0.0}
    for finding in LABELER_FINDINGS:
        got, cell = table[finding].to_numpy(), raw[COLUMN_OF[finding]].to_numpy()
        assert (got[cell == 1] == 1).all() and (got[cell == 0] == 0).all(), finding
        mode = PRESETS[uncertain][finding]
        unsure = got[cell == -1]
        assert np.isnan(unsure).all() if mode == "ignore" else (unsure == fill[mode]).all()
        blank_cells = np.isnan(cell)
        if blank == "zeros":
            assert (got[blank_cells] == 0).all(), finding
        else:
            excused = normal & (finding != "Support Devices")
            assert np.isnan(got[blank_cells & ~excused]).all(), finding
            assert (got[blank_cells & excused] == 0).all(), finding
        assert parsed.label_policy["uncertain_counts"][finding] == int((cell == -1).sum())
    assert parsed.table[LABELER_FINDINGS[0]].dtype == np.float32


def test_real_chexpert_frontal_filter_ids_and_demographics(real_chexpert: Path) -> None:
    parsed = chexpert.parse(real_chexpert)
    raw = _raw(real_chexpert)
    frontal = raw["Frontal/Lateral"] == "Frontal"
    assert parsed.counts["filtered_out"] == int((~frontal).sum())
    assert parsed.counts["missing_on_disk"] == int(frontal.iloc[N_IMAGES:].sum())
    table = parsed.table.set_index("image_id")
    assert set(table["view"]) <= {"AP", "PA"}
    first = table.loc["train/patient00002/study1/view1_frontal.jpg"]
    assert (first["patient_id"], first["study_id"]) == ("patient00002", "patient00002/study1")
    assert (first["sex"], first["age"]) == ("F", 83)
    assert Path(first["path"]).is_file() and Path(first["path"]).is_absolute()
    pa_only = chexpert.parse(real_chexpert, projections=["PA"])
    assert set(pa_only.table["view"]) == {"PA"}
    assert set(chexpert.parse(real_chexpert, views="lateral").table["view"]) == {"LATERAL"}


def test_chexpert_best_equals_its_overrides_and_competition_subset(real_chexpert: Path) -> None:
    best = chexpert.parse(real_chexpert, uncertain="chexpert-best")
    policy = best.label_policy["uncertain_policy"]
    assert {f for f, mode in policy.items() if mode == "ones"} == {"Atelectasis", "Edema"}
    assert set(policy.values()) == {"ones", "zeros"}
    same = chexpert.parse(real_chexpert, uncertain=["u-zeros", "Atelectasis=ones", "Edema=ones"])
    pd.testing.assert_frame_equal(best.table, same.table)
    comp = chexpert.parse(
        real_chexpert, findings="competition", uncertain=["Pleural Effusion=ones"]
    )
    assert comp.findings == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion"]
    assert comp.label_policy["uncertain_policy"]["Effusion"] == "ones"
    assert comp.label_policy["uncertain_policy"]["Edema"] == "ignore"


def test_fake_chexpert_conflicts_views_and_renamed_root(tmp_path: Path) -> None:
    root = _fake_chexpert(tmp_path / "renamed")
    parsed = chexpert.parse(root, blank="nan", views="all")
    assert parsed.counts["conflicts"] == 1
    assert parsed.counts["missing_on_disk"] == 0
    table = parsed.table.set_index("image_id")
    conflict = table.loc["train/patient00001/study1/view1_frontal.jpg"]
    assert conflict["Cardiomegaly"] == 1, "the finding wins over No Finding"
    normal = table.loc["train/patient00001/study1/view2_lateral.jpg"]
    assert normal["Support Devices"] == 1 and normal["Edema"] == 0, "No Finding: blanks are 0"
    assert normal["view"] == "LATERAL"
    assert set(table.loc[table["patient_id"].str.startswith("patient645"), "official_split"]) == {
        "test"
    }


def test_prepare_chexpert_end_to_end_without_leakage(tmp_path: Path) -> None:
    root = _fake_chexpert(tmp_path / "CheXpert-v1.0-small")
    m = prepare(
        "chexpert",
        root,
        tmp_path / "prep",
        size=32,
        progress=False,
        options={"uncertain": ["chexpert-best"], "views": "all"},
    )
    check_no_leakage(m.table)
    assert m.table.groupby("patient_id")["split"].nunique().max() == 1
    valid_patients = {"patient64541", "patient64542", "patient64543"}
    assert set(m.table.loc[m.table["split"] == "test", "patient_id"]) == valid_patients
    assert set(m.table["split"]) == {"train", "val", "test"}
    assert m.header["counts"]["prepared"] == 35
    assert m.header["label_policy"]["uncertain"] == "chexpert-best"
    assert m.header["findings"] == list(LABELER_FINDINGS)


def _fake_mimic(root: Path, *, gz: bool) -> Path:
    """12 subjects x 2 studies x (PA, AP, LATERAL); subjects 8-9 validate, 10-11 test; the
    last study has no labels; one image is not on disk."""
    images, studies = [], []
    for i in range(12):
        subject = str(10000032 + i * 1000)
        split = "train" if i < 8 else "validate" if i < 10 else "test"
        for s in range(2):
            study = str(50000000 + i * 10 + s)
            studies.append({"subject_id": subject, "study_id": study})
            for view in ("PA", "AP", "LATERAL"):
                images.append(
                    {
                        "dicom_id": f"d{study}{view}",
                        "subject_id": subject,
                        "study_id": study,
                        "split": split,
                        "ViewPosition": view,
                    }
                )
    images = pd.DataFrame(images)
    labels = pd.DataFrame(studies[:-1])
    cycle = ["1.0", "0.0", "-1.0", ""]
    for j, column in enumerate(LABELER_COLUMNS):
        labels[column] = [cycle[(i + j) % 4] for i in range(len(labels))]
    labels[NO_FINDING] = ""
    suffix = ".csv.gz" if gz else ".csv"
    root.mkdir(parents=True)
    labels[["subject_id", "study_id", *LABELER_COLUMNS, NO_FINDING]].to_csv(
        root / f"mimic-cxr-2.0.0-chexpert{suffix}", index=False
    )
    images[["dicom_id", "study_id", "subject_id", "split"]].to_csv(
        root / f"mimic-cxr-2.0.0-split{suffix}", index=False
    )
    images.assign(Rows=8, Columns=8)[
        ["dicom_id", "subject_id", "study_id", "Rows", "ViewPosition"]
    ].to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    _write_images(
        root,
        [
            f"files/p{r.subject_id[:2]}/p{r.subject_id}/s{r.study_id}/{r.dicom_id}.jpg"
            for r in images.iloc[1:].itertuples()
        ],
    )
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_mimic_split_views_missing_and_labels(tmp_path: Path, gz: bool) -> None:
    root = _fake_mimic(tmp_path / "mimic", gz=gz)
    parsed = mimic.parse(root, uncertain="u-ones", blank="nan")
    table = parsed.table.set_index("image_id")
    assert set(table["view"]) == {"PA", "AP"}
    assert parsed.counts == {
        "listed": 72,
        "filtered_out": 24,
        "unlabelled": 2,
        "missing_on_disk": 1,
        "conflicts": 0,
    }
    assert len(table) == 45
    split = table.groupby("patient_id")["official_split"].agg(set)
    assert split["10000032"] == {"train"} and split["10008032"] == {"val"}
    assert split["10011032"] == {"test"}
    row = table.loc["d50000001AP"]
    assert row["path"].endswith("/files/p10/p10000032/s50000001/d50000001AP.jpg")
    assert (row["patient_id"], row["study_id"]) == ("10000032", "50000001")
    raw = pd.read_csv(root / f"mimic-cxr-2.0.0-chexpert{'.csv.gz' if gz else '.csv'}")
    raw = raw.set_index(raw["study_id"].astype(str)).loc[table["study_id"]]
    for finding in LABELER_FINDINGS:
        cell = raw[COLUMN_OF[finding]].to_numpy()
        expected = np.where(cell == -1, 1.0, cell)
        np.testing.assert_array_equal(table[finding].to_numpy(), expected.astype(np.float32))
    everything = mimic.parse(root, views=["all"])
    assert len(everything.table) == 68 and everything.counts["filtered_out"] == 0
    lateral = mimic.parse(root, views=["lateral"])
    assert set(lateral.table["view"]) == {"LATERAL"}


def test_prepare_mimic_keeps_the_official_split(tmp_path: Path) -> None:
    m = prepare(
        "mimic",
        _fake_mimic(tmp_path / "mimic", gz=True),
        tmp_path / "prep",
        size=32,
        progress=False,
    )
    by_patient = m.table.groupby("patient_id")["split"].agg(set)
    assert by_patient["10008032"] == {"val"} and by_patient["10000032"] == {"train"}
    assert m.header["split"]["policy"] == "official test/train/val"


def _drop_column(csv: Path, column: str) -> None:
    pd.read_csv(csv, dtype=str, keep_default_na=False).drop(columns=column).to_csv(csv, index=False)


def _unknown_studies(root: Path) -> None:
    csv = root / "mimic-cxr-2.0.0-chexpert.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.assign(study_id="1" + frame["study_id"]).to_csv(csv, index=False)


def _set_cell(csv: Path, column: str, value: str) -> None:
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.loc[2, column] = value
    frame.to_csv(csv, index=False)


def _unparsable_path(root: Path) -> None:
    _set_cell(root / "train.csv", "Path", "CheXpert-v1.0-small/train/x.jpg")
    _write_images(root, ["train/x.jpg"])


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda r: (r / "valid.csv").unlink(), r"valid\.csv not found"),
        (
            lambda r: _drop_column(r / "train.csv", "Edema"),
            r"train\.csv lacks the column\(s\) Edema",
        ),
        (
            lambda r: _set_cell(r / "train.csv", "Cardiomegaly", "2"),
            r"train\.csv: column 'Cardiomegaly' holds '2' \(row 4\)",
        ),
        (lambda r: [shutil.rmtree(r / d) for d in ("train", "valid")], "none of the 19 selected"),
        (_unparsable_path, r"train\.csv: column 'Path' holds 'CheXpert-v1\.0-small/train/x\.jpg'"),
    ],
)
def test_bad_chexpert_inputs_name_file_and_column(tmp_path: Path, break_it, message: str) -> None:
    root = _fake_chexpert(tmp_path / "CheXpert-v1.0-small")
    break_it(root)
    with pytest.raises(UserError, match=message):
        chexpert.parse(root)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda r: (r / "mimic-cxr-2.0.0-metadata.csv").unlink(),
            r"mimic-cxr-2\.0\.0-metadata\.csv \(or \.gz\) not found",
        ),
        (
            lambda r: _drop_column(r / "mimic-cxr-2.0.0-split.csv", "split"),
            r"split\.csv lacks the column\(s\) split",
        ),
        (
            lambda r: _set_cell(r / "mimic-cxr-2.0.0-split.csv", "split", "dev"),
            r"split\.csv: column 'split' holds 'dev'",
        ),
        (
            lambda r: _drop_column(r / "mimic-cxr-2.0.0-chexpert.csv", "Pleural Effusion"),
            r"chexpert\.csv lacks the column\(s\) Pleural Effusion",
        ),
        (lambda r: shutil.rmtree(r / "files"), "none of the 46 selected"),
        (_unknown_studies, r"none of the 48 selected images has its \(subject_id, study_id\) in"),
    ],
)
def test_bad_mimic_inputs_name_file_and_column(tmp_path: Path, break_it, message: str) -> None:
    root = _fake_mimic(tmp_path / "mimic", gz=False)
    break_it(root)
    with pytest.raises(UserError, match=message):
        mimic.parse(root)


@pytest.mark.parametrize(
    ("uncertain", "blank", "message"),
    [
        ("u-one", "zeros", "did you mean 'u-ones'"),
        (["u-ones", "u-zeros"], "zeros", "one preset"),
        (["Atelectsis=ones"], "zeros", "did you mean 'Atelectasis'"),
        (["Edema=maybe"], "zeros", "unknown uncertainty policy"),
        ("u-ones", "nil", "unknown blank policy"),
    ],
)
def test_bad_policy_options(uncertain: str | list[str], blank: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        UncertaintyPolicy.from_options(uncertain, blank)


def test_missing_root_and_empty_view_filter(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        chexpert.parse(tmp_path / "nowhere")
    with pytest.raises(UserError, match="does not exist"):
        mimic.parse(tmp_path / "nowhere")
    root = _fake_chexpert(tmp_path / "CheXpert-v1.0-small")
    with pytest.raises(UserError, match="matches --views lateral --projections PA"):
        chexpert.parse(root, views="lateral", projections=["PA"])


@settings(max_examples=60, deadline=None)
@given(
    raw=arrays(np.float32, (6, 3), elements=st.sampled_from([1.0, 0.0, -1.0, np.nan])),
    normal=arrays(np.bool_, 6),
    modes=st.lists(st.sampled_from(["ones", "zeros", "ignore"]), min_size=3, max_size=3),
    blank=st.sampled_from(["zeros", "nan"]),
)
def test_policy_values_property(
    raw: np.ndarray, normal: np.ndarray, modes: list[str], blank: str
) -> None:
    findings = ["Atelectasis", "Edema", "Support Devices"]
    policy = UncertaintyPolicy(dict(zip(findings, modes, strict=True)), blank, "test")
    out = policy.values(raw, findings, normal)
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert np.isin(out[~np.isnan(out)], [0.0, 1.0]).all()
    np.testing.assert_array_equal(out[raw == 1], 1.0)
    np.testing.assert_array_equal(out[raw == 0], 0.0)
    for j, mode in enumerate(modes):
        column = out[raw[:, j] == -1, j]
        assert np.isnan(column).all() if mode == "ignore" else (column == (mode == "ones")).all()
    if blank == "nan":
        assert np.isnan(out[np.isnan(raw[:, 2]), 2]).all(), "Support Devices: never excused"


def test_cli_lists_the_dataset_options(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "chexpert", "--help"])
    text = capsys.readouterr().out
    for flag in ("--uncertain", "--blank", "--views", "--projections", "--findings"):
        assert flag in text
    args = parser.parse_args(
        [
            "prepare",
            "chexpert",
            "--root",
            "r",
            "--out",
            "o",
            "--uncertain",
            "u-zeros",
            "Atelectasis=ones",
            "--blank",
            "nan",
        ]
    )
    assert args.opt_uncertain == ["u-zeros", "Atelectasis=ones"] and args.opt_blank == "nan"
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "mimic", "--help"])
    assert "--views" in capsys.readouterr().out
