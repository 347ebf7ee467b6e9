"""PadChest (BIMCV / Hospital San Juan, Alicante): ~160,000 chest X-rays as 16-bit PNG.

Expected layout under ROOT::

    PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv   (or .csv.gz)
    <ImageDir>/<ImageID>     e.g. 0/216840111366964012283393834152009033140208626_00-059-118.png

The CSV has one row per image: ``ImageID, ImageDir, StudyDate_DICOM, StudyID, PatientID,
PatientBirth, PatientSex_DICOM, ViewPosition_DICOM, Projection, ..., Labels``. ``Labels`` is a
Python list written as text (``['pleural effusion', 'cardiomegaly']``) of every finding the
report names, so a finding PadChest maps is 0 when the report does not name it; ``normal``
means no finding. Rows are skipped, and counted, when their projection is not asked for
(``--projections``), their image is on the known-broken list, their labels are empty,
unreadable or only ``unchanged`` (the report refers to an earlier study), they carry
PadChest's ``exclude`` label, or their image is not on disk. PadChest has no official split.
When the CSV has ``Manufacturer_DICOM`` (the X-ray unit's maker, from the DICOM header, e.g.
``PhilipsMedicalSystems``; blank = unknown), it becomes the ``scanner`` metadata column.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import DatasetSpec, Option, Parsed, index_files, register
from cxrkit.data.datasets.folder import base_table, keep_found, read_table, require_dir
from cxrkit.data.labels import CANONICAL, multi_hot
from cxrkit.errors import UserError, did_you_mean

LABELS_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
REQUIRED = (
    "ImageID",
    "ImageDir",
    "StudyID",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "Projection",
    "Labels",
)
SCANNER_COLUMN = "Manufacturer_DICOM"  #: optional: -> the ``scanner`` metadata column
PROJECTIONS = ("PA", "AP", "AP_horizontal", "L")
DEFAULT_PROJECTIONS = ("PA", "AP", "AP_horizontal")
NORMAL, EXCLUDE, UNCHANGED = "normal", "exclude", "unchanged"

#: PadChest label (lower case) -> cxrkit findings. Unlisted labels are ignored (docs/datasets).
PADCHEST_MAP: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "atelectasis",
            "atelectasis basal",
            "laminar atelectasis",
            "lobar atelectasis",
            "round atelectasis",
            "segmental atelectasis",
            "total atelectasis",
        ),
        ("Atelectasis",),
    ),
    "cardiomegaly": ("Cardiomegaly",),
    "pleural effusion": ("Effusion",),
    "loculated pleural effusion": ("Effusion",),
    "loculated fissural effusion": ("Effusion",),
    "hydropneumothorax": ("Effusion", "Pneumothorax"),
    "infiltrates": ("Infiltration",),
    "mass": ("Mass",),
    "pulmonary mass": ("Mass",),
    "nodule": ("Nodule",),
    "multiple nodules": ("Nodule",),
    "pneumonia": ("Pneumonia",),
    "atypical pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "consolidation": ("Consolidation",),
    "pulmonary edema": ("Edema",),
    "emphysema": ("Emphysema",),
    "pulmonary fibrosis": ("Fibrosis",),
    "pleural thickening": ("Pleural Thickening",),
    "apical pleural thickening": ("Pleural Thickening",),
    "calcified pleural thickening": ("Pleural Thickening", "Calcification"),
    "hiatal hernia": ("Hernia",),
    **dict.fromkeys(
        (
            "fracture",
            "rib fracture",
            "callus rib fracture",
            "clavicle fracture",
            "humeral fracture",
            "vertebral fracture",
        ),
        ("Fracture",),
    ),
    **dict.fromkeys(
        (
            "pacemaker",
            "electrical device",
            "single chamber device",
            "dual chamber device",
            "endotracheal tube",
            "tracheostomy tube",
            "nsg tube",
            "chest drain tube",
            "catheter",
            "central venous catheter",
            "central venous catheter via jugular vein",
            "central venous catheter via subclavian vein",
            "central venous catheter via umbilical vein",
            "reservoir central venous catheter",
            "artificial heart valve",
            "artificial aortic heart valve",
            "artificial mitral heart valve",
        ),
        ("Support Devices",),
    ),
    **dict.fromkeys(
        (
            "calcified densities",
            "calcified granuloma",
            "calcified adenopathy",
            "calcified mediastinal adenopathy",
            "calcified pleural plaques",
            "heart valve calcified",
        ),
        ("Calcification",),
    ),
    "cavitation": ("Lung Cavity",),
    "mediastinal shift": ("Mediastinal Shift",),
    "pulmonary artery enlargement": ("Enlarged PA",),
    "copd signs": ("COPD",),
    "tuberculosis": ("Tuberculosis",),
}
PADCHEST_FINDINGS: tuple[str, ...] = tuple(
    name for name in CANONICAL if any(name in names for names in PADCHEST_MAP.values())
)

#: Images of the labels CSV that are absent from the distributed archives or do not decode,
#: as collected by the community (torchxrayvision's PadChest loader). Anything else that fails
#: to decode is caught by prepare's cache build and listed in failed_images.csv.
_MISSING = "not in the distributed archives"
_TRUNCATED = "truncated PNG"
_BAD_CHUNK = "broken PNG chunk"
KNOWN_BROKEN: dict[str, str] = {
    "216840111366964012819207061112010307142602253_04-014-084.png": _MISSING,
    "216840111366964012989926673512011074122523403_00-163-058.png": _MISSING,
    "216840111366964012959786098432011033083840143_00-176-115.png": _MISSING,
    "216840111366964012558082906712009327122220177_00-102-064.png": _MISSING,
    "216840111366964012339356563862009072111404053_00-043-192.png": _MISSING,
    "216840111366964013076187734852011291090445391_00-196-188.png": _MISSING,
    "216840111366964012373310883942009117084022290_00-064-025.png": _MISSING,
    "216840111366964012283393834152009033102258826_00-059-087.png": _MISSING,
    "216840111366964012373310883942009170084120009_00-097-074.png": _MISSING,
    "216840111366964012819207061112010315104455352_04-024-184.png": _MISSING,
    "216840111366964012819207061112010306085429121_04-020-102.png": _MISSING,
    "216840111366964012989926673512011083134050913_00-168-009.png": _BAD_CHUNK,
    "216840111366964012989926673512011151082430686_00-157-045.png": _BAD_CHUNK,
    "216840111366964012373310883942009152114636712_00-102-045.png": _TRUNCATED,
    "216840111366964012819207061112010281134410801_00-129-131.png": _TRUNCATED,
    "216840111366964012487858717522009280135853083_00-075-001.png": _TRUNCATED,
    "216840111366964013686042548532013208193054515_02-026-007.png": _TRUNCATED,
    "216840111366964013590140476722013058110301622_02-056-111.png": _TRUNCATED,
    "216840111366964013590140476722013043111952381_02-065-198.png": _TRUNCATED,
    "216840111366964013829543166512013353113303615_02-092-190.png": _TRUNCATED,
    "216840111366964013962490064942014134093945580_01-178-104.png": _TRUNCATED,
}


def find_labels_csv(root: Path) -> Path:
    """The labels CSV in ``root`` (plain or gzipped); a clear error when there is none."""
    for name in (LABELS_CSV, LABELS_CSV + ".gz"):
        if (root / name).is_file():
            return root / name
    raise UserError(f"no PadChest labels in {root}: expected {root / LABELS_CSV} (or .gz)")


def parse_labels(text: str) -> list[str] | None:
    """``"['COPD signs', ' normal']"`` -> ``['copd signs', 'normal']`` (stripped, lower case,
    blanks dropped); None when empty, unreadable, or only ``unchanged``."""
    try:
        value = ast.literal_eval(text.strip()) if text.strip() else []
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, (list, tuple)):
        return None
    labels = [str(v).strip().lower() for v in value if str(v).strip()]
    return labels if set(labels) - {UNCHANGED} else None


def _age(frame: pd.DataFrame) -> pd.Series:
    """Years between PatientBirth (a year) and the study year (StudyDate_DICOM, YYYYMMDD);
    NaN when either is missing or the difference is not a plausible age."""
    if "StudyDate_DICOM" not in frame:
        return pd.Series(np.nan, index=frame.index)
    birth = pd.to_numeric(frame["PatientBirth"], errors="coerce")
    year = pd.to_numeric(frame["StudyDate_DICOM"].str.strip().str[:4], errors="coerce")
    age = year - birth
    return age.where((age >= 0) & (age <= 120))


def _on_disk(root: Path, frame: pd.DataFrame) -> list[Path | None]:
    """Each row's image ``ROOT/<ImageDir>/<ImageID>``, or None when it is not there."""
    folders = {d: root / d for d in frame["ImageDir"].unique() if d and (root / d).is_dir()}
    found = {d: index_files([path], (".png",)) for d, path in folders.items()}
    return [
        found.get(d, {}).get(i) for d, i in zip(frame["ImageDir"], frame["ImageID"], strict=True)
    ]


