"""cxrkit.evaluate.thresholds: the chosen threshold is optimal by brute force over candidate
scores."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn import metrics as skm

from cxrkit.errors import UserError
from cxrkit.evaluate.thresholds import FALLBACK_THRESHOLD, METHODS, tune_thresholds

FAST = settings(max_examples=60, deadline=None)


@st.composite
def labels_and_scores(draw):
    """(y_true, y_score) with labels in {0, 1, NaN} and scores rounded to 1-2 decimals."""
    n, k = draw(st.integers(1, 30)), draw(st.integers(1, 3))
    y = draw(arrays(np.float64, (n, k), elements=st.sampled_from([0.0, 1.0, np.nan])))
    scale = draw(st.sampled_from([10, 100]))
    s = draw(arrays(np.float64, (n, k), elements=st.integers(-scale, scale))) / scale
    return y, s


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    return skm.f1_score(y, pred, zero_division=0.0)


def _youden(y: np.ndarray, pred: np.ndarray) -> float:
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return tp / (tp + fn) + tn / (tn + fp) - 1


def _check_optimal(y, s, chosen, objective, messages):
    for j in range(y.shape[1]):
        keep = ~np.isnan(y[:, j])
        yj, sj = y[keep, j], s[keep, j]
        if not ((yj == 1).any() and (yj == 0).any()):
            assert chosen[j] == FALLBACK_THRESHOLD
            assert any(f"column {j} [" in m for m in messages), messages
            continue
        candidates = np.unique(sj)
        values = np.array([objective(yj, (sj >= t).astype(float)) for t in candidates])
        assert chosen[j] in candidates
        best = values.max()
        assert objective(yj, (sj >= chosen[j]).astype(float)) == pytest.approx(best, abs=1e-12)
        assert chosen[j] == candidates[values >= best - 1e-12].max()  # ties: higher threshold


@FAST
@given(labels_and_scores(), st.sampled_from(METHODS))
def test_chosen_threshold_is_optimal_by_brute_force(data, method):
    y, s = data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = tune_thresholds(y, s, method=method)
    assert chosen.shape == (y.shape[1],)
    messages = [str(w.message) for w in caught]
    _check_optimal(y, s, chosen, {"f1": _f1, "youden": _youden}[method], messages)


def test_methods_registry():
    assert METHODS == ("f1", "youden")


def test_known_thresholds():
    y = np.array([0, 0, 1, 1, 0, 1], dtype=float)
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    # F1: t=0.3 gives tp=3, fp=1 -> 6/7; t=0.6 gives tp=2, fp=1 -> 4/6.
    assert tune_thresholds(y, s, method="f1")[0] == 0.3
    # Youden: t=0.3 gives 1 + 2/3 - 1; t=0.9 gives 1/3 + 1 - 1; t=0.6 gives 2/3 + 2/3 - 1.
    assert tune_thresholds(y, s, method="youden")[0] == 0.3
    # Youden ties at 0.9 and 0.7 (J = 1/2 both): the higher threshold wins.
    y, s = np.array([1, 0, 1, 0], dtype=float), np.array([0.9, 0.8, 0.7, 0.6])
    assert tune_thresholds(y, s, method="youden")[0] == 0.9


def test_one_class_column_gets_fallback_and_warning():
    y = np.array([[0, 1], [1, 1], [0, np.nan]], dtype=float)
    s = np.array([[0.2, 0.1], [0.7, 0.9], [0.4, 0.3]])
    with pytest.warns(UserWarning, match=r"threshold 0\.5 .*class 'Mass' \(column 1\)"):
        chosen = tune_thresholds(y, s, classes=["Nodule", "Mass"])
    assert chosen.tolist() == [0.7, 0.5]


def test_unknown_method_suggests_the_closest():
    with pytest.raises(UserError, match=r"threshold method 'yuoden'; did you mean 'youden'"):
        tune_thresholds([0, 1], [0.1, 0.9], method="yuoden")


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match=r"y_true \(3,\) and y_score \(2,\)"):
        tune_thresholds([0, 1, 1], [0.1, 0.9])
    with pytest.raises(ValueError, match=r"y_score must be a number.*first at sample 0"):
        tune_thresholds([0, 1], [np.nan, 0.9])
    with pytest.raises(ValueError, match=r"or NaN \(unknown\); found \[0\.5\]"):
        tune_thresholds([0, 0.5], [0.1, 0.9])


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_target_sensitivity_and_specificity_methods(target):
    rng = np.random.default_rng(3)
    y = (rng.random((300, 2)) < 0.3).astype(float)
    s = np.round(y * 0.3 + rng.random((300, 2)), 2)
    t_sens = tune_thresholds(y, s, method=f"sensitivity:{target}")
    t_spec = tune_thresholds(y, s, method=f"specificity:{target}")
    for j in range(2):
        pos, neg = s[y[:, j] == 1, j], s[y[:, j] == 0, j]
        candidates = np.unique(s[:, j])
        sens = np.array([(pos >= c).mean() for c in candidates])
        spec = np.array([(neg < c).mean() for c in candidates])
        assert (pos >= t_sens[j]).mean() >= target
        assert t_sens[j] == candidates[sens >= target].max()  # most specific such point
        if (spec >= target).any():
            assert (neg < t_spec[j]).mean() >= target
            assert t_spec[j] == candidates[spec >= target].min()  # most sensitive such point


def test_bad_target_is_a_user_error():
    with pytest.raises(UserError, match="target must be a number"):
        tune_thresholds(np.array([[0.0], [1.0]]), np.array([[0.1], [0.9]]), method="sensitivity:2")
