"""cxrkit.evaluate.calibration: recovery of known maps, scikit-learn parity, metrics, round trip,
errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss, log_loss

from cxrkit.errors import UserError
from cxrkit.evaluate import calibration as cal
from cxrkit.evaluate.metrics import roc_auc

N = 20_000


def _draw(true_map, n: int = N, n_classes: int = 1, seed: int = 0):
    """Scores p = sigmoid(z), labels ~ Bernoulli(sigmoid(true_map(z))), z ~ N(0, 2^2)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, n_classes))
    y = (rng.random(z.shape) < expit(true_map(z))).astype(float)
    return y, expit(z)


def _overconfident(n_classes: int = 3, seed: int = 1):
    """Scores twice as sharp as the truth, with some labels unknown (NaN)."""
    y, p = _draw(lambda z: 0.5 * z + 0.3, n=4000, n_classes=n_classes, seed=seed)
    y[np.random.default_rng(seed).random(y.shape) < 0.1] = np.nan
    return y, p


def test_temperature_recovers_known_t():
    for t_true in (0.5, 2.0):
        y, p = _draw(lambda z, t=t_true: z / t)
        fitted = cal.fit_calibrator(y, p, method="temperature", classes=["a"])
        assert fitted.params[0]["temperature"] == pytest.approx(t_true, rel=0.05)


def test_platt_recovers_known_slope_and_intercept():
    y, p = _draw(lambda z: 0.5 * z - 1.0)
    (params,) = cal.fit_calibrator(y, p, method="platt", classes=["a"]).params
    assert params["a"] == pytest.approx(0.5, abs=0.03)
    assert params["b"] == pytest.approx(-1.0, abs=0.05)


def test_platt_stays_finite_on_separable_data():
    p = np.linspace(0.01, 0.99, 50)[:, None]
    fitted = cal.fit_calibrator((p > 0.5).astype(float), p, method="platt", classes=["a"])
    assert np.isfinite([fitted.params[0]["a"], fitted.params[0]["b"]]).all()
    out = fitted.apply(p)
    assert np.all(np.diff(out[:, 0]) > 0) and out.min() > 0 and out.max() < 1


def test_isotonic_matches_sklearn_and_is_monotone():
    y, p = _overconfident(n_classes=2)
    fitted = cal.fit_calibrator(y, p, method="isotonic", classes=["a", "b"])
    grid = np.linspace(0, 1, 501)[:, None].repeat(2, axis=1)
    out = fitted.apply(grid)
    for j in range(2):
        keep = ~np.isnan(y[:, j])
        iso = IsotonicRegression(out_of_bounds="clip").fit(p[keep, j], y[keep, j])
        np.testing.assert_allclose(out[:, j], iso.predict(grid[:, j]), atol=1e-12)
        np.testing.assert_allclose(fitted.apply(p)[:, j], iso.predict(p[:, j]), atol=1e-12)
    assert np.all(np.diff(out, axis=0) >= 0)


@pytest.mark.parametrize("method", cal.METHODS)
def test_every_method_improves_overconfident_scores(method):
    y, p = _overconfident()
    calibrated = cal.fit_calibrator(y, p, method=method, classes=list("abc")).apply(p)
    assert np.all(cal.nll(y, calibrated) < cal.nll(y, p))
    assert np.all(cal.ece(y, calibrated) < cal.ece(y, p))
    assert np.all(cal.brier(y, calibrated) < cal.brier(y, p))


@pytest.mark.parametrize("method", cal.METHODS)
def test_apply_keeps_ranking(method):
    y, p = _overconfident()
    calibrated = cal.fit_calibrator(y, p, method=method, classes=list("abc")).apply(p)
    assert calibrated.shape == p.shape and calibrated.min() >= 0 and calibrated.max() <= 1
    order = np.argsort(p, axis=0)
    assert np.all(np.diff(np.take_along_axis(calibrated, order, axis=0), axis=0) >= 0)
    if method != "isotonic":  # strictly increasing: same ranking, same AUROC
        np.testing.assert_allclose(roc_auc(y, calibrated), roc_auc(y, p), atol=1e-12)


@pytest.mark.parametrize("method", cal.METHODS)
def test_json_round_trip_gives_identical_outputs(method):
    y, p = _overconfident()
    fitted = cal.fit_calibrator(y, p, method=method, classes=list("abc"))
    restored = cal.Calibrator.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert restored == fitted
    np.testing.assert_array_equal(restored.apply(p), fitted.apply(p))


@pytest.mark.parametrize("method", cal.METHODS)
def test_one_class_column_gets_identity_and_warning(method):
    y, p = _overconfident(n_classes=2)
    y[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 0.0)
    with pytest.warns(UserWarning, match=r"identity .*'Hernia' \(column 1\)"):
        fitted = cal.fit_calibrator(y, p, method=method, classes=["Effusion", "Hernia"])
    assert fitted.params[1] == cal._IDENTITY[method]
    np.testing.assert_allclose(fitted.apply(p)[:, 1], p[:, 1], atol=1e-9)


