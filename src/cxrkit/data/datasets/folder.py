"""Any folder of images with a CSV of labels (dataset ``csv``), and the CSV helpers shared by the
table-based parsers (``vindr``, ``padchest``).

Expected input: ``--root ROOT`` (the image folder) and ``--labels CSV`` with one row per image:

- ``--path-col`` (default ``path``): the image, relative to ROOT or absolute (PNG, JPEG, DICOM);
- ``--patient-col`` (default: none): the patient; without it each image is its own patient and
  the label policy says so (images of one patient may then land in two splits);
- finding columns (``--findings``, default: every numeric column that is not a known metadata
  column): ``1`` present, ``0`` absent, blank or ``-1`` (uncertain) unknown (NaN);
- optional metadata columns, matched case-insensitively: ``image_id`` (default: the path),
  ``study_id``, ``view``, ``sex`` (M/F), ``age`` (years), ``split`` (an official split:
  ``train``, ``val``, ``test``, ``trainval`` or blank), and ``site``, ``scanner``,
  ``manufacturer``, ``institution`` (text, kept in the manifest for the shortcut audit).

Finding names are mapped onto cxrkit's canonical names when they match one ignoring case
(``effusion`` -> ``Effusion``) and kept as given otherwise. A ``No Finding`` column is not a
finding and is not picked by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import (
    BASE_COLUMNS,
    SITE_COLUMNS,
    DatasetSpec,
    Option,
    Parsed,
    register,
)
from cxrkit.data.labels import CANONICAL, NO_FINDING, canonical_name
from cxrkit.errors import UserError, did_you_mean

#: Optional metadata columns of a ``csv`` dataset (lower case); never picked as findings.
METADATA = ("image_id", "study_id", "view", "sex", "age", "split", *SITE_COLUMNS)
OFFICIAL_SPLITS = ("train", "val", "test", "trainval", "")
_LOWER_CANONICAL = {name.lower(): name for name in (*CANONICAL, NO_FINDING)}


# --- helpers shared by the table-based parsers ---------------------------------------------


def require_dir(root: str | Path) -> Path:
    """``root`` as an absolute path; a UserError when it is not a folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"dataset folder {path} does not exist")
    return path.resolve()


