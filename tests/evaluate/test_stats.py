"""cxrkit.evaluate.delong / cxrkit.evaluate.bootstrap: the vectorised bootstrap against
scikit-learn with count weights, cluster resampling, interval behaviour, and DeLong against a
slow O(mn) reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import norm
from sklearn import metrics as skm

from cxrkit.evaluate import bootstrap, metrics
from cxrkit.evaluate.bootstrap import bootstrap_ci, bootstrap_distribution, bootstrap_weights
from cxrkit.evaluate.delong import delong_ci, delong_test

TOL = 1e-9
FAST = settings(max_examples=60, deadline=None)
SPECS, SENS = (0.5, 0.8), (0.6, 0.9)


@st.composite
def resampling_cases(draw):
    """(y, s, thresholds, groups, n_boot, seed): labels in {0, 1, NaN}, scores with many ties."""
    n = draw(st.integers(2, 30))
    k = draw(st.integers(1, 3))
    y = draw(arrays(np.float64, (n, k), elements=st.sampled_from([0.0, 1.0, 1.0, np.nan])))
    s = draw(arrays(np.float64, (n, k), elements=st.integers(0, 6))) / 6
    t = draw(arrays(np.float64, (k,), elements=st.integers(0, 7))) / 6
    groups = draw(st.none() | arrays(np.int64, (n,), elements=st.integers(0, n // 2)))
    return y, s, t, groups, draw(st.integers(1, 6)), draw(st.integers(0, 2**32 - 1))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else np.nan


def _reference(y, s, t, w) -> dict[str, float]:
    """Per-class figures of one resample: scikit-learn / expanded-sample cxrkit.evaluate.metrics."""
    pos, neg = w[y == 1].sum(), w[y == 0].sum()
    if pos == 0 or neg == 0:
        return {}
    tn, fp, fn, tp = skm.confusion_matrix(y, s >= t, labels=[0, 1], sample_weight=w).ravel()
    y_rep, s_rep = np.repeat(y, w), np.repeat(s, w)
    return {
        "auroc": skm.roc_auc_score(y, s, sample_weight=w),
        "ap": skm.average_precision_score(y, s, sample_weight=w),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    } | {
        **{
            f"sens_at_spec_{v:g}": metrics.sensitivity_at_specificity(y_rep, s_rep, specificity=v)[
                0
            ]
            for v in SPECS
        },
        **{
            f"spec_at_sens_{v:g}": metrics.specificity_at_sensitivity(y_rep, s_rep, sensitivity=v)[
                0
            ]
            for v in SENS
        },
    }


def _close(ours: float, expected: float) -> bool:
    return (np.isnan(ours) and np.isnan(expected)) or abs(ours - expected) <= TOL


@FAST
@given(resampling_cases())
def test_every_resampled_figure_matches_sklearn_with_count_weights(case):
    y, s, t, groups, n_boot, seed = case
    ours = bootstrap_distribution(
        y,
        s,
        thresholds=t,
        groups=groups,
        n_boot=n_boot,
        seed=seed,
        specificities=SPECS,
        sensitivities=SENS,
    )
    weights = np.vstack(list(bootstrap_weights(len(y), groups=groups, n_boot=n_boot, seed=seed)))
    assert weights.shape == (n_boot, len(y))
    labelled = ~np.isnan(y)
    for b, w in enumerate(weights):
        aurocs = []
        for j in range(y.shape[1]):
            keep = labelled[:, j]
            expected = _reference(y[keep, j], s[keep, j], t[j], w[keep])
            for key in ours.keys() - {"micro_auroc", "macro_auroc", "macro_ap"}:
                assert _close(ours[key][b, j], expected.get(key, np.nan)), (key, b, j)
            aurocs.append(expected.get("auroc", np.nan))
        macro = np.nanmean(aurocs) if not np.isnan(aurocs).all() else np.nan
        assert _close(ours["macro_auroc"][b], macro)
        y_pool, s_pool = y[labelled], s[labelled]
        w_pool = np.broadcast_to(w[:, None], y.shape)[labelled]
        micro = (
            skm.roc_auc_score(y_pool, s_pool, sample_weight=w_pool)
            if w_pool[y_pool == 1].sum() > 0 and w_pool[y_pool == 0].sum() > 0
            else np.nan
        )
        assert _close(ours["micro_auroc"][b], micro)


def test_batching_does_not_change_the_resamples(monkeypatch):
    rng = np.random.default_rng(0)
    y = (rng.random((50, 2)) < 0.3).astype(float)
    s = rng.random((50, 2))
    args = dict(thresholds=0.5, groups=rng.integers(0, 20, 50), n_boot=23, seed=4)
    whole = bootstrap_distribution(y, s, **args)
    monkeypatch.setattr(bootstrap, "BATCH_ELEMENTS", 200)
    batched = bootstrap_distribution(y, s, **args)
    for key, values in whole.items():
        np.testing.assert_array_equal(values, batched[key])


def test_cluster_weights_keep_patients_whole_and_are_reproducible():
    rng = np.random.default_rng(1)
    groups = rng.choice(np.array(["p1", "p2", "p3", "p4", "p5", "p6", "p7"]), size=40)
    batches = list(bootstrap_weights(40, groups=groups, n_boot=300, seed=7))
    weights = np.vstack(batches)
    assert weights.shape == (300, 40) and weights.dtype.kind == "i"
    n_patients = np.unique(groups).size
    for w in weights:
        per_patient = {g: np.unique(w[groups == g]) for g in np.unique(groups)}
        assert all(counts.size == 1 for counts in per_patient.values())
        assert sum(int(c[0]) for c in per_patient.values()) == n_patients
    again = np.vstack(list(bootstrap_weights(40, groups=groups, n_boot=300, seed=7)))
    other = np.vstack(list(bootstrap_weights(40, groups=groups, n_boot=300, seed=8)))
    np.testing.assert_array_equal(weights, again)
    assert not np.array_equal(weights, other)
    images = np.vstack(list(bootstrap_weights(40, groups=None, n_boot=50, seed=7)))
    assert (images.sum(axis=1) == 40).all() and len(np.unique(images[0])) > 1


def _clear_signal(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.2, 0.4, 0.5]).astype(float)
    y[rng.random((n, 3)) < 0.1] = np.nan
    s = np.nan_to_num(y, nan=0.5) + rng.normal(scale=0.7, size=(n, 3))
    return y, s, rng.integers(0, n // 3, n)


def test_intervals_contain_point_estimates_and_are_reproducible():
    y, s, groups = _clear_signal(600, seed=2)
    ci = bootstrap_ci(y, s, thresholds=0.5, groups=groups, n_boot=300, seed=3)
    np.testing.assert_array_equal(
        ci["auroc"], bootstrap_ci(y, s, thresholds=0.5, groups=groups, n_boot=300, seed=3)["auroc"]
    )
    confusion = metrics.confusion_at_thresholds(y, s, 0.5)
    points = {
        "auroc": metrics.roc_auc(y, s),
        "ap": metrics.average_precision(y, s),
        "sensitivity": confusion["sensitivity"],
        "specificity": confusion["specificity"],
        "ppv": confusion["ppv"],
        "f1": confusion["f1"],
        "sens_at_spec_0.9": metrics.sensitivity_at_specificity(y, s, specificity=0.9),
        "spec_at_sens_0.8": metrics.specificity_at_sensitivity(y, s, sensitivity=0.8),
    }
    for key, point in points.items():
        assert ci[key].shape == (3, 2)
        assert (ci[key][:, 0] <= point).all() and (point <= ci[key][:, 1]).all(), key
    assert ci["macro_auroc"][0] <= points["auroc"].mean() <= ci["macro_auroc"][1]
    assert ci["micro_auroc"].shape == ci["macro_ap"].shape == (2,)
    other = bootstrap_ci(y, s, thresholds=0.5, groups=groups, n_boot=300, seed=4)
    assert not np.array_equal(ci["auroc"], other["auroc"])


def test_intervals_shrink_with_more_data():
    widths = []
    for n in (300, 3000):
        y, s, groups = _clear_signal(n, seed=5)
        ci = bootstrap_ci(y, s, thresholds=0.5, groups=groups, n_boot=200, seed=0)
        widths.append(np.diff(ci["auroc"], axis=1)[:, 0])
    assert (widths[1] < 0.6 * widths[0]).all()


def test_cluster_bootstrap_is_wider_when_a_patients_images_agree():
    rng = np.random.default_rng(6)
    y0 = (rng.random(150) < 0.3).astype(float)
    s0 = y0 + rng.normal(size=150)
    y, s, groups = np.repeat(y0, 4), np.repeat(s0, 4), np.repeat(np.arange(150), 4)
    by_patient = bootstrap_ci(y, s, thresholds=0.5, groups=groups, n_boot=300)["auroc"]
    by_image = bootstrap_ci(y, s, thresholds=0.5, n_boot=300)["auroc"]
    assert np.diff(by_patient)[0, 0] > 1.5 * np.diff(by_image)[0, 0]


def test_one_label_class_gets_nan_intervals_and_one_warning():
    rng = np.random.default_rng(3)
    y = np.c_[(rng.random(80) < 0.5), np.zeros(80)].astype(float)
    s = rng.random((80, 2))
    with pytest.warns(UserWarning, match="class 'Nodule' \\(column 1\\): auroc \\(0/100\\)") as w:
        ci = bootstrap_ci(y, s, thresholds=0.5, n_boot=100, classes=["Mass", "Nodule"])
    assert len(w) == 1
    assert np.isnan(ci["auroc"][1]).all() and np.isnan(ci["sens_at_spec_0.8"][1]).all()
    assert not np.isnan(ci["auroc"][0]).any() and not np.isnan(ci["macro_auroc"]).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"thresholds": [0.5, 0.5, 0.5]}, "one non-NaN threshold per class"),
        ({"thresholds": 0.5, "groups": [1, 2]}, "one group id per sample"),
        ({"thresholds": 0.5, "alpha": 1.5}, "alpha"),
        ({"thresholds": 0.5, "n_boot": 0}, "n_boot"),
        ({"thresholds": 0.5, "specificities": (1.2,)}, "target rates"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    y, s = np.array([[0.0, 1], [1, 0], [1, 1]]), np.zeros((3, 2))
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(y, s, **kwargs)


def _slow_delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` and covariance ``(k, k)`` from O(mn) structural components."""
    v10, v01 = [], []
    for s in scores:
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    cov = np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]
    return v10.mean(axis=1), cov


