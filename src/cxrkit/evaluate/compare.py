"""``cxrkit compare``: two models' predictions on the same labelled images.

Per finding: each model's AUROC and their difference with a **paired patient bootstrap**
interval and p-value (each resample draws the same patients for both models, so a patient
with many images counts once); DeLong's paired test, which treats images as independent, is
kept beside it as ``delong_image_level``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.errors import UserError
from cxrkit.evaluate.bootstrap import paired_auroc_difference
from cxrkit.evaluate.delong import delong_test
from cxrkit.evaluate.predictions import load_labels, match, read_predictions, split_rows
from cxrkit.files import claim_folder, json_float, write_json


def compare(
    a: str | Path,
    b: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    patient_col: str | None = None,
    split: str | None = "test",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Two models' predictions on the same images: per-finding AUROC of each and their
    difference with a **paired patient bootstrap** interval and p-value (each resample draws
    the same patients for both models, so a patient's many images count once), on the images
    both files and the labels have. DeLong's paired test, which treats images as independent,
    is kept beside it as ``delong_image_level``."""
    if n_boot < 1:
        raise UserError(f"compare needs bootstrap resamples (--bootstrap >= 1), got {n_boot}")
    full = load_labels(labels, dataset=dataset, patient_col=patient_col)
    source = split_rows(full, split)
    ma = match(read_predictions(a), source, where=str(a), within=full)
    mb = match(read_predictions(b), source, where=str(b), findings=ma.findings, within=full)
    common = np.intersect1d(ma.keys, mb.keys)
    if common.size == 0:
        raise UserError(f"{a} and {b} share no labelled image")
    ia = pd.Index(ma.keys).get_indexer(common)
    ib = pd.Index(mb.keys).get_indexer(common)
    names = [f for f in mb.findings if f in ma.findings]
    ja = [ma.findings.index(f) for f in names]
    jb = [mb.findings.index(f) for f in names]
    y = ma.y_true[np.ix_(ia, ja)]
    patients = ma.labels["patient_id"].astype(str).to_numpy()[ia]
    paired = paired_auroc_difference(
        y,
        ma.y_score[np.ix_(ia, ja)],
        mb.y_score[np.ix_(ib, jb)],
        groups=patients,
        n_boot=n_boot,
        seed=seed,
    )
    rows = {}
    for k, name in enumerate(names):
        labelled = ~np.isnan(y[:, k])
        if len(np.unique(y[labelled, k])) < 2:
            continue
        delong = delong_test(y[:, k], ma.y_score[ia, ja[k]], mb.y_score[ib, jb[k]])
        rows[name] = {
            "auc_a": json_float(delong["auc_a"]),
            "auc_b": json_float(delong["auc_b"]),
            "diff": json_float(paired["diff"][k]),
            "ci_diff": [json_float(paired["ci_low"][k]), json_float(paired["ci_high"][k])],
            "p_value": json_float(paired["p_value"][k]),
            "n_positive": int((y[:, k] == 1).sum()),
            "n_negative": int((y[:, k] == 0).sum()),
            "n_patients": int(len(np.unique(patients[labelled]))),
            "delong_image_level": {
                "ci_diff": [json_float(v) for v in delong["ci_diff"]],
                "z": json_float(delong["z"]),
                "p_value": json_float(delong["p_value"]),
            },
        }
    result = {
        "a": str(a),
        "b": str(b),
        "labels": str(labels),
        "n_images": int(common.size),
        "n_patients": int(len(np.unique(patients))),
        "only_in_a": int(len(ma.keys) - common.size),
        "only_in_b": int(len(mb.keys) - common.size),
        "interval": f"95% paired patient bootstrap, {n_boot} resamples, seed {seed}",
        "notes": list(full.notes),
        "per_class": rows,
    }
    out = Path(out)
    claim_folder(out, "comparison", resume=True)
    write_json(out / "compare.json", result)
    return result
