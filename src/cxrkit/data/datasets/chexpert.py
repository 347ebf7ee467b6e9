"""CheXpert (Stanford; Irvin et al., AAAI 2019), full (``CheXpert-v1.0``) or ``-small``.

Expected layout under ROOT (the folder the archive unpacks to)::

    train.csv, valid.csv
    train/patient00001/study1/view1_frontal.jpg ...
    valid/patient64541/study1/view1_frontal.jpg ...

The CSVs' ``Path`` starts with the archive's folder name
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), i.e. it is relative to
ROOT's parent. A path whose first folder is a folder of ROOT (``train/...``) is read relative
to ROOT; any other first folder is taken to be ROOT itself, so a renamed ROOT still works.

Labels: the CheXpert labeler's 1 / 0 / -1 / blank (see :mod:`cxrkit.data.datasets.uncertainty`).
Split: ``train.csv`` -> ``trainval`` (divided by patient into train and val); ``valid.csv``
-> ``test``: its images were labelled by the consensus of three board-certified radiologists
(no uncertain or blank labels) and its patients are not in train.csv, so it is the best
test set distributed with the dataset (the official test set is hidden).
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
    read_labeler_csv,
    tokens,
)
from cxrkit.errors import UserError

#: CSV -> official split.
LISTINGS: tuple[tuple[str, str], ...] = (("train.csv", "trainval"), ("valid.csv", "test"))
METADATA: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
#: The five findings of the CheXpert competition, in canonical spelling.
COMPETITION: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion")
FINDING_SETS: dict[str, tuple[str, ...]] = {"all": LABELER_FINDINGS, "competition": COMPETITION}
VIEWS: tuple[str, ...] = ("frontal", "lateral", "all")
SEX: dict[str, str] = {"Male": "M", "Female": "F"}
_IDS = r"(patient\d+)/(study\d+)/[^/]+$"


def read_listings(root: Path) -> pd.DataFrame:
    """train.csv and valid.csv, one row per listed image, with ``official_split`` and
    ``listing`` (the CSV's name) columns; labeler columns as float (1 / 0 / -1 / NaN)."""
    frames = [
        read_labeler_csv(root / name, METADATA).assign(official_split=split, listing=name)
        for name, split in LISTINGS
    ]
    return pd.concat(frames, ignore_index=True)


def relative_paths(root: Path, paths: pd.Series) -> pd.Series:
    """The CSV ``Path`` values relative to ROOT (see the module docstring)."""
    parts = paths.str.split("/", n=1, expand=True).reindex(columns=[0, 1])
    inside = {first: (root / first).is_dir() for first in parts[0].unique()}
    return paths.where(parts[0].map(inside).astype(bool), parts[1].fillna(""))


def select_views(frame: pd.DataFrame, views: str, projections: str | Sequence[str]) -> np.ndarray:
    """Mask of the rows whose ``Frontal/Lateral`` is ``views`` (or any, for ``all``) and whose
    ``AP/PA`` is one of ``projections`` (any, for ``all``; most laterals have a blank AP/PA)."""
    if views not in VIEWS:
        raise UserError(f"--views must be one of {', '.join(VIEWS)}, got {views!r}")
    keep = np.ones(len(frame), dtype=bool)
    if views != "all":
        keep &= (frame["Frontal/Lateral"].str.lower() == views).to_numpy()
    wanted = {t.upper() for t in tokens(projections)}
    if "ALL" not in wanted:
        keep &= frame["AP/PA"].str.upper().isin(wanted).to_numpy()
    return keep


def parse(
    root: str | Path,
    uncertain: str | Sequence[str] = DEFAULT_UNCERTAIN,
    blank: str = "zeros",
    views: str = "frontal",
    projections: str | Sequence[str] = "all",
    findings: str = "all",
) -> Parsed:
    """Parse a CheXpert folder into a :class:`Parsed` table (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    policy = UncertaintyPolicy.from_options(uncertain, blank)
    if findings not in FINDING_SETS:
        raise UserError(f"--findings must be one of {', '.join(FINDING_SETS)}, got {findings!r}")
    listed = read_listings(root)
    keep = select_views(listed, views, projections)
    frame = listed[keep].reset_index(drop=True)
    if frame.empty:
        raise UserError(
            f"no image of {root}/train.csv or valid.csv matches --views {views} --projections "
            f"{' '.join(tokens(projections))}; the files list Frontal/Lateral "
            f"{sorted(set(listed['Frontal/Lateral']))} and AP/PA {sorted(set(listed['AP/PA']))}"
        )
    relative = relative_paths(root, frame["Path"])
    paths = f"{root.resolve()}{os.sep}" + relative
    on_disk = np.fromiter(map(os.path.isfile, paths.tolist()), dtype=bool, count=len(paths))
    n_missing = int((~on_disk).sum())
    if not on_disk.any():
        raise UserError(
            f"none of the {len(frame)} selected images of train.csv/valid.csv was found under "
            f"{root} (e.g. {paths.iloc[0]}); point --root at the folder holding train.csv"
        )
    frame, relative, paths = frame[on_disk], relative[on_disk], paths[on_disk]
    ids = relative.str.extract(_IDS)
    if ids[0].isna().any():
        bad = ids[0].isna().to_numpy().argmax()
        raise UserError(
            f"{root / frame['listing'].iloc[bad]}: column 'Path' holds "
            f"{frame['Path'].iloc[bad]!r}; expected .../patientNNNNN/studyN/<image>.jpg"
        )
    chosen = FINDING_SETS[findings]
    labels = policy.apply(
        frame, chosen, source="train.csv (labeler) + valid.csv (radiologist consensus)"
    )
    projection = frame["AP/PA"]
    table = pd.DataFrame(
        {
            "image_id": relative,
            "path": paths,
            "patient_id": ids[0],
            "study_id": ids[0] + "/" + ids[1],
            "view": projection.where(projection != "", frame["Frontal/Lateral"].str.upper()),
            "sex": frame["Sex"].map(SEX).fillna(""),
            "age": pd.to_numeric(frame["Age"], errors="coerce"),
        }
    ).reset_index(drop=True)
    for j, finding in enumerate(chosen):
        table[finding] = labels.values[:, j]
    table["official_split"] = frame["official_split"].to_numpy()
    counts = {
        "listed": len(listed),
        "filtered_out": int((~keep).sum()),
        "missing_on_disk": n_missing,
        "conflicts": labels.conflicts,
    }
    return Parsed(table=table, findings=list(chosen), label_policy=labels.policy, counts=counts)


SPEC = register(
    DatasetSpec(
        name="chexpert",
        title="CheXpert v1.0 (full or -small), Stanford",
        layout="ROOT/train.csv, ROOT/valid.csv, ROOT/train/patientNNNNN/studyN/viewN_*.jpg, "
        "ROOT/valid/...; CSV paths relative to ROOT's parent (ROOT = CheXpert-v1.0-small)",
        parse=parse,
        options=(
            UNCERTAIN_OPTION,
            BLANK_OPTION,
            Option("views", "Frontal/Lateral filter", default="frontal", choices=VIEWS),
            Option(
                "projections",
                "AP/PA filter, e.g. AP PA (most laterals have none: kept only by all)",
                default="all",
                multiple=True,
            ),
            Option(
                "findings",
                "all = the 13 labeler findings; competition = Atelectasis, Cardiomegaly, "
                "Consolidation, Edema, Effusion",
                default="all",
                choices=tuple(FINDING_SETS),
            ),
        ),
    )
)