@st.composite
def two_scorings(draw):
    n = draw(st.integers(4, 40))
    y = draw(arrays(np.float64, (n,), elements=st.sampled_from([0.0, 1.0, np.nan])))
    a = draw(arrays(np.float64, (n,), elements=st.integers(0, 5))) / 5
    b = draw(arrays(np.float64, (n,), elements=st.integers(0, 5))) / 5
    return y, a, b


@FAST
@given(two_scorings())
def test_delong_matches_sklearn_and_slow_structural_components(data):
    y, a, b = data
    keep = ~np.isnan(y)
    yk, ak, bk = y[keep], a[keep], b[keep]
    m, n = int((yk == 1).sum()), int((yk == 0).sum())
    if min(m, n) < 2:
        with pytest.warns(UserWarning):
            delong_ci(y, a)
        return
    auc, low, high = delong_ci(y, a, alpha=0.1)
    aucs, cov = _slow_delong(yk, [ak, bk])
    assert abs(auc - skm.roc_auc_score(yk, ak)) <= TOL and abs(auc - aucs[0]) <= TOL
    half = norm.ppf(0.95) * np.sqrt(cov[0, 0])
    assert abs(low - max(aucs[0] - half, 0)) <= TOL and abs(high - min(aucs[0] + half, 1)) <= TOL
    test = delong_test(y, a, b)
    assert abs(test["auc_b"] - skm.roc_auc_score(yk, bk)) <= TOL
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if variance > 1e-12:
        z = (aucs[0] - aucs[1]) / np.sqrt(variance)
        assert abs(test["z"] - z) <= 1e-6 * max(1, abs(z))
        assert abs(test["p_value"] - 2 * norm.sf(abs(z))) <= 1e-6


