"""The canonical finding vocabulary and the per-dataset name maps.

Labels everywhere in cxrkit are float32 arrays ``(n_images, n_findings)`` with 1 = present,
0 = absent and NaN = unknown. NaN is masked in losses and metrics; it is never turned into 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from cxrkit.errors import UserError, did_you_mean

NO_FINDING = "No Finding"

#: Canonical names, in a stable order. Datasets map their own spellings onto these.
CANONICAL: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural Thickening",
    "Hernia",
    # Beyond NIH's 14 (CheXpert, MIMIC-CXR, VinDr-CXR, PadChest):
    "Enlarged Cardiomediastinum",
    "Lung Opacity",
    "Lung Lesion",
    "Fracture",
    "Support Devices",
    "Pleural Other",
    "Aortic Enlargement",
    "Calcification",
    "ILD",
    "Lung Cavity",
    "Lung Cyst",
    "Mediastinal Shift",
    "Enlarged PA",
    "COPD",
    "Lung Tumor",
    "Tuberculosis",
    "Other Lesion",
    "Other Disease",
)

#: NIH ChestX-ray14 spelling -> canonical name (only the names that differ).
NIH_MAP: dict[str, str] = {"Pleural_Thickening": "Pleural Thickening", "Infiltrate": "Infiltration"}

#: The 14 NIH findings, in NIH's usual order, in canonical spelling.
NIH_FINDINGS: tuple[str, ...] = CANONICAL[:14]


def canonical_name(name: str, mapping: dict[str, str] | None = None) -> str:
    """Map one dataset spelling to the canonical name; unknown names raise a did-you-mean error."""
    name = name.strip()
    if mapping and name in mapping:
        return mapping[name]
    if name in CANONICAL or name == NO_FINDING:
        return name
    raise did_you_mean(name, [*CANONICAL, NO_FINDING, *(mapping or {})], what="finding")


def select_findings(available: Sequence[str], wanted: Iterable[str] | None) -> list[str]:
    """Return ``wanted`` (validated against ``available``) or all of ``available`` when None."""
    if wanted is None:
        return list(available)
    chosen = list(wanted)
    for name in chosen:
        if name not in available:
            raise did_you_mean(name, available, what="finding")
    if not chosen:
        raise UserError("the list of findings is empty; name at least one finding")
    return chosen


def multi_hot(label_lists: Iterable[Iterable[str]], findings: Sequence[str]) -> np.ndarray:
    """Encode label lists as a float32 ``(n, len(findings))`` 0/1 matrix.

    Names not in ``findings`` (and ``No Finding``) are ignored: the caller decides which
    findings a dataset labels; those it does not label are NaN columns, set by the caller.
    """
    index = {name: j for j, name in enumerate(findings)}
    rows = list(label_lists)
    out = np.zeros((len(rows), len(findings)), dtype=np.float32)
    for i, names in enumerate(rows):
        for name in names:
            j = index.get(name)
            if j is not None:
                out[i, j] = 1.0
    return out
