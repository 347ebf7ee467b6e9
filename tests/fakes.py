"""Fake dataset trees for tests: real layouts and label files, tiny images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

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
