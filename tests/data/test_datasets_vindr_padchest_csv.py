"""VinDr-CXR / VinBigData, PadChest and generic CSV parsing: the real VinBigData head file on a
fake DICOM tree, fake PhysioNet and PadChest trees, a CSV folder, bad inputs, `prepare` end to
end and the CLI flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import BROKEN, PADCHEST_ROWS, fake_padchest, write_png16
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrkit.cli.parser import build_parser
from cxrkit.data.datasets import folder, padchest, vindr
from cxrkit.data.manifest import load_manifest
from cxrkit.data.prepare import prepare
from cxrkit.errors import UserError

# The 14 box classes of VinBigData, spelled independently of the parser's map.
KAGGLE_NAMES = {
    "Aortic enlargement": "Aortic Enlargement",
    "Atelectasis": "Atelectasis",
    "Calcification": "Calcification",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "ILD": "ILD",
    "Infiltration": "Infiltration",
    "Lung Opacity": "Lung Opacity",
    "Nodule/Mass": "Nodule/Mass",
    "Other lesion": "Other Lesion",
    "Pleural effusion": "Effusion",
    "Pleural thickening": "Pleural Thickening",
    "Pneumothorax": "Pneumothorax",
    "Pulmonary fibrosis": "Fibrosis",
}
# PhysioNet's 28 label columns in image_labels_train.csv order ("Other diseases" in train).
PHYSIONET_LABELS = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
]  # fmt: skip


def write_dicom(path: Path, seed: int = 0) -> None:
    """A tiny (16 x 16) uncompressed 12-bit MONOCHROME2 DICOM file at ``path``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    pixels = np.random.default_rng(seed).integers(0, 4096, (32, 32), dtype=np.uint16)
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --- VinBigData (Kaggle), real head file ---------------------------------------------------


def test_vinbigdata_real_head_any_and_majority_match_raw_rows(
    shared_data: Path, tmp_path: Path
) -> None:
    raw = pd.read_csv(shared_data / "formats" / "vinbigdata_train_head3000.csv")
    root = tmp_path / "vbd"
    root.mkdir()
    (root / "train.csv").symlink_to(shared_data / "formats" / "vinbigdata_train_head3000.csv")
    n_readers = raw.groupby("image_id")["rad_id"].nunique()
    multi = n_readers[n_readers > 1].index[:40].tolist()
    single = n_readers[n_readers == 1].index[:10].tolist()
    on_disk = multi + single
    for i, image_id in enumerate(on_disk):
        write_dicom(root / "train" / f"{image_id}.dicom", seed=i)

    parsed = {r: vindr.parse(root, readers=r) for r in ("any", "majority")}
    for readers, result in parsed.items():
        t = result.table.set_index("image_id")
        assert set(t.index) == set(on_disk)
        assert result.counts["listed"] == raw["image_id"].nunique()
        assert result.counts["missing_on_disk"] == raw["image_id"].nunique() - len(on_disk)
        assert result.findings[-1] == "Nodule/Mass"
        assert sorted(result.findings) == sorted(KAGGLE_NAMES.values())
        assert (t["official_split"] == "").all()
        assert (t.index == t["patient_id"]).all()
        for image_id in on_disk:
            rows = raw[raw["image_id"] == image_id]
            readers_of_image = set(rows["rad_id"])
            for class_name, finding in KAGGLE_NAMES.items():
                voters = set(rows.loc[rows["class_name"] == class_name, "rad_id"])
                if readers == "any":
                    expected = len(voters) >= 1
                else:
                    expected = 2 * len(voters) > len(readers_of_image)
                assert t.loc[image_id, finding] == float(expected), (image_id, finding, readers)
    any_sum = parsed["any"].table[parsed["any"].findings].to_numpy().sum()
    majority_sum = parsed["majority"].table[parsed["majority"].findings].to_numpy().sum()
    assert any_sum > majority_sum > 0


# --- VinDr-CXR (PhysioNet), fake tree ----------------------------------------------------


