"""cxrkit.evaluate.metrics against scikit-learn: ties, NaN-masked labels, one-class columns, bad
input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn import metrics as skm

from cxrkit.evaluate import metrics

TOL = 1e-9
FAST = settings(max_examples=60, deadline=None)


@st.composite
def labels_and_scores(draw, max_classes: int = 4, max_samples: int = 40):
    """(y_true, y_score): labels in {0, 1, NaN}; scores rounded to 1-2 decimals (many ties)."""
    n = draw(st.integers(1, max_samples))
    k = draw(st.integers(1, max_classes))
    y = draw(arrays(np.float64, (n, k), elements=st.sampled_from([0.0, 1.0, np.nan])))
    scale = draw(st.sampled_from([10, 100]))
    s = draw(arrays(np.float64, (n, k), elements=st.integers(-scale, scale))) / scale
    return y, s


def _labelled(y: np.ndarray, s: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(y[:, j])
    return y[keep, j], s[keep, j]


def _two_classes(y: np.ndarray) -> bool:
    return bool((y == 1).any() and (y == 0).any())


def _record(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _check_per_class(ours: np.ndarray, reference, y: np.ndarray, s: np.ndarray, messages):
    assert ours.shape == (y.shape[1],)
    for j in range(y.shape[1]):
        yj, sj = _labelled(y, s, j)
        if _two_classes(yj):
            assert abs(ours[j] - reference(yj, sj)) <= TOL
        else:
            assert np.isnan(ours[j])
            assert any(f"column {j} [" in m for m in messages), messages


@FAST
@given(labels_and_scores())
def test_roc_auc_matches_sklearn(data):
    y, s = data
    ours, messages = _record(metrics.roc_auc, y, s)
    _check_per_class(ours, skm.roc_auc_score, y, s, messages)


def test_large_inputs_with_ties_match_sklearn():
    rng = np.random.default_rng(2)
    y = (rng.random((5000, 4)) < [0.02, 0.1, 0.3, 0.5]).astype(float)
    y[rng.random((5000, 4)) < 0.3] = np.nan
    s = np.round(rng.normal(size=(5000, 4)) + np.nan_to_num(y), 1)
    auc, ap = metrics.roc_auc(y, s), metrics.average_precision(y, s)
    for j in range(4):
        yj, sj = _labelled(y, s, j)
        assert abs(auc[j] - skm.roc_auc_score(yj, sj)) <= TOL
        assert abs(ap[j] - skm.average_precision_score(yj, sj)) <= TOL


@FAST
@given(labels_and_scores())
def test_average_precision_matches_sklearn(data):
    y, s = data
    ours, messages = _record(metrics.average_precision, y, s)
    _check_per_class(ours, skm.average_precision_score, y, s, messages)


@FAST
@given(labels_and_scores(max_classes=1), st.data())
def test_weighted_core_matches_sklearn_sample_weight(data, draw):
    y, s = data[0][:, 0], data[1][:, 0]
    w = draw.draw(arrays(np.float64, (3, y.size), elements=st.integers(0, 3)))
    auc = metrics.weighted_roc_auc(y, s, w)
    ap = metrics.weighted_average_precision(y, s, w)
    assert auc.shape == ap.shape == (3,)
    keep = ~np.isnan(y)
    for b in range(3):
        yb, sb, wb = y[keep], s[keep], w[b, keep]
        if _two_classes(yb[wb > 0]):
            assert abs(auc[b] - skm.roc_auc_score(yb, sb, sample_weight=wb)) <= TOL
            assert abs(ap[b] - skm.average_precision_score(yb, sb, sample_weight=wb)) <= TOL
        else:
            assert np.isnan(auc[b]) and np.isnan(ap[b])


def test_weighted_core_bootstrap_counts_equal_resampled_data():
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 300).astype(float), np.round(rng.normal(size=300), 1)
    y[rng.random(300) < 0.1] = np.nan
    idx = rng.integers(0, 300, (5, 300))
    counts = np.stack([np.bincount(i, minlength=300) for i in idx])
    auc = metrics.weighted_roc_auc(y, s, counts)
    ap = metrics.weighted_average_precision(y, s, counts)
    for b, i in enumerate(idx):
        assert auc[b] == pytest.approx(metrics.roc_auc(y[i], s[i])[0], abs=1e-12)
        assert ap[b] == pytest.approx(metrics.average_precision(y[i], s[i])[0], abs=1e-12)


@FAST
@given(labels_and_scores(max_classes=1))
def test_roc_curve_matches_sklearn(data):
    y, s = _labelled(*data, 0)
    if not _two_classes(y):
        return
    fpr, tpr, thr = metrics.roc_curve(data[0][:, 0], data[1][:, 0])
    ref = skm.roc_curve(y, s, drop_intermediate=False)
    for ours, theirs in zip((fpr, tpr, thr), ref, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)


@FAST
@given(labels_and_scores())
def test_micro_matches_sklearn_on_pooled_pairs(data):
    y, s = data
    keep = ~np.isnan(y)
    auc, auc_messages = _record(metrics.micro_roc_auc, y, s)
    ap, _ = _record(metrics.micro_average_precision, y, s)
    if _two_classes(y[keep]):
        assert abs(auc - skm.roc_auc_score(y[keep], s[keep])) <= TOL
        assert abs(ap - skm.average_precision_score(y[keep], s[keep])) <= TOL
    else:
        assert np.isnan(auc) and np.isnan(ap)
        assert any("pooled" in m for m in auc_messages)


def _brute_force_rate_at_rate(y, s, target, *, fixed):
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    if fixed == "specificity":
        return tpr[1 - fpr >= target - metrics.RATE_TOLERANCE].max()
    return (1 - fpr)[tpr >= target - metrics.RATE_TOLERANCE].max()


@FAST
@given(labels_and_scores(), st.sampled_from([0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0]))
def test_sensitivity_at_specificity_brute_force(data, target):
    y, s = data
    ours, messages = _record(metrics.sensitivity_at_specificity, y, s, specificity=target)
    reference = lambda yj, sj: _brute_force_rate_at_rate(yj, sj, target, fixed="specificity")  # noqa: E731
    _check_per_class(ours, reference, y, s, messages)


@FAST
@given(labels_and_scores(), st.sampled_from([0.0, 0.5, 0.7, 0.8, 0.9, 1.0]))
def test_specificity_at_sensitivity_brute_force(data, target):
    y, s = data
    ours, messages = _record(metrics.specificity_at_sensitivity, y, s, sensitivity=target)
    reference = lambda yj, sj: _brute_force_rate_at_rate(yj, sj, target, fixed="sensitivity")  # noqa: E731
    _check_per_class(ours, reference, y, s, messages)


@FAST
@given(labels_and_scores(), st.data())
def test_confusion_matches_sklearn_confusion_matrix(data, draw):
    y, s = data
    choices = st.sampled_from([-0.5, 0.0, 0.1, 0.5, 1.0])
    t = np.array([draw.draw(choices) for _ in range(y.shape[1])])
    out = metrics.confusion_at_thresholds(y, s, t)
    for j in range(y.shape[1]):
        yj, sj = _labelled(y, s, j)
        if yj.size == 0:
            assert out["tp"][j] == out["fp"][j] == out["tn"][j] == out["fn"][j] == 0
            continue
        pred = (sj >= t[j]).astype(float)
        tn, fp, fn, tp = skm.confusion_matrix(yj, pred, labels=[0, 1]).ravel()
        assert (out["tp"][j], out["fp"][j], out["tn"][j], out["fn"][j]) == (tp, fp, tn, fn)
        expected = {
            "sensitivity": (tp, tp + fn),
            "specificity": (tn, tn + fp),
            "ppv": (tp, tp + fp),
            "npv": (tn, tn + fn),
            "f1": (2 * tp, 2 * tp + fp + fn),
        }
        for key, (num, den) in expected.items():
            if den:
                assert out[key][j] == pytest.approx(num / den, abs=TOL)
            else:
                assert np.isnan(out[key][j])
        if tp + fp + fn:
            assert out["f1"][j] == pytest.approx(skm.f1_score(yj, pred), abs=TOL)


def test_one_class_column_is_nan_and_warning_names_the_class():
    y = np.array([[1, 1], [0, 1], [np.nan, np.nan], [1, 1]], dtype=float)
    s = np.array([[0.9, 0.2], [0.1, 0.3], [0.5, 0.5], [0.8, 0.4]])
    with pytest.warns(UserWarning, match=r"class 'Hernia' \(column 1\) \[3 positive, 0 negative\]"):
        auc = metrics.roc_auc(y, s, classes=["Effusion", "Hernia"])
    assert auc[0] == 1.0 and np.isnan(auc[1])
    with pytest.warns(UserWarning, match=r"average_precision: NaN .*column 1"):
        assert np.isnan(metrics.average_precision(y, s)[1])


def test_one_dimensional_inputs_are_one_class():
    auc = metrics.roc_auc([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.4])
    assert auc.shape == (1,) and auc[0] == pytest.approx(0.875)


def test_summarize_shape_and_json():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (50, 3)).astype(float)
    y[rng.random((50, 3)) < 0.2] = np.nan
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # no positives: skipped
    s = rng.random((50, 3))
    classes = ["Atelectasis", "Effusion", "Hernia"]
    with pytest.warns(UserWarning, match="'Hernia'"):
        out = metrics.summarize(y, s, classes=classes, thresholds=[0.5, 0.4, 0.3], specificity=0.9)
    json.dumps(out, allow_nan=False)
    assert list(out) == ["classes", "per_class", "macro", "micro", "n_images", "skipped_classes"]
    assert out["classes"] == classes and out["n_images"] == 50
    assert out["skipped_classes"] == ["Hernia"]
    row = out["per_class"]["Effusion"]
    assert set(row) == {
        "auroc", "ap", "threshold", "sensitivity", "specificity", "sens_at_spec_0.9",
        "prevalence", "n_labelled", "n_positive",
    }  # fmt: skip
    assert row["threshold"] == 0.4
    assert row["auroc"] == pytest.approx(metrics.weighted_roc_auc(y[:, 1], s[:, 1]), abs=1e-15)
    assert row["n_labelled"] == int((~np.isnan(y[:, 1])).sum())
    assert row["prevalence"] == pytest.approx(row["n_positive"] / row["n_labelled"])
    hernia = out["per_class"]["Hernia"]
    assert hernia["auroc"] is None and hernia["ap"] is None and hernia["sensitivity"] is None
    auroc = [out["per_class"][c]["auroc"] for c in classes[:2]]
    assert out["macro"]["auroc"] == pytest.approx(np.mean(auroc))
    assert out["micro"]["auroc"] == pytest.approx(metrics.micro_roc_auc(y, s))


def test_summarize_all_skipped_gives_none_macro():
    y = np.ones((4, 2))
    with pytest.warns(UserWarning):
        out = metrics.summarize(y, np.zeros((4, 2)), classes=["a", "b"], thresholds=[0.5, 0.5])
    assert out["macro"] == {"auroc": None, "ap": None}
    assert out["micro"] == {"auroc": None, "ap": None}
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        (np.zeros((4, 2)), np.zeros((4, 3)), r"of one shape.*y_true \(4, 2\) and y_score \(4, 3\)"),
        (np.zeros(4), np.zeros((4, 1)), r"got y_true \(4,\) and y_score \(4, 1\)"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), r"\(n_samples, n_classes\)"),
        ([[0, 2], [1, 0]], np.zeros((2, 2)), r"1 \(present\), 0 \(absent\) or NaN.*\[2\.0\]"),
        ([0, -1, 1], np.zeros(3), r"found \[-1\.0\], first at sample 1"),
        ([0, 1, 1], [0.1, np.nan, 0.3], r"y_score must be a number.*1 NaN, first at sample 1"),
        (["a", "b"], [0.1, 0.2], r"y_true must be numeric"),
    ],
)
def test_bad_input_raises_value_error_saying_what_was_expected(y, s, message):
    with pytest.raises(ValueError, match=message):
        metrics.roc_auc(y, s)


def test_bad_options_raise_value_error():
    y, s = np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match=r"expected 2 class names, one per column; got \['a'\]"):
        metrics.roc_auc(y, s, classes=["a"])
    with pytest.raises(ValueError, match=r"expected specificity between 0 and 1; got 80"):
        metrics.sensitivity_at_specificity(y, s, specificity=80)
    with pytest.raises(ValueError, match=r"one non-NaN threshold per class, shape \(2,\)"):
        metrics.confusion_at_thresholds(y, s, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"unique class names"):
        metrics.summarize(y, s, classes=["a", "a"], thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"one class, shape \(n_samples,\); got shape \(2, 2\)"):
        metrics.roc_curve(y, s)
    with pytest.raises(ValueError, match=r"non-negative weights of shape \(\.\.\., 2\)"):
        metrics.weighted_roc_auc(y[:, 0], s[:, 0], [[1.0, -1.0]])
