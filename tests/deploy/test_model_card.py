"""MODEL_CARD.md: every figure from the run's own files, a refusal for another model's eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrkit.deploy.export import export_bundle
from cxrkit.deploy.model_card import DISCLAIMER, MODEL_CARD_MD
from cxrkit.errors import UserError
from cxrkit.evaluate.runs import EvalOptions, evaluate_checkpoint


@pytest.fixture(scope="module")
def evaluated(trained: Path, prepared: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card-eval") / "eval"
    options = EvalOptions(n_boot=200, report=False, by=("sex", "view"))
    evaluate_checkpoint(trained / "checkpoints" / "best.ckpt", prepared, out, options=options,
                        write_card=False, progress=False)  # fmt: skip
    return out


def test_the_card_quotes_the_evaluation_and_the_manifest(
    trained: Path, prepared: Path, evaluated: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    bundle = export_bundle(ckpt, tmp_path / "bundle", onnx=False, evaluation=evaluated)
    text = (bundle / MODEL_CARD_MD).read_text()
    metrics = json.loads((evaluated / "metrics.json").read_text())
    header = json.loads((prepared / "manifest.json").read_text())
    assert DISCLAIMER in text
    macro = metrics["macro"]
    low, high = macro["auroc_ci"]
    assert f"| **macro** | {macro['auroc']:.3f} | {low:.3f}–{high:.3f} |" in text
    for finding, m in metrics["per_class"].items():
        shown = "n/a" if m["auroc"] is None else f"{m['auroc']:.3f}"  # null: no positives
        assert f"| {finding} | {shown} |" in text
    patients = header["split"]["patients"]
    assert (
        f"train {header['split']['images']['train']:,} images / {patients['train']:,} patients"
        in text
    )
    assert f"test {header['split']['images']['test']:,} images / {patients['test']:,} patients" in (
        text
    )
    assert f"{metrics['n_patients']} patients; 95% intervals from 200 patient-level" in text
    assert "| sex | F |" in text and "| view | PA |" in text  # the subgroup table
    # eval tuned its own thresholds and did not write them (write_card=False): said so
    assert "which are **not** the card's below (asked (--no-write-card))" in text
    assert "not a held-out test split" not in text  # a test split
    assert "No input gate fitted" in text  # this run was trained without `cxrkit train`'s gate
    assert "Not run: `cxrkit eval --checkpoint ... --audit`" in text


def test_without_an_evaluation_it_says_so_and_shows_validation(
    trained: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    text = (export_bundle(ckpt, tmp_path / "b", onnx=False) / MODEL_CARD_MD).read_text()
    card = json.loads((tmp_path / "b" / "model_card.json").read_text())
    assert "No held-out evaluation was given to `cxrkit export`" in text
    for finding, auroc in card["val_metrics"]["auroc"].items():
        assert f"| {finding} | {'n/a' if auroc is None else format(auroc, '.3f')} |" in text
    assert "- No held-out evaluation is attached to this card." in text


def test_an_evaluation_of_another_model_is_refused(
    evaluated: Path, trained: Path, tmp_path: Path
) -> None:
    other = trained / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=r"evaluated .*best.ckpt, not .*last.ckpt"):
        export_bundle(other, tmp_path / "b", onnx=False, evaluation=evaluated)
    assert not (tmp_path / "b").exists()  # refused before anything was written
    with pytest.raises(UserError, match="has no metrics.json"):
        export_bundle(other, tmp_path / "b", onnx=False, evaluation=tmp_path)


def test_an_evaluation_on_the_training_split_is_called_optimistic(
    trained: Path, prepared: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    options = EvalOptions(split="train", n_boot=0, report=False)
    evaluate_checkpoint(ckpt, prepared, tmp_path / "ev", options=options, write_card=False,
                        progress=False)  # fmt: skip
    bundle = export_bundle(ckpt, tmp_path / "b", onnx=False, evaluation=tmp_path / "ev")
    text = (bundle / MODEL_CARD_MD).read_text()
    assert "The figures are on the train split, not a held-out test split: optimistic." in text


def test_the_gate_section_says_how_its_threshold_was_set() -> None:
    """From the card's own gate entry: the held-out and validation counts and shares of a
    pooled (PAC) threshold; for one set on validation alone, that and why."""
    import numpy as np

    from cxrkit.deploy.model_card import model_card_markdown
    from cxrkit.models.gate import FeatureGate
    from tests.models.test_feature_gate import features

    pooled = FeatureGate.fit(features(400, seed=1), features(100, seed=2), groups=np.arange(400))
    g = pooled.to_dict()
    text = model_card_markdown({"gate": g})
    assert (
        f"threshold {g['threshold']:.1f}, set on 400 held-out training images (5 folds by "
        "patient) and 100 validation images so that at most 5.0% of in-distribution images "
        f"are flagged with 90% confidence; it flags {g['held_out_false_alarm_rate']:.1%} of "
        f"those training and {g['val_false_alarm_rate']:.1%} of those validation images." in text
    )
    few = FeatureGate.fit(features(40, seed=1), features(30, seed=2), groups=np.arange(40) % 3)
    g = few.to_dict()
    assert (
        f"threshold {g['threshold']:.1f}, set on 30 validation images so that 5.0% of "
        "in-distribution images are flagged on average; it flags "
        f"{g['val_false_alarm_rate']:.1%} of them (on validation alone: too few patients"
        in model_card_markdown({"gate": g})
    )
    old = {k: v for k, v in g.items() if k not in ("threshold_rule", "n_held_out")}
    assert "(on validation alone" not in model_card_markdown({"gate": old})  # an older card
