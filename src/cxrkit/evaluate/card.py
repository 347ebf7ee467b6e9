"""Where a model card's operating points come from, and whether ``eval`` may replace them.

``eval --checkpoint`` tunes thresholds and a calibration on a prepared folder's validation
split. They go into the checkpoint's card with their origin (:func:`tuning_origin`: dataset,
folder, the val patients' fingerprint, date), and only when :func:`card_decision` says so:
``eval`` on another hospital's data must not silently replace operating points tuned on the
model's own validation patients.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from cxrkit.data.manifest import Manifest


def tuning_origin(manifest: Manifest) -> dict[str, Any]:
    """Where thresholds tuned on ``manifest``'s val split come from, for the model card (the
    card's ``n_val_images`` says how many images)."""
    return {
        "dataset": manifest.header.get("dataset"),
        "prepared": str(manifest.folder.resolve()),
        "split": "val",
        "patients_sha256": manifest.header.get("split", {}).get("patients_sha256", {}).get("val"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def card_decision(
    card: dict[str, Any], origin: dict[str, Any], write_card: bool | None, bundle: bool
) -> tuple[bool, str]:
    """``(write, why)``: whether ``eval`` stores operating points tuned at ``origin`` in
    ``card``. Automatically only when the card's own thresholds came from the same val patients,
    or it has none and the model was trained on the dataset of those patients."""
    if write_card is not None:
        return write_card, "asked (--write-card)" if write_card else "asked (--no-write-card)"
    if bundle:
        return False, "an exported bundle's card is fixed at export"
    own = (card.get("thresholds") or {}).get("patients_sha256")
    trained = [
        (d.get("patients_sha256") or {}).get("val")
        for d in (card.get("training_data") or {}).get("datasets", [])
    ]
    fingerprint = origin["patients_sha256"]
    if own is not None:
        if own == fingerprint:
            return True, "replaces thresholds tuned on the same validation patients"
        return False, (
            f"the card's thresholds were tuned on other data ({card['thresholds'].get('prepared')}"
            "); kept: pass --write-card to replace them"
        )
    if fingerprint is not None and fingerprint in trained:
        return True, "tuned on the validation split of the model's own training data"
    return False, (
        "this is not the data the model was trained on; thresholds kept: pass --write-card "
        "to store the ones tuned here"
    )
