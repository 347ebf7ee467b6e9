"""NIH ChestX-ray14 (and the phantom set ``cxrkit synth`` writes in the same layout).

Expected layout under ROOT::

    Data_Entry_2017.csv | Data_Entry_2017_v2020.csv (optionally .gz)
    images/*.png  or  images_001/images/*.png ... images_012/images/*.png
    train_val_list.txt, test_list.txt   (optional: the official patient-wise split)
    BBox_List_2017.csv                  (optional: boxes, used by `cam --evaluate`)

The metadata header's ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]``
each span two values (and, unquoted, two header fields); the 2017 file also ends rows with a
comma. Both files are read by position with those names expanded.
"""

from __future__ import annotations

import csv
import gzip
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import DatasetSpec, Option, Parsed, index_files, register
from cxrkit.data.labels import NIH_FINDINGS, NIH_MAP, NO_FINDING, canonical_name
from cxrkit.errors import UserError

METADATA_NAMES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv.gz",
)
REQUIRED = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
# The unquoted header names "OriginalImage[Width,Height]" and "OriginalImagePixelSpacing[x,y]"
# split at their commas into two fields each; a quoted header keeps them whole.
_RENAME = {
    "OriginalImage[Width": ("OriginalImageWidth",),
    "Height]": ("OriginalImageHeight",),
    "OriginalImagePixelSpacing[x": ("PixelSpacingX",),
    "y]": ("PixelSpacingY",),
    "OriginalImage[Width,Height]": ("OriginalImageWidth", "OriginalImageHeight"),
    "OriginalImagePixelSpacing[x,y]": ("PixelSpacingX", "PixelSpacingY"),
}


def find_metadata(root: Path) -> Path:
    """The metadata CSV in ``root``; a clear error when there is none."""
    for name in METADATA_NAMES:
        if (root / name).is_file():
            return root / name
    raise UserError(f"no NIH metadata in {root}: expected one of {', '.join(METADATA_NAMES)}")