def _fake_physionet(root: Path, n_train: int = 12, n_test: int = 4) -> Path:
    """A PhysioNet VinDr-CXR tree: 3 readers per train image, a consensus row per test image.

    Image t000: Cardiomegaly by R1+R2, Pleural effusion by R1, Clavicle fracture by R2 and Rib
    fracture by R3 (Fracture: 2 readers), Nodule/Mass by R1+R2+R3, Other diseases by R3.
    Other train images: Cardiomegaly by R1+R2 on odd ones, else No finding.
    """
    (root / "annotations").mkdir(parents=True)
    rows = []
    for i in range(n_train):
        image_id = f"t{i:03d}"
        for reader in ("R1", "R2", "R3"):
            marked = set()
            if i % 2 and reader in ("R1", "R2"):
                marked.add("Cardiomegaly")
            if i == 0:
                marked |= {
                    "R1": {"Cardiomegaly", "Pleural effusion", "Nodule/Mass"},
                    "R2": {"Cardiomegaly", "Clavicle fracture", "Nodule/Mass"},
                    "R3": {"Rib fracture", "Nodule/Mass", "Other diseases"},
                }[reader]
            values = [int(c in marked) for c in PHYSIONET_LABELS[:-1]] + [int(not marked)]
            rows.append([image_id, reader, *values])
        write_dicom(root / "train" / f"{image_id}.dicom", seed=i)
    pd.DataFrame(rows, columns=["image_id", "rad_ID", *PHYSIONET_LABELS]).to_csv(
        root / "annotations" / "image_labels_train.csv", index=False
    )
    test_columns = [c.replace("Other diseases", "Other disease") for c in PHYSIONET_LABELS]
    test_rows = []
    for i in range(n_test):
        marked = {"Other disease", "Pneumonia"} if i == 0 else set()
        values = [int(c in marked) for c in test_columns[:-1]] + [int(not marked)]
        test_rows.append([f"s{i:03d}", *values])
        write_dicom(root / "test" / f"s{i:03d}.dicom", seed=100 + i)
    pd.DataFrame(test_rows, columns=["image_id", *test_columns]).to_csv(
        root / "annotations" / "image_labels_test.csv", index=False
    )
    return root


def test_physionet_layout_readers_spellings_and_official_split(tmp_path: Path) -> None:
    root = _fake_physionet(tmp_path / "vindr")
    any_ = vindr.parse(root, readers="any").table.set_index("image_id")
    parsed = vindr.parse(root)  # majority by default
    t = parsed.table.set_index("image_id")
    assert parsed.findings[-1] == "Nodule/Mass"
    assert {"Fracture", "Other Disease", "Lung Tumor", "Enlarged PA"} <= set(parsed.findings)
    assert not {"Nodule", "Mass", "No Finding"} & set(parsed.findings)
    assert len(parsed.findings) == 26  # 27 labels, Clavicle + Rib fracture -> Fracture
    first = t.loc["t000"]
    assert first[["Cardiomegaly", "Effusion", "Fracture", "Nodule/Mass"]].tolist() == [1, 0, 1, 1]
    assert first["Other Disease"] == 0 and any_.loc["t000", "Other Disease"] == 1
    assert any_.loc["t000", "Effusion"] == 1
    assert t.loc["t001", "Cardiomegaly"] == 1 and t.loc["t002", "Cardiomegaly"] == 0
    # The test file spells "Other disease": the consensus lands in the same finding.
    assert t.loc["s000", ["Other Disease", "Pneumonia", "Cardiomegaly"]].tolist() == [1, 1, 0]
    assert set(t.loc[t.index.str.startswith("t"), "official_split"]) == {"trainval"}
    assert set(t.loc[t.index.str.startswith("s"), "official_split"]) == {"test"}
    assert parsed.counts == {
        "images_without_3_readers": 0,
        "listed": 16,
        "missing_on_disk": 0,
    }
    assert t["path"].map(lambda p: Path(p).is_absolute() and Path(p).is_file()).all()
    assert "image_id" in parsed.label_policy["patient_id"]


def test_prepare_vindr_end_to_end_through_the_dicom_cache(tmp_path: Path) -> None:
    root = _fake_physionet(tmp_path / "vindr", n_train=20, n_test=5)
    (root / "train" / "t003.dicom").unlink()
    m = prepare("vindr", root, tmp_path / "prep", size=32, progress=False,
                options={"readers": "any"})  # fmt: skip
    assert m.header["counts"]["failed_to_read"] == 0
    assert m.header["counts"]["missing_on_disk"] == 1
    assert m.header["counts"]["prepared"] == 24
    assert m.header["options"] == {"readers": "any"}
    assert m.findings[-1] == "Nodule/Mass"
    t = m.table.set_index("image_id")
    assert set(t.loc[t.index.str.startswith("s"), "split"]) == {"test"}
    assert set(t.loc[t.index.str.startswith("t"), "split"]) == {"train", "val"}
    reloaded = load_manifest(tmp_path / "prep")  # runs the leakage check again
    assert reloaded.table.groupby("patient_id")["split"].nunique().max() == 1
    cache = m.cache()
    assert cache.shape == (24, 32, 32)
    assert cache.reshape(24, -1).std(axis=1).min() > 1, "every slot holds a decoded DICOM"
    header = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert header["label_policy"]["readers"].startswith("any")