def test_delong_test_of_a_model_against_itself_and_a_weaker_one():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(float)
    good = y + rng.normal(scale=0.8, size=400)
    same = delong_test(y, good, good)
    assert same["z"] == 0 and same["p_value"] == 1 and same["diff"] == 0
    assert same["ci_diff"] == (0.0, 0.0)
    worse = delong_test(y, good, y + rng.normal(scale=3.0, size=400))
    assert worse["diff"] > 0 and worse["p_value"] < 1e-4
    assert worse["ci_diff"][0] > 0 and worse["z"] > 3
    flipped = delong_test(y, y + rng.normal(scale=3.0, size=400), good)
    assert flipped["z"] < 0


def test_delong_masks_nan_labels_and_warns_on_one_class():
    rng = np.random.default_rng(1)
    y, s = (rng.random(60) < 0.4).astype(float), rng.random(60)
    y_nan = y.copy()
    y_nan[:10] = np.nan
    assert delong_ci(y_nan, s) == delong_ci(y[10:], s[10:])
    with pytest.warns(UserWarning, match="0 positive"):
        assert np.isnan(delong_ci(np.zeros(5), np.arange(5.0))).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = delong_test(np.ones(4), np.arange(4.0), np.arange(4.0))
    assert np.isnan(result["p_value"]) and len(caught) == 1
