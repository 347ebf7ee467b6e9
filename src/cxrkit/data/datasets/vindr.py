"""VinDr-CXR: the PhysioNet release and the Kaggle VinBigData competition release.

Expected layout under ROOT, PhysioNet first (``physionet.org/files/vindr-cxr/1.0.0``)::

    annotations/image_labels_train.csv   image_id, rad_id, 28 label columns (0/1): one row per
                                         image and reader, 3 readers per image
    annotations/image_labels_test.csv    image_id, 28 label columns: the consensus of 5 readers
    train/<image_id>.dicom, test/<image_id>.dicom

Kaggle VinBigData (``vinbigdata-chest-xray-abnormalities-detection``)::

    train.csv    image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max: one row per
                 box (several boxes of one finding by one reader are one vote); "No finding"
                 rows have no box
    train/<image_id>.dicom

The readers' labels are combined per image (``--readers``): ``any`` marks a finding when at
least one reader did, ``majority`` when more than half of the image's readers did (2 of 3).
PhysioNet's train images are the official train+val (``trainval``), its test images the
official test; Kaggle's labelled images have no official split. VinDr publishes no patient
ids: each image is its own patient. VinDr's ``Nodule/Mass`` is one label, kept as the
dataset-specific finding ``Nodule/Mass`` (not ``Nodule``, not ``Mass``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import DatasetSpec, Option, Parsed, index_files, register
from cxrkit.data.datasets.folder import base_table, keep_found, read_table, require_dir, to_labels
from cxrkit.data.labels import CANONICAL, NO_FINDING
from cxrkit.errors import UserError, did_you_mean

NODULE_MASS = "Nodule/Mass"  # dataset-specific: no canonical name covers "nodule or mass"
READERS = ("any", "majority")
SUFFIXES = (".dicom", ".dcm")
TRAIN_LABELS = Path("annotations/image_labels_train.csv")
TEST_LABELS = Path("annotations/image_labels_test.csv")
KAGGLE_LABELS = Path("train.csv")

#: VinDr spelling (matched ignoring case) -> cxrkit finding name.
VINDR_MAP: dict[str, str] = {
    "Aortic enlargement": "Aortic Enlargement",
    "Atelectasis": "Atelectasis",
    "Calcification": "Calcification",
    "Cardiomegaly": "Cardiomegaly",
    "Clavicle fracture": "Fracture",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Emphysema": "Emphysema",
    "Enlarged PA": "Enlarged PA",
    "ILD": "ILD",
    "Infiltration": "Infiltration",
    "Lung Opacity": "Lung Opacity",
    "Lung cavity": "Lung Cavity",
    "Lung cyst": "Lung Cyst",
    "Mediastinal shift": "Mediastinal Shift",
    "Nodule/Mass": NODULE_MASS,
    "Other lesion": "Other Lesion",
    "Pleural effusion": "Effusion",
    "Pleural thickening": "Pleural Thickening",
    "Pneumothorax": "Pneumothorax",
    "Pulmonary fibrosis": "Fibrosis",
    "Rib fracture": "Fracture",
    "COPD": "COPD",
    "Lung tumor": "Lung Tumor",
    "Pneumonia": "Pneumonia",
    "Tuberculosis": "Tuberculosis",
    "Other diseases": "Other Disease",  # image_labels_train.csv
    "Other disease": "Other Disease",  # image_labels_test.csv
    "No finding": NO_FINDING,
}
#: The 14 box classes of Kaggle's train.csv (class_id 0..13); class 14 is "No finding".
KAGGLE_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)
KAGGLE_MAP = {spelling: VINDR_MAP[spelling] for spelling in (*KAGGLE_CLASSES, "No finding")}


class Part(NamedTuple):
    """Labelled images of one release part: per-image labels, their label file, the image
    folder and the official split."""

    labels: pd.DataFrame
    file: Path
    folder: str
    split: str


def finding_order(names: list[str]) -> list[str]:
    """``names`` in canonical order, dataset-specific names (``Nodule/Mass``) last."""
    rank = {name: i for i, name in enumerate(CANONICAL)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def vindr_name(label: str, file: Path, spellings: dict[str, str] = VINDR_MAP) -> str:
    """The cxrkit name of the VinDr ``label`` (any case) read from ``file``; a label not in
    ``spellings`` raises a UserError naming the file and the closest labels."""
    key = label.strip().lower()
    for spelling, name in spellings.items():
        if spelling.lower() == key:
            return name
    raise UserError(f"{file}: {did_you_mean(label.strip(), spellings, what='VinDr label')}")


def aggregate_readers(votes: pd.DataFrame, readers: str) -> tuple[pd.DataFrame, pd.Series]:
    """Per-image labels from per-reader labels.

    ``votes`` has one row per (image, reader), indexed by image id, 1/0/NaN per finding.
    ``any``: 1 when at least one reader marked the finding; ``majority``: 1 when more than
    half of the readers who labelled it did (2 of VinDr's 3); NaN when none labelled it.
    Returns the labels (one row per image) and each image's number of readers.
    """
    grouped = votes.groupby(level=0, sort=False)
    positive, labelled = grouped.sum(), grouped.count()
    hit = positive >= 1 if readers == "any" else 2 * positive > labelled
    return hit.astype(np.float32).where(labelled > 0), grouped.size()


def _label_columns(table: pd.DataFrame, file: Path) -> pd.DataFrame:
    """One row per row of an image_labels_*.csv file, indexed by image id, one float32 column
    per finding; Clavicle and Rib fracture merge into Fracture (either one marks it)."""
    out: dict[str, np.ndarray] = {}
    for column in table.columns:
        if column.lower() in ("image_id", "rad_id") or column.startswith("Unnamed"):
            continue
        name = vindr_name(column, file)
        if name != NO_FINDING:
            values = to_labels(table[column], column=column, file=file)
            out[name] = np.fmax(out[name], values) if name in out else values
    if not out:
        raise UserError(f"{file} has no VinDr label column (e.g. 'Cardiomegaly')")
    return pd.DataFrame(out, index=table["image_id"].str.strip())


def _box_votes(table: pd.DataFrame, file: Path) -> tuple[pd.DataFrame, int]:
    """One row per (image, reader) of Kaggle's box file, 1/0 per box class; and the number of
    images where a reader marked both "No finding" and a finding (the finding is kept)."""
    classes = table["class_name"].str.strip()
    names = {c: vindr_name(c, file, KAGGLE_MAP) for c in classes.unique()}
    pairs = pd.DataFrame(
        {
            "image_id": table["image_id"].str.strip(),
            "rad_id": table["rad_id"].str.strip(),
            "finding": classes.map(names),
        }
    ).drop_duplicates()
    votes = pd.crosstab([pairs["image_id"], pairs["rad_id"]], pairs["finding"])
    findings = [VINDR_MAP[c] for c in KAGGLE_CLASSES]
    conflicts = 0
    if NO_FINDING in votes:
        both = (votes[NO_FINDING] > 0) & (votes.drop(columns=NO_FINDING).sum(axis=1) > 0)
        conflicts = both[both].index.get_level_values(0).nunique()
    votes = votes.reindex(columns=findings, fill_value=0).astype(np.float32)
    votes.index = votes.index.get_level_values(0)
    return votes, int(conflicts)


def _locate(folder: Path, image_ids: pd.Index) -> list[Path | None]:
    """Each image's DICOM file in ``folder`` (``<image_id>.dicom`` or ``.dcm``), or None."""
    on_disk = index_files([folder], SUFFIXES) if folder.is_dir() else {}
    by_id = {Path(name).stem: path for name, path in on_disk.items()}
    return [by_id.get(image_id) for image_id in image_ids]


def _physionet(root: Path, readers: str) -> tuple[list[Part], dict[str, int], dict[str, Any]]:
    """The PhysioNet release: per-reader train labels (combined by ``readers``) and the test
    consensus."""
    what = "VinDr-CXR image labels (image_id, rad_id, one 0/1 column per label)"
    train = read_table(root / TRAIN_LABELS, ("image_id", "rad_id"), what=what)
    test = read_table(root / TEST_LABELS, ("image_id",), what=what.replace("rad_id, ", ""))
    train_labels, n_readers = aggregate_readers(_label_columns(train, root / TRAIN_LABELS), readers)
    test_labels, _ = aggregate_readers(_label_columns(test, root / TEST_LABELS), "any")
    parts = [
        Part(train_labels, root / TRAIN_LABELS, "train", "trainval"),
        Part(test_labels, root / TEST_LABELS, "test", "test"),
    ]
    counts = {"images_without_3_readers": int((n_readers != 3).sum())}
    policy = {
        "source": f"{TRAIN_LABELS} (3 readers per image), {TEST_LABELS} (consensus of 5 readers, "
        "taken as it is)",
        "merged": {"Fracture": "Clavicle fracture or Rib fracture"},
    }
    return parts, counts, policy


def _kaggle(root: Path, readers: str) -> tuple[list[Part], dict[str, int], dict[str, Any]]:
    """The Kaggle release: train.csv's boxes as per-reader votes, combined by ``readers``."""
    file = root / KAGGLE_LABELS
    what = "VinBigData's train.csv (image_id, class_name, class_id, rad_id, x_min, ...)"
    votes, conflicts = _box_votes(
        read_table(file, ("image_id", "class_name", "rad_id"), what=what), file
    )
    labels, n_readers = aggregate_readers(votes, readers)
    counts = {"images_without_3_readers": int((n_readers != 3).sum()), "conflicts": conflicts}
    policy = {
        "source": f"{KAGGLE_LABELS}: one row per box; a reader's boxes of one class are one vote",
        "not_labelled": "the labels only the PhysioNet release has (COPD, Lung tumor, Pneumonia, "
        "Tuberculosis, Other diseases, fractures, ...) are not in Kaggle's train.csv, so they "
        "are not columns",
    }
    return [Part(labels, file, "train", "")], counts, policy


def parse(root: str | Path, readers: str = "majority") -> Parsed:
    """Parse a VinDr-CXR (PhysioNet) or VinBigData (Kaggle) folder (see module docstring)."""
    root = require_dir(root)
    if readers not in READERS:
        raise did_you_mean(readers, READERS, what="--readers value")
    if (root / TRAIN_LABELS).is_file():
        parts, counts, policy = _physionet(root, readers)
    elif (root / KAGGLE_LABELS).is_file():
        parts, counts, policy = _kaggle(root, readers)
    else:
        raise UserError(
            f"no VinDr labels in {root}: expected {root / TRAIN_LABELS} (PhysioNet VinDr-CXR) "
            f"or {root / KAGGLE_LABELS} (Kaggle VinBigData)"
        )
    frame = pd.concat([p.labels.assign(official_split=p.split) for p in parts])
    frame = frame.rename_axis("image_id").reset_index()
    paths = [path for p in parts for path in _locate(root / p.folder, p.labels.index)]
    counts["listed"] = len(frame)
    frame, counts["missing_on_disk"] = keep_found(
        frame,
        paths,
        source=" and ".join(str(p.file) for p in parts),
        where=" or ".join(str(root / p.folder) for p in parts),
    )
    findings = finding_order([c for c in frame if c not in ("image_id", "official_split", "path")])
    table = base_table(frame, image_id="image_id", patient_id=None)
    for finding in findings:
        table[finding] = frame[finding].to_numpy(np.float32)
    table["official_split"] = frame["official_split"].to_numpy()
    combine = (
        "at least one reader marked it"
        if readers == "any"
        else "more than half of the image's readers marked it (2 of 3)"
    )
    policy |= {
        "readers": f"{readers}: a finding is present when {combine}",
        "dataset_specific": {
            NODULE_MASS: "VinDr's single Nodule/Mass label (no Nodule or Mass column)"
        },
        "patient_id": "VinDr publishes no patient ids: each image is its own patient "
        "(patient_id = image_id), so two images of one patient may fall in different splits",
        "no_finding": "'No finding' is not a column; a reader's finding beside it is kept",
    }
    return Parsed(table=table, findings=findings, label_policy=policy, counts=counts)


SPEC = register(
    DatasetSpec(
        name="vindr",
        title="VinDr-CXR (PhysioNet) or VinBigData (Kaggle), DICOM",
        layout="ROOT/annotations/image_labels_{train,test}.csv + ROOT/{train,test}/*.dicom "
        "(PhysioNet), or ROOT/train.csv + ROOT/train/*.dicom (Kaggle)",
        parse=parse,
        options=(
            Option(
                "readers",
                "how the 3 readers' labels of a training image combine: any (one reader "
                "suffices) or majority (more than half of the readers)",
                default="majority",
                choices=READERS,
            ),
        ),
    )
)