def read_metadata(csv_path: Path) -> pd.DataFrame:
    """Read NIH's Data_Entry CSV with its two spanning header names expanded.

    Returns a DataFrame with the REQUIRED columns (as strings) plus the expanded size and
    spacing columns when present. Missing columns raise a UserError naming them and the file.
    """
    opener = gzip.open if csv_path.suffix == ".gz" else open
    with opener(csv_path, "rt", newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise UserError(f"{csv_path} is empty; expected NIH's Data_Entry header")
    names: list[str] = []
    for name in header:
        names.extend(_RENAME.get(name.strip(), (name.strip(),)))
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise UserError(
            f"{csv_path} lacks the column(s) {', '.join(missing)}; expected NIH's header "
            f"({', '.join(REQUIRED)}, ...), found {', '.join(header)}"
        )
    keep = [i for i, n in enumerate(names) if n and not n.startswith("Unnamed")]
    table = pd.read_csv(
        csv_path,
        header=None,
        skiprows=1,
        names=range(len(names)),
        usecols=keep,
        dtype=str,
        keep_default_na=False,
    )
    table.columns = [names[i] for i in keep]
    return table


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _image_folders(root: Path) -> list[Path]:
    folders = [root / "images"] if (root / "images").is_dir() else []
    folders += sorted(p / "images" for p in root.glob("images_*") if (p / "images").is_dir())
    folders += sorted(p for p in root.glob("images_*") if p.is_dir() and any(p.glob("*.png")))
    if not folders:
        raise UserError(
            f"no image folder in {root}: expected {root}/images/*.png or "
            f"{root}/images_001/images/*.png (NIH's official archives)"
        )
    return folders


def labels_table(
    meta: pd.DataFrame, *, strict: bool = False
) -> tuple[pd.DataFrame, int, dict[str, int]]:
    """Metadata rows -> ``image_id, patient_id, study_id, view, sex, age`` + the 14 findings
    (float32 0/1), the number of 'No Finding' conflicts and the labels that are not NIH's
    (name -> images). No file-system access.

    A label outside NIH's vocabulary ('Lung Opacity') cannot be kept: it is named in a
    warning, or with ``strict`` it is a UserError, since the image would read as negative for
    a finding it may show."""
    dummies = meta["Finding Labels"].str.get_dummies(sep="|")
    dummies.columns = [canonical_name(c, NIH_MAP) for c in dummies.columns]
    # spellings of one finding (' Cardiomegaly ', 'Pleural_Thickening' beside 'Pleural
    # Thickening') become one column: present when any spelling is
    dummies = dummies.T.groupby(level=0).max().T
    foreign = {c: int(dummies[c].sum()) for c in dummies if c not in (*NIH_FINDINGS, NO_FINDING)}
    if foreign:
        listed = ", ".join(f"{name} ({n} images)" for name, n in foreign.items())
        if strict:
            raise UserError(
                f"labels that are not among NIH's 14 findings: {listed}; rename them to NIH's "
                "spellings or drop --strict-labels to prepare without them"
            )
        warnings.warn(
            f"labels that are not among NIH's 14 findings were not kept: {listed} "
            "(--strict-labels makes this an error)",
            UserWarning,
            stacklevel=2,
        )
    conflicts = 0
    if NO_FINDING in dummies:
        others = dummies.drop(columns=NO_FINDING).sum(axis=1) > 0
        conflicts = int((dummies[NO_FINDING].astype(bool) & others).sum())
    table = pd.DataFrame(
        {
            "image_id": meta["Image Index"],
            "patient_id": meta["Patient ID"].str.strip().str.lstrip("0").replace("", "0"),
            "study_id": meta["Image Index"].str.replace(".png", "", regex=False),
            "view": meta["View Position"].str.strip(),
            "sex": meta["Patient Gender"].str.strip(),
            "age": pd.to_numeric(meta["Patient Age"].str.rstrip("Y"), errors="coerce"),
        }
    )
    for finding in NIH_FINDINGS:
        present_col = dummies[finding].to_numpy(np.float32) if finding in dummies else 0.0
        table[finding] = np.broadcast_to(np.float32(present_col), len(table)).copy()
    return table, conflicts, foreign


def read_labels(csv_path: str | Path) -> pd.DataFrame:
    """Labels straight from NIH's metadata CSV, images not needed (for ``eval --predictions``)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"label file {csv_path} does not exist")
    return labels_table(read_metadata(csv_path))[0]


def parse(root: str | Path, strict_labels: bool = False) -> Parsed:
    """Parse an NIH ChestX-ray14 folder into a :class:`Parsed` table (see module docstring);
    ``strict_labels``: a label outside NIH's 14 findings is an error, not a warning."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist")
    meta = read_metadata(find_metadata(root))
    on_disk = index_files(_image_folders(root), (".png",))
    present = meta["Image Index"].isin(on_disk.keys()).to_numpy()
    n_missing = int((~present).sum())
    meta = meta[present].reset_index(drop=True)
    if meta.empty:
        raise UserError(
            f"none of the {n_missing} images listed in the metadata was found under {root}/images*"
        )
    table, conflicts, foreign = labels_table(meta, strict=strict_labels)
    table.insert(1, "path", [str(on_disk[name].resolve()) for name in meta["Image Index"]])
    counts = {
        "listed": int(len(meta) + n_missing),
        "missing_on_disk": n_missing,
        "conflicts": conflicts,
        "unknown_labels": sum(foreign.values()),
    }
    train_val, test = root / "train_val_list.txt", root / "test_list.txt"
    if train_val.is_file() and test.is_file():
        in_test = table["image_id"].isin(_read_list(test))
        in_trainval = table["image_id"].isin(_read_list(train_val))
        table["official_split"] = np.where(in_test, "test", np.where(in_trainval, "trainval", ""))
        # Images in neither list: drawn by patient like a dataset without an official split.
        counts["not_in_official_lists"] = int((~in_test & ~in_trainval).sum())
    policy = {
        "source": "Finding Labels, '|'-separated; every NIH finding is labelled (0 or 1)",
        "no_finding_conflict": "an image listing 'No Finding' with a finding keeps the finding",
        "unknown_labels": foreign,  # label -> images; not kept (an error with --strict-labels)
    }
    return Parsed(table=table, findings=list(NIH_FINDINGS), label_policy=policy, counts=counts)


SPEC = register(
    DatasetSpec(
        name="nih",
        title="NIH ChestX-ray14 (also the phantom set written by `cxrkit synth`)",
        layout="ROOT/Data_Entry_2017[_v2020].csv, ROOT/images/*.png or "
        "ROOT/images_0NN/images/*.png,"
        " optional ROOT/train_val_list.txt + ROOT/test_list.txt (official split)",
        parse=parse,
        options=(
            Option(
                "strict-labels",
                "refuse labels outside NIH's 14 findings instead of warning and dropping them",
                default=False,
                flag=True,
            ),
        ),
        read_labels=read_labels,
    )
)
