"""Patient-wise splits and the leakage check.

No patient is ever in two splits. Splits are stratified over findings (rarest finding first),
seeded, and fingerprinted by a hash of each split's sorted patient ids so a run can record
exactly which patients it trained and was tested on.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from cxrkit.errors import UserError

SPLITS: tuple[str, ...] = ("train", "val", "test")


class LeakageError(UserError):
    """Raised when a patient appears in more than one split."""


def stratified_patient_split(
    patient_ids: pd.Series,
    labels: np.ndarray,
    fractions: dict[str, float],
    *,
    seed: int,
) -> np.ndarray:
    """Assign every image to a split so that each patient lands in exactly one split.

    Args:
        patient_ids: ``(n_images,)`` patient id of each image.
        labels: ``(n_images, n_findings)`` float labels (NaN allowed, counted as absent here).
        fractions: split name -> fraction of patients, summing to 1 (e.g. ``{"train": .9,
            "val": .1}``).
        seed: seed of the tie-breaking shuffle; same inputs and seed give the same split.

    Returns:
        ``(n_images,)`` object array of split names.

    Patients are visited rarest-finding first (a greedy iterative stratification): each goes
    to the split whose share of that finding lags its target most, so rare findings are
    spread over all splits in proportion instead of by luck.
    """
    total = sum(fractions.values())
    if not fractions or abs(total - 1.0) > 1e-6 or min(fractions.values()) < 0:
        raise UserError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    names = list(fractions)
    target = np.array([fractions[s] for s in names])
    codes, uniques = pd.factorize(patient_ids.astype(str), sort=True)
    positive = np.nan_to_num(labels, nan=0.0) > 0
    per_patient = np.zeros((len(uniques), positive.shape[1]), dtype=bool)
    np.logical_or.at(per_patient, codes, positive)
    # Extra column: "no finding" patients are stratified as their own group.
    per_patient = np.column_stack([per_patient, ~per_patient.any(axis=1)])
    freq = per_patient.sum(axis=0).astype(float)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniques))
    rarest = np.where(per_patient[order], freq, np.inf).min(axis=1)
    order = order[np.argsort(rarest, kind="stable")]
    counts = np.zeros((len(names), per_patient.shape[1]))
    n_assigned = np.zeros(len(names))
    assign = np.empty(len(uniques), dtype=np.int64)
    for p in order:
        cols = per_patient[p]
        # Deficit in this patient's findings (and in patient count) relative to the target.
        want = target[:, None] * (counts[:, cols].sum(axis=0) + 1) - counts[:, cols]
        score = want.sum(axis=1) + 1e-3 * (target * (n_assigned.sum() + 1) - n_assigned)
        s = int(np.argmax(score))
        assign[p] = s
        counts[s] += cols
        n_assigned[s] += 1
    return np.asarray(names, dtype=object)[assign[codes]]


def check_no_leakage(table: pd.DataFrame) -> None:
    """Raise :class:`LeakageError` if any patient has images in more than one split. With an
    ``official_split`` column (a dataset's own lists, at prepare time) the error says when
    those lists put a patient's images in different splits: the cause is then the lists."""
    n_splits = table.groupby("patient_id", sort=False)["split"].nunique()
    leaked = n_splits[n_splits > 1]
    if not len(leaked):
        return
    examples = ", ".join(map(str, leaked.index[:10]))
    message = (
        f"patient leakage: {len(leaked)} patient(s) have images in more than one split "
        f"(e.g. {examples}); every patient must be in exactly one split"
    )
    if "official_split" in table:
        rows = table[table["patient_id"].isin(leaked.index)]
        lists = rows.groupby("patient_id", sort=False)["official_split"].unique()
        caused = lists[lists.map(len) > 1]
        if len(caused):
            first = caused.index[0]
            where = ", ".join(
                sorted("no list" if pd.isna(s) or s == "" else s for s in caused.iloc[0])
            )
            message = (
                f"patient leakage caused by the dataset's official split lists: {len(caused)} "
                f"patient(s) have images in more than one of them (e.g. patient {first}: "
                f"{where}); correct the lists, or move them aside to let cxrkit split by patient"
            )
    raise LeakageError(message)


def split_fingerprints(table: pd.DataFrame) -> dict[str, str]:
    """SHA-256 of each split's sorted, newline-joined unique patient ids."""
    out = {}
    for split, group in table.groupby("split", sort=True):
        ids = sorted(group["patient_id"].astype(str).unique())
        out[str(split)] = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return out
