"""The CheXpert labeler's values and the policy that turns them into cxrkit labels.

CheXpert and MIMIC-CXR-JPG are labelled by the same report labeler (Irvin et al., AAAI 2019)
into the same columns: 13 observations plus ``No Finding``. Each cell holds

* ``1`` positive, ``0`` negative, ``-1`` uncertain ("may represent ...");
* blank: the report does not mention the observation.

cxrkit labels are 1 / 0 / NaN (unknown: masked in losses and metrics). The policy:

* **uncertain** (-1), chosen per finding: ``ones`` (-> 1), ``zeros`` (-> 0) or ``ignore``
  (-> NaN). Presets: ``u-ones``, ``u-zeros``, ``u-ignore`` (every finding alike, the default)
  and ``chexpert-best`` (the CheXpert paper's best simple mix: U-Ones for Atelectasis and
  Edema, U-Zeros for the others). ``Finding=policy`` tokens override the preset for one finding,
  in either spelling (``"Pleural Effusion=ones"`` or ``Effusion=ones``).
* **blank**: ``zeros`` (default, the common practice: an unmentioned finding is taken as
  absent) or ``nan``. With ``nan``, a row the labeler marked ``No Finding`` = 1 still gets 0 for
  its blank findings, because the labeler sets No Finding only when no finding other than
  Support Devices is positive or uncertain; Support Devices, which it does not cover, stays NaN.
* **No Finding** is not a finding column. A row with No Finding = 1 and a positive (1) finding
  other than Support Devices is a conflict: the finding wins, and conflicts are counted.

The module also reads the label CSVs for both parsers (:func:`read_csv_columns`,
:func:`read_labeler_csv`) so that a bad file is reported the same way for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.data.datasets.base import Option
from cxrkit.data.labels import NO_FINDING, canonical_name
from cxrkit.errors import UserError, did_you_mean

#: The labeler's 13 observation columns, in the order of its CSVs.
LABELER_COLUMNS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: Labeler spelling -> canonical name (only the names that differ).
LABELER_MAP: dict[str, str] = {"Pleural Effusion": "Effusion"}
#: The 13 findings in canonical spelling, in the labeler's order.
LABELER_FINDINGS: tuple[str, ...] = tuple(canonical_name(c, LABELER_MAP) for c in LABELER_COLUMNS)
#: Canonical name -> the labeler's column.
COLUMN_OF: dict[str, str] = dict(zip(LABELER_FINDINGS, LABELER_COLUMNS, strict=True))
#: Not a pathology: may be positive in a No Finding row.
SUPPORT_DEVICES = "Support Devices"

POLICIES: dict[str, float] = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}
PRESETS: dict[str, dict[str, str]] = {
    "u-ignore": dict.fromkeys(LABELER_FINDINGS, "ignore"),
    "u-zeros": dict.fromkeys(LABELER_FINDINGS, "zeros"),
    "u-ones": dict.fromkeys(LABELER_FINDINGS, "ones"),
    "chexpert-best": {
        **dict.fromkeys(LABELER_FINDINGS, "zeros"),
        "Atelectasis": "ones",
        "Edema": "ones",
    },
}
DEFAULT_UNCERTAIN = "u-ignore"
BLANK_CHOICES: tuple[str, ...] = ("zeros", "nan")

UNCERTAIN_OPTION = Option(
    "uncertain",
    help="uncertain (-1) labels: a preset (" + ", ".join(PRESETS) + ") and/or per-finding "
    "Finding=ones|zeros|ignore overrides on top of it, e.g. u-zeros Atelectasis=ones",
    default=DEFAULT_UNCERTAIN,
    multiple=True,
)
BLANK_OPTION = Option(
    "blank",
    help="blank (unmentioned) labels: zeros = absent, nan = unknown (masked)",
    default="zeros",
    choices=BLANK_CHOICES,
)


def tokens(value: str | Sequence[str] | None) -> list[str]:
    """An option value as a list of tokens: a string or a list, each split at commas."""
    items = [value] if isinstance(value, str) else list(value or ())
    return [t.strip() for item in items for t in str(item).split(",") if t.strip()]


@dataclass(frozen=True)
class LabelerLabels:
    """Labels of one table: ``values`` ``(n, len(findings))`` float32, the policy record for
    the manifest header, and the number of No Finding conflicts."""

    values: np.ndarray
    policy: dict[str, Any]
    conflicts: int


@dataclass(frozen=True)
class UncertaintyPolicy:
    """How uncertain (-1) and blank cells become labels (see the module docstring)."""

    uncertain: dict[str, str]  # canonical finding -> "ones" | "zeros" | "ignore"
    blank: str  # "zeros" | "nan"
    spec: str  # the options as given, normalised: "u-zeros Atelectasis=ones"

    @classmethod
    def from_options(
        cls, uncertain: str | Sequence[str] | None = DEFAULT_UNCERTAIN, blank: str = "zeros"
    ) -> UncertaintyPolicy:
        """Build the policy from ``--uncertain`` tokens and ``--blank``; bad names raise."""
        given = tokens(uncertain)
        presets = [t for t in given if "=" not in t]
        if len(presets) > 1:
            raise UserError(
                f"--uncertain takes one preset, got {', '.join(presets)}; add per-finding "
                "overrides as Finding=ones|zeros|ignore"
            )
        preset = presets[0] if presets else DEFAULT_UNCERTAIN
        if preset not in PRESETS:
            raise did_you_mean(preset, PRESETS, what="uncertainty preset")
        per_finding = dict(PRESETS[preset])
        overrides = []
        finding_of = {**{f: f for f in LABELER_FINDINGS}, **{c: f for f, c in COLUMN_OF.items()}}
        for token in (t for t in given if "=" in t):
            name, _, mode = (part.strip() for part in token.partition("="))
            if name not in finding_of:
                raise did_you_mean(name, finding_of, what="CheXpert-labeler finding")
            if mode not in POLICIES:
                raise did_you_mean(mode, POLICIES, what=f"uncertainty policy (in {token!r})")
            finding = finding_of[name]
            per_finding[finding] = mode
            overrides.append(f"{finding}={mode}")
        if blank not in BLANK_CHOICES:
            raise did_you_mean(blank, BLANK_CHOICES, what="blank policy")
        return cls(per_finding, blank, " ".join([preset, *overrides]))

    def values(
        self, raw: np.ndarray, findings: Sequence[str], no_finding: np.ndarray
    ) -> np.ndarray:
        """Map raw ``(n, k)`` labeler values (1 / 0 / -1 / NaN = blank) of ``findings`` to
        float32 1 / 0 / NaN; ``no_finding`` is the ``(n,)`` mask of No Finding = 1 rows."""
        uncertain_fill = np.array([POLICIES[self.uncertain[f]] for f in findings], np.float32)
        blank_fill = np.float32(0.0 if self.blank == "zeros" else np.nan)
        pathology = np.array([f != SUPPORT_DEVICES for f in findings])
        blank_fill = np.where(no_finding[:, None] & pathology[None, :], 0.0, blank_fill)
        out = np.where(raw == -1, uncertain_fill[None, :], raw)
        return np.where(np.isnan(raw), blank_fill, out).astype(np.float32)

    def apply(self, frame: pd.DataFrame, findings: Sequence[str], source: str) -> LabelerLabels:
        """Labels for the rows of ``frame`` (from :func:`read_labeler_csv`), with the policy
        record (incl. the uncertain and blank counts per finding) for the manifest header."""
        raw = frame[[COLUMN_OF[f] for f in findings]].to_numpy(np.float32)
        no_finding = frame[NO_FINDING].to_numpy() == 1
        pathology = [j for j, f in enumerate(findings) if f != SUPPORT_DEVICES]
        conflicts = int((no_finding & (raw[:, pathology] == 1).any(axis=1)).sum())
        record = {
            "source": source,
            "values": "CheXpert labeler: 1 positive, 0 negative, -1 uncertain, blank unmentioned",
            "uncertain": self.spec,
            "uncertain_policy": {f: self.uncertain[f] for f in findings},
            "blank": self.blank,
            "uncertain_counts": _per_finding(findings, raw == -1),
            "blank_counts": _per_finding(findings, np.isnan(raw)),
            "no_finding": "not a finding column; blank findings of a No Finding = 1 row are 0 "
            "(Support Devices excepted); a positive finding in such a row wins (a conflict)",
        }
        return LabelerLabels(self.values(raw, findings, no_finding), record, conflicts)


def _per_finding(findings: Sequence[str], mask: np.ndarray) -> dict[str, int]:
    return dict(zip(findings, mask.sum(axis=0).tolist(), strict=True))


def read_csv_columns(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read the ``required`` columns of a CSV (``.gz`` too) as strings ("" = blank).

    A missing file, an empty file or a missing column raises a UserError naming the file.
    """
    if not path.is_file():
        raise UserError(f"{path} not found; expected a CSV with {', '.join(required)}")
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except (pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise UserError(f"{path} is not a readable CSV ({err})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(
            f"{path} lacks the column(s) {', '.join(missing)}; found {', '.join(header)}"
        )
    frame = pd.read_csv(
        path, usecols=list(required), dtype=str, keep_default_na=False, skipinitialspace=True
    )
    return frame[list(required)]


def read_labeler_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read ``columns`` plus No Finding and the 13 labeler columns of a labeler CSV.

    The labeler columns become float32 (1 / 0 / -1 / NaN = blank); any other value raises a
    UserError naming the file, the column and the value.
    """
    frame = read_csv_columns(path, [*columns, NO_FINDING, *LABELER_COLUMNS])
    for column in (NO_FINDING, *LABELER_COLUMNS):
        text = frame[column]
        values = pd.to_numeric(text.mask(text == ""), errors="coerce")
        bad = (values.isna() & (text != "")) | (values.notna() & ~values.isin([1, 0, -1]))
        if bad.any():
            raise UserError(
                f"{path}: column {column!r} holds {text[bad].iloc[0]!r} (row "
                f"{int(bad.to_numpy().argmax()) + 2}); labeler values are 1, 0, -1 or blank"
            )
        frame[column] = values.astype(np.float32)
    return frame
