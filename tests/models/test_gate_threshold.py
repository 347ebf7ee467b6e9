"""The input gate's threshold rules: the PAC (training-conditional) quantile, its binomial
count against scipy and its promise over repeated draws, held-out training scores by patient,
and the fall-back to the validation scores when they disagree with the held-out ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from cxrkit.errors import UserError
from cxrkit.models.gate import FeatureGate
from cxrkit.models.gate_threshold import (
    RULE_PAC,
    RULE_VAL_FALLBACK,
    RULE_VAL_FEW,
    allowed_exceedances,
    conformal_threshold,
    exceeds_too_often,
    min_calibration_images,
    out_of_fold_scores,
    pac_threshold,
)
from tests.models.test_feature_gate import features


def test_allowed_exceedances_is_the_largest_count_within_the_binomial_tail() -> None:
    for n, a, c in ((45, 0.05, 0.9), (1139, 0.05, 0.9), (500, 0.01, 0.95), (4, 0.5, 0.9)):
        k = allowed_exceedances(n, a, c)
        assert binom.cdf(k, n, a) <= 1 - c < binom.cdf(k + 1, n, a)
    assert allowed_exceedances(44, 0.05, 0.9) == -1  # 0.95**44 = 0.105 > 0.1
    assert [min_calibration_images(a, 0.9) for a in (0.05, 0.01, 0.5)] == [45, 230, 4]
    with pytest.raises(UserError, match="needs at least 45 calibration images, got 44"):
        pac_threshold(np.arange(44.0), 0.05, 0.9)
    # 100 scores 1..100 at 10%, 90% confidence: k = 5 of them may lie above -> the 95th
    assert pac_threshold(np.arange(1.0, 101.0), 0.1, 0.9) == 100 - allowed_exceedances(
        100, 0.1, 0.9
    )


def test_pac_keeps_its_promise_over_draws_and_conformal_only_on_average() -> None:
    """Uniform scores: the true share above a threshold t is 1 - t. Over 2000 draws of 150
    calibration scores, the PAC threshold's share exceeds 5% in at most 10% of draws (the
    promise; 5.5% exactly here, since k is a whole number); the conformal one's averages 5%
    but exceeds it in about half."""
    rng = np.random.default_rng(0)
    pac, conformal = [], []
    for _ in range(2000):
        s = rng.random(150)
        pac.append(1 - pac_threshold(s, 0.05, 0.9))
        conformal.append(1 - conformal_threshold(s, 0.05))
    pac_a, conf_a = np.array(pac), np.array(conformal)
    assert np.mean(pac_a > 0.05) <= 0.1 + 0.02
    assert np.mean(pac_a > 0.05) >= 0.03  # not needlessly strict either
    assert abs(conf_a.mean() - 0.05) < 0.005 and np.mean(conf_a > 0.05) > 0.35


def test_exceeds_too_often_is_a_one_sided_binomial_test() -> None:
    scores = np.arange(100.0)
    assert not exceeds_too_often(scores, 94.5, 0.05)  # 5 of 100 above
    assert not exceeds_too_often(scores, 89.5, 0.05)  # 10: P(X >= 10) = 0.028
    assert exceeds_too_often(scores, 87.5, 0.05)  # 12: P(X >= 12) = 0.0043


def test_held_out_scores_never_see_the_same_patient() -> None:
    """Rows carry their own index, so the fit and the scored rows of each fold can be told
    apart: no patient (three films each) is on both sides, and every row is scored once."""
    patients = np.repeat(np.arange(50), 3)
    rows = np.arange(150.0)[:, None]
    seen: list[np.ndarray] = []

    def fit_score(fit_rows: np.ndarray, scored: np.ndarray) -> np.ndarray:
        fitted_patients = set(patients[fit_rows[:, 0].astype(int)])
        assert not fitted_patients & set(patients[scored[:, 0].astype(int)])
        seen.append(scored[:, 0])
        return scored[:, 0] * 2

    scores = out_of_fold_scores(fit_score, rows, patients)
    assert scores is not None and len(seen) == 5
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), rows[:, 0])
    np.testing.assert_array_equal(scores, rows[:, 0] * 2)  # each score in its row's place
    assert out_of_fold_scores(fit_score, rows[:40], np.arange(40) % 4) is None  # 4 patients


def test_fit_pools_held_out_training_and_validation_scores() -> None:
    train, val = features(2000, seed=1), features(300, seed=2)
    gate = FeatureGate.fit(train, val, groups=np.arange(2000) // 2)
    assert gate.threshold_rule == RULE_PAC and gate.confidence == 0.9
    assert gate.n_held_out == 2000 and gate.n_val == 300
    assert gate.held_out_false_alarm_rate <= 0.05 and gate.val_false_alarm_rate <= 0.1
    held_out = gate.flags(gate.score(features(20000, seed=3))).mean()
    # one draw of a promise kept with 90% confidence: 4.1% here; other seeds reach 5.4%
    assert 0.03 <= held_out <= 0.06
    entry = gate.to_dict()
    assert entry["threshold_rule"] == RULE_PAC and entry["n_held_out"] == 2000
    again = FeatureGate.from_dict(entry)
    assert again.threshold == gate.threshold and again.confidence == 0.9


def test_validation_unlike_the_held_out_training_scores_falls_back_to_validation() -> None:
    """Validation features noisier than the training ones (as when the network has learnt its
    training images): the pooled threshold flags far more than 5% of them, so the threshold
    is set on validation alone and says so."""
    train = features(1000, seed=1)
    val = features(200, seed=2) + 0.5 * np.random.default_rng(3).normal(size=(200, 48))
    gate = FeatureGate.fit(train, val)
    assert gate.threshold_rule == RULE_VAL_FALLBACK and math.isnan(gate.confidence)
    assert gate.val_false_alarm_rate <= 0.05 and gate.n_held_out == 0
    assert gate.to_dict()["confidence"] is None


def test_too_few_patients_for_folds_uses_validation_alone() -> None:
    gate = FeatureGate.fit(features(40, seed=1), features(30, seed=2), groups=np.arange(40) % 3)
    assert gate.threshold_rule == RULE_VAL_FEW
    assert gate.threshold == conformal_threshold(gate.score(features(30, seed=2)), 0.05)
    with pytest.raises(UserError, match=r"\(2,\) patient ids for 40 training rows"):
        FeatureGate.fit(features(40, seed=1), features(30, seed=2), groups=np.arange(2))
    # 13 training and 19 validation images: 32 scores, fewer than the 45 the promise needs
    small = FeatureGate.fit(features(13, seed=1), features(19, seed=2))
    assert small.threshold_rule == RULE_VAL_FEW and small.n_held_out == 0


def test_one_patient_with_most_films_gets_no_held_out_scores() -> None:
    """360 of 400 films from one patient: its fold would be scored by a fit on 40 rows (high
    scores, a loose line: a review measured 0.01% of new films flagged at 5% asked); refused,
    so the threshold is set on validation alone."""
    patients = np.concatenate([np.zeros(360, int), np.arange(1, 41)])
    train = features(400, seed=1)
    assert FeatureGate.held_out_scores(train, patients) is None
    gate = FeatureGate.fit(train, features(100, seed=2), groups=patients)
    assert gate.threshold_rule == RULE_VAL_FEW
    assert FeatureGate.held_out_scores(train, np.arange(400) // 4) is not None  # balanced


def test_patient_ids_of_any_type_and_a_checked_confidence() -> None:
    mixed = np.array([*range(100), *[f"p{i}" for i in range(100)]], dtype=object)
    assert FeatureGate.held_out_scores(features(200, seed=1), mixed) is not None
    with pytest.raises(UserError, match="patient ids for 200 training rows"):
        FeatureGate.held_out_scores(features(200, seed=1), np.zeros((200, 2)))
    for bad in (0, 1.0, 1.5, -0.1):
        with pytest.raises(UserError, match=r"confidence must be in \(0, 1\)"):
            FeatureGate.fit(features(100, seed=1), features(30, seed=2), confidence=bad)


def test_a_second_threshold_leaves_nothing_of_the_first() -> None:
    """set_threshold again without held-out scores (as gate_resplit.py does): the held-out
    fields of the pooled rule are cleared, so the card cannot mix the two."""
    gate = FeatureGate.fit(features(400, seed=1), features(100, seed=2))
    assert gate.threshold_rule == RULE_PAC and gate.n_held_out == 400
    gate.set_threshold(gate.score(features(100, seed=2)), None, 0.05, 0.9)
    assert gate.threshold_rule == RULE_VAL_FEW and gate.n_held_out == 0
    assert math.isnan(gate.held_out_false_alarm_rate) and math.isnan(gate.confidence)
    entry = gate.to_dict()
    assert entry["held_out_false_alarm_rate"] is None and entry["confidence"] is None


def test_an_older_card_without_held_out_scores_still_loads() -> None:
    entry = FeatureGate.fit(features(400, seed=1), features(100, seed=2)).to_dict()
    for key in ("confidence", "threshold_rule", "n_held_out", "held_out_false_alarm_rate"):
        del entry[key]
    old = FeatureGate.from_dict(entry)
    assert old.threshold == entry["threshold"] and old.n_held_out == 0
    assert math.isnan(old.confidence) and old.threshold_rule.startswith("conformal")