# --- PadChest, fake tree -----------------------------------------------------------------


def test_padchest_labels_skips_and_counts(tmp_path: Path) -> None:
    parsed = padchest.parse(fake_padchest(tmp_path / "pc"))
    t = parsed.table.set_index("image_id")
    assert set(t.index) == {"a.png", "b.png", "c.png", "j.png", "k.png"} | {
        f"n{i}.png" for i in range(8)
    }
    assert parsed.counts == {
        "listed": len(PADCHEST_ROWS),
        "other_projection": 1,
        "known_broken": 1,
        "no_labels": 2,
        "excluded_label": 1,
        "missing_on_disk": 1,
        "conflicts": 1,
    }
    assert parsed.label_policy["known_broken"] == {BROKEN: padchest.KNOWN_BROKEN[BROKEN]}
    assert parsed.findings == list(padchest.PADCHEST_FINDINGS)
    assert {"Effusion", "Hernia", "COPD", "Support Devices", "Fracture"} <= set(parsed.findings)
    values = t[parsed.findings]
    assert values.notna().all().all(), "PadChest labels every mapped finding: 0 or 1"
    assert values.loc[["a.png", "k.png"]].to_numpy().sum() == 0
    on = values.loc["b.png"]
    assert set(on[on == 1].index) == {"Effusion", "Cardiomegaly", "COPD"}
    on = values.loc["c.png"]
    assert set(on[on == 1].index) == {
        "Effusion", "Pneumothorax", "Pleural Thickening", "Calcification",
    }  # fmt: skip
    assert values.loc["j.png", "Nodule"] == 1
    assert t.loc["b.png", ["view", "sex", "patient_id", "study_id"]].tolist() == [
        "AP", "M", "p2", "st1",
    ]  # fmt: skip
    assert t.loc["b.png", "age"] == 65 and np.isnan(t.loc["a.png", "age"])
    assert "official_split" not in parsed.table
    lateral = padchest.parse(tmp_path / "pc", projections=["L"])
    assert lateral.table["image_id"].tolist() == ["d.png"]


def test_prepare_padchest_16bit_png(tmp_path: Path) -> None:
    root = fake_padchest(tmp_path / "pc")
    m = prepare("padchest", root, tmp_path / "prep", size=32, progress=False)
    assert m.header["counts"]["failed_to_read"] == 0
    assert m.header["counts"]["prepared"] == 13
    assert m.cache().reshape(13, -1).std(axis=1).min() > 1


# --- generic CSV folder ------------------------------------------------------------------


def _fake_csv_folder(root: Path) -> Path:
    for i in range(6):
        write_png16(root / "imgs" / f"{i}.png", seed=i)
    absolute = root / "imgs" / "5.png"
    pd.DataFrame({
        "path": ["imgs/0.png", "imgs/1.png", "imgs/2.png", "imgs/3.png", "imgs/gone.png",
                 str(absolute)],
        "subject": ["a", "a", "b", "c", "d", "e"],
        "effusion": ["1", "0", "", "-1", "1", "0"],
        "My Finding": [0, 1, 1, 0, 0, 1],
        "No Finding": [0, 0, 0, 1, 0, 0],
        "Age": [40, 41, 50, 60, 70, 80],
        "Sex": ["male", "M", "female", "F", "?", "M"],
        "note": ["x", "y", "z", "", "", ""],
    }).to_csv(root / "labels.csv", index=False)  # fmt: skip
    return root


def test_csv_folder_defaults_and_values(tmp_path: Path) -> None:
    root = _fake_csv_folder(tmp_path / "mine")
    parsed = folder.parse(root, labels="labels.csv", patient_col="subject")
    assert parsed.findings == ["Effusion", "My Finding"]
    t = parsed.table.set_index("image_id")
    assert len(t) == 5 and parsed.counts == {"listed": 6, "missing_on_disk": 1}
    effusion = t["Effusion"].tolist()
    assert effusion[:2] == [1, 0] and np.isnan(effusion[2]) and np.isnan(effusion[3])
    assert t["My Finding"].tolist() == [0, 1, 1, 0, 1]
    assert t["patient_id"].tolist() == ["a", "a", "b", "c", "e"]
    assert t["sex"].tolist() == ["M", "M", "F", "F", "M"]
    assert t["age"].tolist() == [40, 41, 50, 60, 80]
    assert t["path"].map(lambda p: Path(p).is_file()).all()
    assert "official_split" not in parsed.table
    own = folder.parse(root, labels=root / "labels.csv", findings=["My Finding"])
    assert own.findings == ["My Finding"]
    assert (own.table["patient_id"] == own.table["image_id"]).all()
    assert own.label_policy["patient_id"].startswith("WARNING")