def _select(
    frame: pd.DataFrame, projections: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, int], dict[str, str]]:
    """The rows to use, with their parsed labels in ``_labels``; how many rows each reason
    left out; and the known-broken images left out, with why."""
    counts = {"listed": len(frame)}
    keep = frame["Projection"].isin(projections)
    counts["other_projection"] = int((~keep).sum())
    broken = keep & frame["ImageID"].isin(KNOWN_BROKEN.keys())
    counts["known_broken"] = int(broken.sum())
    keep &= ~broken
    texts = frame["Labels"].where(keep, "")
    parsed = texts.map({t: parse_labels(t) for t in texts.unique()})
    counts["no_labels"] = int((keep & parsed.isna()).sum())
    keep &= parsed.notna()
    excluded = keep & parsed.map(lambda labels: bool(labels) and EXCLUDE in labels)
    counts["excluded_label"] = int(excluded.sum())
    keep &= ~excluded
    selected = frame[keep].assign(_labels=parsed[keep]).reset_index(drop=True)
    return selected, counts, {i: KNOWN_BROKEN[i] for i in frame.loc[broken, "ImageID"]}


def parse(root: str | Path, projections: Sequence[str] = DEFAULT_PROJECTIONS) -> Parsed:
    """Parse a PadChest folder into a :class:`Parsed` table (see module docstring)."""
    root = require_dir(root)
    for projection in projections:
        if projection not in PROJECTIONS:
            raise did_you_mean(projection, PROJECTIONS, what="PadChest projection")
    file = find_labels_csv(root)
    frame = read_table(file, REQUIRED, what="PadChest's labels CSV (ImageID, ImageDir, ...)")
    for column in ("ImageID", "ImageDir", "Projection"):
        frame[column] = frame[column].str.strip()
    frame["ImageDir"] = frame["ImageDir"].str.replace(r"\.0$", "", regex=True)
    frame, counts, skipped_broken = _select(frame, projections)
    frame, counts["missing_on_disk"] = keep_found(
        frame, _on_disk(root, frame), source=file, where=f"{root}/<ImageDir>"
    )
    names = [
        {f for label in labels for f in PADCHEST_MAP.get(label, ())} for labels in frame["_labels"]
    ]
    labels = multi_hot(names, PADCHEST_FINDINGS)
    normal = frame["_labels"].map(lambda labels: NORMAL in labels).to_numpy()
    counts["conflicts"] = int((normal & (labels.sum(axis=1) > 0)).sum())
    table = base_table(
        frame,
        image_id="ImageID",
        patient_id="PatientID",
        study_id="StudyID",
        view="Projection",
        sex="PatientSex_DICOM",
        age=_age(frame),
    )
    metadata: list[str] = []
    if SCANNER_COLUMN in frame:
        table["scanner"], metadata = frame[SCANNER_COLUMN].str.strip(), ["scanner"]
    for j, finding in enumerate(PADCHEST_FINDINGS):
        table[finding] = labels[:, j]
    policy = {
        "source": f"{file.name}: Labels, every finding the report names; absent = 0",
        "mapping": "PadChest labels -> cxrkit findings as in cxrkit.data.datasets.padchest."
        "PADCHEST_MAP; other labels are ignored",
        "normal": "'normal' is no finding; beside a mapped finding, the finding is kept",
        "projections": list(projections),
        "known_broken": skipped_broken,
    }
    return Parsed(
        table=table,
        findings=list(PADCHEST_FINDINGS),
        label_policy=policy,
        counts=counts,
        metadata=metadata,
    )


SPEC = register(
    DatasetSpec(
        name="padchest",
        title="PadChest (BIMCV), 16-bit PNG",
        layout=f"ROOT/{LABELS_CSV}[.gz] + ROOT/<ImageDir>/<ImageID>.png",
        parse=parse,
        options=(
            Option(
                "projections",
                "projections to keep (PadChest's Projection column)",
                default=DEFAULT_PROJECTIONS,
                choices=PROJECTIONS,
                multiple=True,
            ),
        ),
    )
)
