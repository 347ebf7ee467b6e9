"""The feature-space gate on feature arrays: calibration of its false-alarm rate, the card
round trip, the shrinkage formula, the reference distributions and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from cxrkit.errors import UserError
from cxrkit.models.gate import (
    FeatureGate,
    check_false_alarm_rate,
    ledoit_wolf,
    reference_distribution,
)
from cxrkit.models.gate_threshold import conformal_threshold, min_validation_images


def features(n: int, d: int = 48, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Correlated non-negative features like pooled ReLU activations: a low-rank signal
    plus noise, then a softplus."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(8, d))
    x = rng.normal(size=(n, 8)) @ mixing + 0.3 * rng.normal(size=(n, d)) + shift
    return np.log1p(np.exp(x))


def test_false_alarm_rate_holds_on_held_out_data() -> None:
    gate = FeatureGate.fit(features(3000, seed=1), features(1000, seed=2), false_alarm_rate=0.05)
    held_out = gate.flags(gate.score(features(20000, seed=3))).mean()
    assert 0.03 <= held_out <= 0.055  # at most 5% with 90% confidence, not far below it
    assert gate.val_false_alarm_rate <= 0.07
    strict = FeatureGate.fit(features(3000, seed=1), features(1000, seed=2), false_alarm_rate=0.01)
    assert strict.threshold > gate.threshold
    assert strict.flags(strict.score(features(20000, seed=3))).mean() < 0.02


def test_shifted_and_unstructured_features_are_flagged() -> None:
    gate = FeatureGate.fit(features(2000, seed=1), features(500, seed=2))
    shifted = features(500, seed=4, shift=3.0)
    noise = 4 * np.random.default_rng(5).random((500, 48))  # no correlation structure
    assert gate.flags(gate.score(shifted)).mean() > 0.95
    assert gate.flags(gate.score(noise)).mean() > 0.95
    assert gate.flags(np.array([np.nan])).all()  # a NaN score is never in distribution


def test_card_round_trip_is_exact_and_small() -> None:
    gate = FeatureGate.fit(features(400, seed=1), features(100, seed=2))
    entry = json.loads(json.dumps(gate.to_dict()))
    again = FeatureGate.from_dict(entry)
    x = features(50, seed=6)
    np.testing.assert_array_equal(again.score(x), gate.score(x))
    assert again.threshold == gate.threshold and again.n_train == 400 and again.n_val == 100
    for key in ("method", "false_alarm_rate", "threshold", "n_train", "n_val"):
        assert key in entry
    assert 0.0 <= entry["val_false_alarm_rate"] <= 0.05
    # a DenseNet-169-sized feature (1664) with k = 64 components stays well under 2 MB
    wide = FeatureGate.estimate(np.random.default_rng(0).random((300, 1664)))  # no threshold
    assert len(json.dumps(wide.to_dict())) < 2_000_000
    assert wide.to_dict()["components"] <= 64


def test_ledoit_wolf_matches_scikit_learn() -> None:
    z = features(300, d=12, seed=7)
    z = z - z.mean(axis=0)
    ours, shrink = ledoit_wolf(z)
    theirs, their_shrink = sklearn_ledoit_wolf(z, assume_centered=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert shrink == pytest.approx(their_shrink)


def test_conformal_threshold() -> None:
    scores = np.arange(1.0, 20.0)  # 19 scores: rank ceil(20 * 0.95) = 19 -> the largest
    assert conformal_threshold(scores, 0.05) == 19.0
    assert conformal_threshold(np.arange(1.0, 100.0), 0.1) == 90.0  # ceil(100 * 0.9) = 90


def test_reference_distribution_schema() -> None:
    probs = np.random.default_rng(0).random((200, 3))
    probs[0] = 1.0
    ref = reference_distribution(probs, ["A", "B", "C"], "val")
    assert set(ref) == {"split", "n_images", "bin_edges", "fractions"}
    assert ref["split"] == "val" and ref["n_images"] == 200
    assert ref["bin_edges"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    for f in "ABC":
        assert len(ref["fractions"][f]) == 10
        assert sum(ref["fractions"][f]) == pytest.approx(1.0)
    assert ref["fractions"]["A"][9] == pytest.approx(np.mean(probs[:, 0] >= 0.9))
    json.dumps(ref)


def test_bad_input() -> None:
    for rate in (1.5, 0.0, -0.1, 0.6):
        with pytest.raises(UserError, match="false-alarm-rate"):
            check_false_alarm_rate(rate)
    with pytest.raises(UserError, match="at least 10"):
        FeatureGate.fit(features(5), features(50))
    gate = FeatureGate.fit(features(100), features(30))
    with pytest.raises(UserError, match="fitted on another model"):
        gate.score(np.zeros((2, 7)))
    with pytest.raises(UserError, match="NaN"):
        FeatureGate.fit(np.full((20, 4), np.nan), features(20, d=4))
    with pytest.raises(UserError, match="method"):
        FeatureGate.from_dict({**gate.to_dict(), "method": "other/9"})


def test_a_rate_too_small_for_the_validation_images_is_refused() -> None:
    assert [min_validation_images(a) for a in (0.05, 0.1, 0.01, 0.5)] == [19, 9, 99, 1]
    scores = np.arange(19, dtype=float)
    assert conformal_threshold(scores, 0.05) == 18.0  # rank ceil(20 * 0.95) = 19 of 19
    with pytest.raises(UserError, match="needs at least 19 validation images .* got 18"):
        conformal_threshold(scores[:18], 0.05)
