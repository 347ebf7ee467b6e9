"""Fake dataset trees for tests: real layouts and label files, tiny images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

from cxrkit.data.datasets import padchest
from cxrkit.data.datasets.uncertainty import LABELER_COLUMNS
from cxrkit.data.labels import NO_FINDING

PIXELS = np.full((32, 32), 128, dtype=np.uint8)


def write_images(base: Path, relative_paths: list[str]) -> None:
    for rel in relative_paths:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), PIXELS)


def chexpert_rows(paths: list[str], values: list[str], *, view: str = "Frontal") -> pd.DataFrame:
    """CheXpert CSV rows: every finding cell cycles through ``values`` (row + column)."""
    rows = []
    for i, path in enumerate(paths):
        cells = {c: values[(i + j) % len(values)] for j, c in enumerate(LABELER_COLUMNS)}
        rows.append(
            {
                "Path": path,
                "Sex": "Male" if i % 2 else "Female",
                "Age": 40 + i,
                "Frontal/Lateral": view,
                "AP/PA": "PA" if view == "Frontal" else "",
                NO_FINDING: "",
                **cells,
            }
        )
    return pd.DataFrame(rows)


def fake_chexpert(root: Path, *, prefix: str = "CheXpert-v1.0-small") -> Path:
    """A small CheXpert tree: 8 train patients (2 studies, frontal + lateral each), 3 valid
    patients; the first train row says No Finding with Cardiomegaly (a conflict) and the
    second No Finding with Support Devices (not a conflict)."""
    train_paths = [
        f"{prefix}/train/patient{p:05d}/study{s}/view{v}_{kind}.jpg"
        for p in range(1, 9)
        for s in (1, 2)
        for v, kind in ((1, "frontal"), (2, "lateral"))
    ]
    train = chexpert_rows(train_paths, ["1.0", "0.0", "-1.0", ""])
    train.loc[train["Path"].str.contains("lateral"), ["Frontal/Lateral", "AP/PA"]] = ["Lateral", ""]
    train.loc[0, [NO_FINDING, "Cardiomegaly"]] = ["1.0", "1.0"]
    train.loc[1, LABELER_COLUMNS] = ""
    train.loc[1, [NO_FINDING, "Support Devices"]] = ["1.0", "1.0"]
    valid_paths = [
        f"{prefix}/valid/patient{p:05d}/study1/view1_frontal.jpg" for p in (64541, 64542, 64543)
    ]
    valid = chexpert_rows(valid_paths, ["1.0", "0.0"])
    root.mkdir(parents=True)
    train.to_csv(root / "train.csv", index=False)
    valid.to_csv(root / "valid.csv", index=False)
    write_images(root, [p.split("/", 1)[1] for p in train_paths + valid_paths])
    return root


def dicom_bytes(ds: Dataset, **kwargs: Any) -> bytes:
    """``ds`` as the bytes of a DICOM file (``save_as`` options in ``kwargs``)."""
    buf = io.BytesIO()
    ds.save_as(buf, **(kwargs or {"enforce_file_format": True}))
    return buf.getvalue()


def write_png16(path: Path, seed: int = 0) -> None:
    """A 36 x 32 16-bit grayscale PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 65535, (36, 32), dtype=np.uint16)
    assert cv2.imwrite(str(path), pixels)


BROKEN = next(iter(padchest.KNOWN_BROKEN))
PADCHEST_ROWS = [
    # ImageID, ImageDir, PatientID, Projection, Labels
    ("a.png", "0", "p1", "PA", "['normal']"),
    ("b.png", "0", "p2", "AP", "['pleural effusion', ' cardiomegaly', 'COPD signs']"),
    ("c.png", "1", "p3", "AP_horizontal", "['hydropneumothorax', 'calcified pleural thickening']"),
    ("d.png", "1", "p3", "L", "['normal']"),
    ("e.png", "1", "p4", "PA", ""),
    ("f.png", "1", "p5", "PA", "['unchanged']"),
    (BROKEN, "0", "p6", "PA", "['normal']"),
    ("h.png", "0", "p7", "PA", "['exclude']"),
    ("i.png", "0", "p8", "PA", "['normal']"),  # not on disk
    ("j.png", "0", "p9", "PA", "['normal', 'nodule']"),
    ("k.png", "0", "p10", "PA", "['scoliosis']"),
] + [(f"n{i}.png", "1", f"q{i}", "PA", "['normal']") for i in range(8)]
#: Row k's ``Manufacturer_DICOM``: PadChest's spellings, padded as a raw cell may be, or blank.
MANUFACTURERS = ("PhilipsMedicalSystems", " Imaging Dynamics Company Ltd ", "")


def fake_padchest(
    root: Path, rows: list[tuple[str, str, str, str, str]] = PADCHEST_ROWS, *, scanner: bool = True
) -> Path:
    """A PadChest tree: the labels CSV of ``rows`` (``ImageID, ImageDir, PatientID, Projection,
    Labels``) and their 16-bit PNGs (``BROKEN`` truncated, ``i.png`` absent); with ``scanner``
    the CSV has ``Manufacturer_DICOM``, row k's being ``MANUFACTURERS[k % 3]``."""
    root.mkdir(parents=True)
    records = []
    for k, (image_id, image_dir, patient, projection, labels) in enumerate(rows):
        if image_id == BROKEN:
            (root / image_dir).mkdir(parents=True, exist_ok=True)
            (root / image_dir / image_id).write_bytes(b"\x89PNG truncated")
        elif image_id != "i.png":
            write_png16(root / image_dir / image_id, seed=k)
        records.append({
            "Unnamed: 0": k, "ImageID": image_id, "ImageDir": image_dir,
            "StudyDate_DICOM": "20150312", "StudyID": f"st{k}", "PatientID": patient,
            "PatientBirth": "1950.0" if k else "", "PatientSex_DICOM": "M" if k % 2 else "F",
            "ViewPosition_DICOM": "POSTEROANTERIOR", "Projection": projection,
            "MethodProjection": "Manual review of DICOM fields", "Labels": labels,
        })  # fmt: skip
        if scanner:
            records[-1]["Manufacturer_DICOM"] = MANUFACTURERS[k % len(MANUFACTURERS)]
    pd.DataFrame(records).to_csv(root / padchest.LABELS_CSV, index=False)
    return root
