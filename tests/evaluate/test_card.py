"""Where a model card's operating points came from, and when ``eval`` may replace them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxrkit.data.manifest import load_manifest
from cxrkit.evaluate.card import card_decision, tuning_origin
from cxrkit.evaluate.runs import EvalOptions, evaluate_checkpoint
from cxrkit.models.checkpoint import read_checkpoint

TRAINED_ON = {"datasets": [{"dataset": "nih", "patients_sha256": {"val": "aaa", "train": "t"}}]}


def test_operating_points_from_the_training_data_are_written() -> None:
    card = {"thresholds": None, "training_data": TRAINED_ON}
    write, why = card_decision(card, {"patients_sha256": "aaa"}, None, bundle=False)
    assert write and "own training data" in why


def test_other_data_keeps_the_card_unless_asked() -> None:
    card = {"thresholds": None, "training_data": TRAINED_ON}
    write, why = card_decision(card, {"patients_sha256": "zzz"}, None, bundle=False)
    assert not write and "--write-card" in why
    assert card_decision(card, {"patients_sha256": "zzz"}, True, bundle=False)[0]
    tuned = {"thresholds": {"patients_sha256": "bbb", "prepared": "/data/other"}}
    write, why = card_decision(tuned, {"patients_sha256": "aaa"}, None, bundle=False)
    assert not write and "/data/other" in why
    assert card_decision(tuned, {"patients_sha256": "bbb"}, None, bundle=False)[0]
    assert not card_decision(tuned, {"patients_sha256": "bbb"}, False, bundle=False)[0]
    write, why = card_decision(tuned, {"patients_sha256": "bbb"}, None, bundle=True)
    assert not write and "bundle" in why


def test_eval_records_where_thresholds_came_from(
    trained: Path, prepared: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(trained / "checkpoints" / "best.ckpt", ckpt)
    options = EvalOptions(n_boot=0, report=False)
    result = evaluate_checkpoint(ckpt, prepared, tmp_path / "ev", options=options, progress=False)
    assert result.metrics["card"]["written"] is True
    thresholds = read_checkpoint(ckpt)["model_card"]["thresholds"]
    origin = tuning_origin(load_manifest(prepared))
    assert thresholds["n_val_images"] == len(load_manifest(prepared).rows("val"))
    for key in ("dataset", "prepared", "split", "patients_sha256"):
        assert thresholds[key] == origin[key]
    assert thresholds["split"] == "val" and thresholds["date"]


@pytest.mark.parametrize("write_card", [None, False])
def test_eval_on_other_patients_keeps_the_card(
    trained: Path, phantom: Path, tmp_path: Path, write_card: bool | None
) -> None:
    from cxrkit.data.prepare import SplitPolicy, prepare

    other = prepare(
        "nih", phantom, tmp_path / "other", size=64, progress=False,
        split=SplitPolicy(seed=7),
    )  # fmt: skip
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(trained / "checkpoints" / "best.ckpt", ckpt)
    before = read_checkpoint(ckpt)["model_card"]
    result = evaluate_checkpoint(
        ckpt, other.folder, tmp_path / "ev", options=EvalOptions(n_boot=0, report=False),
        write_card=write_card, progress=False,
    )  # fmt: skip
    assert result.metrics["card"]["written"] is False
    assert read_checkpoint(ckpt)["model_card"] == before