def test_brier_matches_sklearn_with_nan_masked():
    y, p = _overconfident()
    ours = cal.brier(y, p)
    for j in range(y.shape[1]):
        keep = ~np.isnan(y[:, j])
        assert ours[j] == pytest.approx(brier_score_loss(y[keep, j], p[keep, j]), abs=1e-12)
        assert cal.nll(y, p)[j] == pytest.approx(log_loss(y[keep, j], p[keep, j]), abs=1e-9)


def test_ece_and_reliability_by_hand():
    y = np.array([[0, 1], [1, np.nan], [1, 0], [1, 1]], dtype=float)
    p = np.array([[0.1, 0.2], [0.3, 0.9], [0.6, 0.4], [0.9, 0.8]])
    # n_bins=2, bins [0, 0.5] and (0.5, 1]. Column 0: bin 1 mean p 0.2 vs rate 0.5 (2 samples),
    # bin 2 mean p 0.75 vs rate 1 (2 samples). Column 1 (3 labelled): bin 1 {0.2: 1, 0.4: 0}
    # mean p 0.3 vs rate 0.5; bin 2 {0.8: 1}.
    expected = [0.5 * 0.3 + 0.5 * 0.25, (2 * 0.2 + 1 * 0.2) / 3]
    np.testing.assert_allclose(cal.ece(y, p, n_bins=2), expected, atol=1e-12)
    mean_p, freq, count = cal.reliability_curve(y[:, 1], p[:, 1], n_bins=2)
    np.testing.assert_allclose(mean_p, [0.3, 0.8])
    np.testing.assert_allclose(freq, [0.5, 1.0])
    np.testing.assert_array_equal(count, [2, 1])
    assert np.isnan(cal.ece([[np.nan]], [[0.5]])[0]) and np.isnan(cal.brier([[np.nan]], [[0.5]])[0])


def test_reliability_curve_matches_sklearn_and_drops_empty_bins():
    y, p = _overconfident(n_classes=1)
    keep = ~np.isnan(y[:, 0])
    prob_true, prob_pred = calibration_curve(y[keep, 0], p[keep, 0], n_bins=15)
    mean_p, freq, count = cal.reliability_curve(y[:, 0], p[:, 0], n_bins=15)
    np.testing.assert_allclose(mean_p, prob_pred, atol=1e-12)
    np.testing.assert_allclose(freq, prob_true, atol=1e-12)
    assert count.sum() == keep.sum()
    mean_p, _, count = cal.reliability_curve([0, 1], [0.01, 0.02], n_bins=10)
    assert mean_p.tolist() == [0.015] and count.tolist() == [2]


def test_compare_methods_reports_every_method_as_json():
    y, p = _overconfident()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = json.loads(json.dumps(cal.compare_methods(y, p, classes=list("abc"))))
    assert set(report["methods"]) == {"uncalibrated", *cal.METHODS}
    base = report["methods"]["uncalibrated"]
    np.testing.assert_allclose(base["ece"], cal.ece(y, p))
    for method in cal.METHODS:
        scores = report["methods"][method]
        assert len(scores["nll"]) == 3
        assert scores["macro"]["nll"] < base["macro"]["nll"]
        assert scores["macro"]["ece"] < base["macro"]["ece"]


def test_compare_methods_in_sample_matches_fit_calibrator():
    y, p = _overconfident()
    report = cal.compare_methods(y, p, classes=list("abc"), n_folds=1)
    fitted = cal.fit_calibrator(y, p, method="isotonic", classes=list("abc")).apply(p)
    np.testing.assert_allclose(report["methods"]["isotonic"]["brier"], cal.brier(y, fitted))


def test_unknown_method_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'temperature'"):
        cal.fit_calibrator([[1.0], [0.0]], [[0.9], [0.1]], method="temprature", classes=["a"])
    with pytest.raises(UserError, match="did you mean 'isotonic'"):
        cal.Calibrator.from_dict({"method": "isotonc", "classes": [], "params": []})


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cal.brier(np.zeros((4, 2)), np.zeros((4, 3))), "one shape"),
        (lambda: cal.fit_calibrator([[1.0]], [[2.0]], method="platt", classes=["a"]), r"\[0, 1\]"),
        (
            lambda: cal.fit_calibrator([[1.0]], [[0.5]], method="platt", classes=["a", "b"]),
            "one per",
        ),
        (lambda: cal.ece([[1.0]], [[0.5]], n_bins=0), "n_bins"),
        (lambda: cal.compare_methods([[1.0]], [[0.5]], classes=["a"], n_folds=2), "n_folds"),
        (lambda: cal.reliability_curve(np.zeros((3, 2)), np.zeros((3, 2))), "one class"),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_apply_and_from_dict_check_their_inputs():
    fitted = cal.Calibrator("temperature", [{"temperature": 2.0}], ["a"])
    with pytest.raises(ValueError, match=r"shape \(n_samples, 1\)"):
        fitted.apply(np.full((3, 2), 0.5))
    with pytest.raises(UserError, match="one"):
        cal.Calibrator.from_dict({"method": "platt", "classes": ["a"], "params": [{"a": 1.0}]})