def read_table(path: Path, required: Sequence[str], *, what: str) -> pd.DataFrame:
    """Read the CSV ``path`` (``.gz`` too) as strings, blanks kept as ``""``.

    Columns matching a ``required`` name ignoring case and surrounding spaces are renamed to
    it; a missing file or missing columns raise a UserError naming the file, the columns and
    ``what`` the file should be.
    """
    if not path.is_file():
        raise UserError(f"{path} not found; expected {what}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable CSV ({exc}); expected {what}") from None
    wanted = {name.lower(): name for name in required}
    table.columns = [wanted.get(str(c).strip().lower(), str(c).strip()) for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(
            f"{path} lacks the column(s) {', '.join(missing)}; expected {what} "
            f"(found: {', '.join(table.columns) or 'no columns'})"
        )
    return table


def is_numeric(values: pd.Series) -> bool:
    """True when every non-blank value of the string column ``values`` is a number."""
    filled = values[values.str.strip() != ""]
    return pd.to_numeric(filled, errors="coerce").notna().all()


def to_labels(values: pd.Series, *, column: str, file: Path) -> np.ndarray:
    """Label strings -> float32: ``1`` present, ``0`` absent, blank or ``-1`` unknown (NaN).

    Any other value raises a UserError naming the file, the column and the bad values.
    """
    text = values.str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = (text != "") & ~numbers.isin([0, 1, -1])
    if bad.any():
        examples = ", ".join(repr(v) for v in text[bad].unique()[:5])
        raise UserError(
            f"{file}: column {column!r} holds {examples}; labels must be 1 (present), "
            "0 (absent), -1 (uncertain) or blank (unknown)"
        )
    return numbers.where(numbers >= 0).to_numpy(np.float32)


def finding_name(name: str) -> str:
    """The canonical spelling of ``name`` when it matches one ignoring case, else ``name``."""
    try:
        return canonical_name(name.strip().lower(), _LOWER_CANONICAL)
    except UserError:
        return name.strip()


def keep_found(
    frame: pd.DataFrame, paths: Sequence[Path | None], *, source: str | Path, where: str
) -> tuple[pd.DataFrame, int]:
    """The rows of ``frame`` whose image was found (``paths[i]`` not None), with their absolute
    ``path``; and how many were missing. No image found at all raises a UserError naming the
    label ``source`` and ``where`` the images were looked for."""
    found = np.array([p is not None for p in paths], dtype=bool)
    n_missing = int((~found).sum())
    if not found.any():
        raise UserError(
            f"none of the {len(frame)} images listed in {source} was found under {where}"
        )
    kept = frame[found].reset_index(drop=True)
    kept["path"] = [str(p) for p in paths if p is not None]
    return kept, n_missing


def base_table(
    frame: pd.DataFrame,
    *,
    image_id: str,
    patient_id: str | None,
    study_id: str | None = None,
    view: str | None = None,
    sex: str | None = None,
    age: pd.Series | None = None,
) -> pd.DataFrame:
    """The BASE_COLUMNS of a parsed table from the columns of ``frame`` (which has ``path``).

    ``patient_id``/``study_id`` None: each image is its own patient/study (its image id);
    ``view``/``sex`` None: empty (sex keeps ``M``/``F`` only); ``age``: years (NaN unknown).
    """
    ids = frame[image_id].astype(str)
    blank = pd.Series("", index=frame.index)
    table = pd.DataFrame(
        {
            "image_id": ids,
            "path": frame["path"],
            "patient_id": ids if patient_id is None else frame[patient_id].astype(str).str.strip(),
            "study_id": ids if study_id is None else frame[study_id].astype(str),
            "view": blank if view is None else frame[view].str.strip(),
            "sex": blank if sex is None else _sex(frame[sex]),
            "age": np.nan if age is None else pd.to_numeric(age, errors="coerce"),
        }
    )
    return table[list(BASE_COLUMNS)]


def _sex(values: pd.Series) -> pd.Series:
    """``M`` or ``F`` from the first letter (``male``, ``F``, ...); anything else empty."""
    first = values.str.strip().str.upper().str[:1]
    return first.where(first.isin(["M", "F"]), "")


# --- the ``csv`` dataset -----------------------------------------------------------------


def _labels_file(root: Path, labels: str | Path | None) -> Path:
    if labels is None:
        raise UserError("the csv dataset needs --labels CSV (one row per image, with its labels)")
    given = Path(labels).expanduser()
    return given if given.is_absolute() or given.is_file() else root / given


def _choose_findings(
    table: pd.DataFrame, reserved: set[str], findings: Sequence[str] | None, file: Path
) -> list[str]:
    """The finding columns: ``findings`` as asked (validated), else every numeric column that
    is neither reserved, a metadata column, a saved index (``Unnamed: 0``) nor ``No Finding``."""
    if findings is not None:
        for column in findings:
            if column not in table.columns:
                raise did_you_mean(column, table.columns, what=f"column of {file}")
        return list(dict.fromkeys(findings))
    chosen = [
        c
        for c in table.columns
        if c not in reserved
        and c.lower() not in METADATA
        and not c.startswith("Unnamed")
        and finding_name(c) != NO_FINDING
        and is_numeric(table[c])
    ]
    if not chosen:
        raise UserError(
            f"{file} has no numeric label column besides {', '.join(sorted(reserved))}; "
            "name the finding columns with --findings"
        )
    return chosen


def parse(
    root: str | Path,
    labels: str | Path | None = None,
    path_col: str = "path",
    patient_col: str | None = None,
    findings: Sequence[str] | None = None,
) -> Parsed:
    """Parse a folder of images + a CSV of labels (see module docstring)."""
    root = require_dir(root)
    file = _labels_file(root, labels)
    required = [path_col] + ([patient_col] if patient_col else [])
    table = read_table(file, required, what=f"a CSV of labels with the column(s) {required}")
    table = table[table[path_col].str.strip() != ""].reset_index(drop=True)
    duplicated = table[path_col][table[path_col].duplicated()]
    if len(duplicated):
        raise UserError(f"{file} lists {duplicated.iloc[0]!r} (and perhaps others) twice")
    columns = _choose_findings(table, set(required), findings, file)
    names = [finding_name(c) for c in columns]
    if len(set(names)) < len(names):
        raise UserError(f"{file}: columns {columns} name the same finding twice")
    meta = {
        c.lower(): c
        for c in table.columns
        if c.lower() in METADATA and c not in columns and c not in required
    }
    listed = len(table)
    candidates = [root / p.strip() for p in table[path_col]]
    table, n_missing = keep_found(
        table, [p if p.is_file() else None for p in candidates], source=file, where=str(root)
    )
    out = base_table(
        table,
        image_id=path_col,
        patient_id=patient_col,
        study_id=meta.get("study_id"),
        view=meta.get("view"),
        sex=meta.get("sex"),
        age=table[meta["age"]] if "age" in meta else None,
    )
    out["image_id"] = table[meta["image_id"]] if "image_id" in meta else out["image_id"]
    sites = [c for c in SITE_COLUMNS if c in meta]  # text, blank = unknown
    for name in sites:
        out[name] = table[meta[name]].fillna("").astype(str).str.strip()
    for column, name in zip(columns, names, strict=True):
        out[name] = to_labels(table[column], column=column, file=file)
    if "split" in meta:
        split = table[meta["split"]].str.strip().str.lower()
        if not split.isin(OFFICIAL_SPLITS).all():
            bad = ", ".join(repr(v) for v in split[~split.isin(OFFICIAL_SPLITS)].unique()[:5])
            raise UserError(
                f"{file}: column {meta['split']!r} holds {bad}; expected one of "
                "train, val, test, trainval or blank"
            )
        out["official_split"] = split.to_numpy()
    patients = (
        f"column {patient_col!r}"
        if patient_col
        else "WARNING: no --patient-col; each image is its own patient, so images of one "
        "patient may land in different splits"
    )
    policy = {
        "source": f"{file.name}: columns {dict(zip(columns, names, strict=True))}",
        "values": "1 present, 0 absent, blank or -1 (uncertain) unknown (NaN)",
        "patient_id": patients,
    }
    counts = {"listed": listed, "missing_on_disk": n_missing}
    return Parsed(table=out, findings=names, label_policy=policy, counts=counts, metadata=sites)


SPEC = register(
    DatasetSpec(
        name="csv",
        title="Any folder of images with a CSV of labels",
        layout="ROOT/<images> (PNG, JPEG or DICOM) + --labels CSV with a path column and one "
        "column per finding (1 / 0 / blank or -1 = unknown)",
        parse=parse,
        options=(
            Option(
                "labels",
                "the CSV of labels (absolute, or relative to the current folder "
                "or to ROOT); required",
            ),
            Option(
                "path-col",
                "column holding each image's path, relative to ROOT or absolute",
                default="path",
            ),
            Option(
                "patient-col",
                "column holding the patient id; none: each image is its own patient",
            ),
            Option(
                "findings",
                "finding columns to use; none: every numeric column that is not the path, "
                "patient or a metadata column",
                multiple=True,
            ),
        ),
    )
)