def test_csv_folder_official_split_column(tmp_path: Path) -> None:
    root = _fake_csv_folder(tmp_path / "mine")
    table = pd.read_csv(root / "labels.csv")
    table["split"] = ["trainval", "trainval", "test", "", "test", "trainval"]
    table.to_csv(root / "labels.csv")  # with pandas' index: an "Unnamed: 0" column
    parsed = folder.parse(root, labels="labels.csv", patient_col="subject")
    assert parsed.findings == ["Effusion", "My Finding"]
    assert parsed.table["official_split"].tolist() == ["trainval", "trainval", "test", "",
                                                      "trainval"]  # fmt: skip


# --- bad input ---------------------------------------------------------------------------


def _kaggle_tree(root: Path, rows: str) -> Path:
    root.mkdir(parents=True)
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n" + rows
    )
    write_dicom(root / "train" / "x.dicom")
    return root


@pytest.mark.parametrize(
    ("make", "call", "message"),
    [
        (lambda r: r.mkdir(), lambda r: vindr.parse(r), "no VinDr labels"),
        (lambda r: _kaggle_tree(r, "x,Heart attack,3,R1,1,1,2,2\n"), lambda r: vindr.parse(r),
         r"train\.csv: unknown VinDr label 'Heart attack'"),
        (lambda r: _kaggle_tree(r, "x,No finding,14,R1,,,,\n"),
         lambda r: vindr.parse(r, readers="most"), "did you mean 'majority'"),
        (lambda r: _kaggle_tree(r, "y,No finding,14,R1,,,,\n"), lambda r: vindr.parse(r),
         "none of the 1 images listed in .*train.csv was found"),
        (lambda r: (r / "annotations").mkdir(parents=True)
         or (r / "annotations" / "image_labels_train.csv").write_text("image_id,ILD\nx,1\n"),
         lambda r: vindr.parse(r), r"image_labels_train\.csv lacks the column\(s\) rad_id"),
        (lambda r: r.mkdir(), lambda r: padchest.parse(r), "no PadChest labels"),
        (lambda r: r.mkdir() or (r / padchest.LABELS_CSV).write_text("ImageID,ImageDir\n"),
         lambda r: padchest.parse(r), "lacks the column.*Labels"),
        (lambda r: r.mkdir(), lambda r: padchest.parse(r, projections=["LL"]),
         "unknown PadChest projection 'LL'"),
        (lambda r: r.mkdir(), lambda r: folder.parse(r), "needs --labels"),
        (lambda r: r.mkdir(), lambda r: folder.parse(r, labels="nope.csv"), "nope.csv not found"),
        (_fake_csv_folder, lambda r: folder.parse(r, labels="labels.csv", path_col="file"),
         "labels.csv lacks the column.*file"),
        (_fake_csv_folder, lambda r: folder.parse(r, labels="labels.csv", findings=["efusion"]),
         "did you mean 'effusion'"),
        (_fake_csv_folder, lambda r: folder.parse(r, labels="labels.csv", findings=["note"]),
         "column 'note' holds 'x'"),
    ],
)  # fmt: skip
def test_bad_input_names_the_problem(tmp_path: Path, make, call, message: str) -> None:
    root = tmp_path / "data"
    make(root)
    with pytest.raises(UserError, match=message):
        call(root)


def test_cli_flags_reach_the_parsers() -> None:
    p = build_parser()
    a = p.parse_args(["prepare", "vindr", "--root", "r", "--out", "o", "--readers", "any"])
    assert a.opt_readers == "any"
    assert p.parse_args(["prepare", "vindr", "--root", "r", "--out", "o"]).opt_readers == (
        "majority"
    )
    a = p.parse_args(["prepare", "padchest", "--root", "r", "--out", "o", "--projections", "L"])
    assert a.opt_projections == ["L"]
    a = p.parse_args(["prepare", "csv", "--root", "r", "--out", "o", "--labels", "l.csv",
                      "--patient-col", "pid", "--findings", "A", "B"])  # fmt: skip
    assert (a.opt_labels, a.opt_path_col, a.opt_patient_col, a.opt_findings) == (
        "l.csv", "path", "pid", ["A", "B"],
    )  # fmt: skip
