"""MIMIC-CXR-JPG v2.0.0 (Johnson et al., PhysioNet 2019).

Expected layout under ROOT (as PhysioNet distributes it; each CSV may also be ``.csv.gz``)::

    mimic-cxr-2.0.0-chexpert.csv    subject_id, study_id, 13 findings + No Finding (per study)
    mimic-cxr-2.0.0-split.csv       dicom_id, study_id, subject_id, split
    mimic-cxr-2.0.0-metadata.csv    dicom_id, ViewPosition, ...
    files/p10/p10000032/s50414267/<dicom_id>.jpg     (pNN: first two digits of subject_id)

One row per image (``dicom_id``) of the split file, labelled with its study's CheXpert-labeler
labels (see :mod:`cxrkit.data.datasets.uncertainty`). Images of studies absent from the label file
are left out and counted (``counts.unlabelled``). The official,
patient-wise split is kept: train / validate / test -> ``train`` / ``val`` / ``test``.
MIMIC-CXR-JPG has no sex or age (they live in MIMIC-IV): ``sex`` is "" and ``age`` NaN.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import DatasetSpec, Option, Parsed, register
from cxrkit.data.datasets.uncertainty import (
    BLANK_OPTION,
    DEFAULT_UNCERTAIN,
    LABELER_FINDINGS,
    UNCERTAIN_OPTION,
    UncertaintyPolicy,
    read_csv_columns,
    read_labeler_csv,
    tokens,
)
from cxrkit.errors import UserError

LABELS_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
#: MIMIC's split names -> cxrkit's.
SPLITS: dict[str, str] = {"train": "train", "validate": "val", "test": "test"}
DEFAULT_VIEWS: tuple[str, ...] = ("PA", "AP")


def find_csv(root: Path, name: str) -> Path:
    """``ROOT/name`` or ``ROOT/name.gz``; a UserError naming both when neither exists."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{root / name} (or .gz) not found; MIMIC-CXR-JPG ships it at its top level")


def read_images(root: Path) -> pd.DataFrame:
    """The split file joined with the metadata's ``ViewPosition`` (blank when absent), with
    ``split`` mapped to cxrkit's names; unknown split values, or a subject in two splits,
    raise a UserError."""
    split_csv = find_csv(root, SPLIT_CSV)
    images = read_csv_columns(split_csv, ("dicom_id", "study_id", "subject_id", "split"))
    unknown = sorted(set(images["split"]) - set(SPLITS))
    if unknown:
        raise UserError(
            f"{split_csv}: column 'split' holds {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(SPLITS)}"
        )
    mixed = images.groupby("subject_id")["split"].nunique()
    if (mixed > 1).any():
        raise UserError(
            f"{split_csv}: subject {mixed[mixed > 1].index[0]} is in several splits; "
            "the official split must be patient-wise"
        )
    meta = read_csv_columns(find_csv(root, METADATA_CSV), ("dicom_id", "ViewPosition"))
    images = images.merge(meta.drop_duplicates("dicom_id"), on="dicom_id", how="left")
    return images.assign(
        split=images["split"].map(SPLITS), ViewPosition=images["ViewPosition"].fillna("")
    )


def read_labels(root: Path) -> pd.DataFrame:
    """The study-level labeler CSV; a study listed twice raises a UserError."""
    labels_csv = find_csv(root, LABELS_CSV)
    labels = read_labeler_csv(labels_csv, ("subject_id", "study_id"))
    twice = labels["study_id"].duplicated()
    if twice.any():
        raise UserError(
            f"{labels_csv}: column 'study_id' lists study {labels['study_id'][twice].iloc[0]} "
            "more than once; expected one row per study"
        )
    return labels


def image_paths(root: Path, images: pd.DataFrame) -> pd.Series:
    """``ROOT/files/pNN/p<subject>/s<study>/<dicom_id>.jpg`` for every row, absolute."""
    subject = images["subject_id"]
    return (
        f"{root.resolve() / 'files'}{os.sep}p"
        + subject.str[:2]
        + f"{os.sep}p"
        + subject
        + f"{os.sep}s"
        + images["study_id"]
        + os.sep
        + images["dicom_id"]
        + ".jpg"
    )


def parse(
    root: str | Path,
    uncertain: str | Sequence[str] = DEFAULT_UNCERTAIN,
    blank: str = "zeros",
    views: str | Sequence[str] = DEFAULT_VIEWS,
) -> Parsed:
    """Parse a MIMIC-CXR-JPG folder into a :class:`Parsed` table (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    policy = UncertaintyPolicy.from_options(uncertain, blank)
    images = read_images(root)
    labels = read_labels(root)
    wanted = {t.upper() for t in tokens(views)}
    keep = images["ViewPosition"].str.upper().isin(wanted) | ("ALL" in wanted)
    if not keep.any():
        raise UserError(
            f"no image has a ViewPosition in --views {' '.join(sorted(wanted))}; the metadata "
            f"lists {', '.join(sorted(set(images['ViewPosition']) - {''}))}"
        )
    frame = images[keep].merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    labelled = (frame.pop("_merge") == "both").to_numpy()
    if not labelled.any():
        raise UserError(
            f"none of the {len(frame)} selected images has its (subject_id, study_id) in "
            f"{root}/{LABELS_CSV}(.gz)"
        )
    frame = frame[labelled]
    paths = image_paths(root, frame)
    on_disk = np.fromiter(map(os.path.isfile, paths.tolist()), dtype=bool, count=len(paths))
    if not on_disk.any():
        raise UserError(
            f"none of the {len(frame)} selected, labelled images was found under {root}/files "
            f"(e.g. {paths.iloc[0]})"
        )
    frame, paths = frame[on_disk].reset_index(drop=True), paths[on_disk].reset_index(drop=True)
    findings = list(LABELER_FINDINGS)
    result = policy.apply(frame, findings, source=f"{LABELS_CSV} (CheXpert labeler, per study)")
    table = pd.DataFrame(
        {
            "image_id": frame["dicom_id"],
            "path": paths,
            "patient_id": frame["subject_id"],
            "study_id": frame["study_id"],
            "view": frame["ViewPosition"],
            "sex": "",
            "age": np.nan,
        }
    )
    for j, finding in enumerate(findings):
        table[finding] = result.values[:, j]
    table["official_split"] = frame["split"]
    counts = {
        "listed": len(images),
        "filtered_out": int((~keep).sum()),
        "unlabelled": int((~labelled).sum()),
        "missing_on_disk": int((~on_disk).sum()),
        "conflicts": result.conflicts,
    }
    return Parsed(table=table, findings=findings, label_policy=result.policy, counts=counts)


SPEC = register(
    DatasetSpec(
        name="mimic",
        title="MIMIC-CXR-JPG v2.0.0, PhysioNet",
        layout=f"ROOT/{LABELS_CSV}, ROOT/{SPLIT_CSV}, ROOT/{METADATA_CSV} (each optionally .gz), "
        "ROOT/files/pNN/p<subject_id>/s<study_id>/<dicom_id>.jpg",
        parse=parse,
        options=(
            UNCERTAIN_OPTION,
            BLANK_OPTION,
            Option(
                "views",
                'ViewPosition filter, e.g. PA AP LATERAL "AP AXIAL", or all',
                default=",".join(DEFAULT_VIEWS),
                multiple=True,
            ),
        ),
    )
)
