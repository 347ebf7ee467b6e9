"""The serve monitor: PSI against the card's reference, recent-window rates, Prometheus text."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cxrkit.deploy.serve.monitor import MIN_WINDOW_FOR_PSI, PSI_FLOOR, Monitor, psi, psi_band

EDGES = np.linspace(0, 1, 11)


def _reference(scores: np.ndarray, findings: list[str]) -> dict:
    fractions = {
        f: (np.histogram(scores[:, j], bins=EDGES)[0] / len(scores)).tolist()
        for j, f in enumerate(findings)
    }
    return {"split": "val", "n_images": len(scores), "bin_edges": EDGES.tolist(),
            "fractions": fractions}  # fmt: skip


def test_psi_is_the_textbook_sum_and_zero_for_equal_shares() -> None:
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.25, 0.25, 0.5])
    assert psi(p, q) == pytest.approx(float(np.sum((p - q) * np.log(p / q))))
    assert psi(q, q) == 0.0
    assert np.isfinite(psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))  # empty bins floored
    assert psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(
        2 * (1 - PSI_FLOOR) * np.log(1 / PSI_FLOOR)
    )
    assert [psi_band(v) for v in (0.05, 0.2, 0.9)] == ["stable", "moderate shift", "major shift"]


def test_drift_is_small_on_the_reference_population_and_large_on_a_shifted_one() -> None:
    rng = np.random.default_rng(0)
    findings = ["Effusion", "Nodule"]
    val = rng.beta([2, 1], [5, 8], size=(5000, 2))
    same = Monitor(findings, _reference(val, findings), gate=True, window=2000)
    shifted = Monitor(findings, _reference(val, findings), gate=True, window=2000)
    for probs in rng.beta([2, 1], [5, 8], size=(2000, 2)):
        same.record_prediction(probs, probs >= 0.5, True)
    for probs in rng.beta([6, 1], [2, 8], size=(2000, 2)):  # Effusion scores moved up
        shifted.record_prediction(probs, probs >= 0.5, True)
    a, b = same.summary()["drift"], shifted.summary()["drift"]
    assert a["psi"]["Effusion"] < 0.02 and a["psi"]["Nodule"] < 0.02
    assert b["psi"]["Effusion"] > 0.25 and b["reading"]["Effusion"] == "major shift"
    assert b["psi"]["Nodule"] < 0.02 and b["reading"]["Nodule"] == "stable"
    assert b["reference"] == {"split": "val", "n_images": 5000}


def test_window_rates_counters_and_the_prometheus_text() -> None:
    findings = ["Effusion", "Nodule"]
    depth = [3]
    m = Monitor(findings, None, gate=True, window=4, queue_depth=lambda: depth[0])
    rows = [([0.9, 0.1], True), ([0.8, 0.2], False), ([0.1, 0.7], True), ([0.2, 0.1], True),
            ([0.9, 0.9], False), ([0.9, 0.1], True)]  # fmt: skip
    for probs, ok in rows:
        p = np.array(probs)
        m.record_prediction(p, p >= 0.5, ok)
    m.record_request("/v1/predict", 200, 0.03)
    m.record_request("/v1/predict", 415, 0.002)
    s = m.summary()
    assert s["window"] == {"size": 4, "images": 4} and s["images_since_start"] == 6
    # the last four rows only
    assert s["positive_rate"] == {"Effusion": 0.5, "Nodule": 0.5}
    assert s["ood_rate"] == 0.25
    assert (
        s["drift"]["psi"] is None and "no reference score distribution" in s["drift"]["unavailable"]
    )
    families = {f.name: f for f in text_string_to_metric_families(m.prometheus().decode())}
    value = {(f.name, tuple(sorted(smp.labels.items()))): smp.value
             for f in families.values() for smp in f.samples}  # fmt: skip
    assert value[("cxrkit_requests", (("endpoint", "/v1/predict"), ("status", "200")))] == 1
    assert value[("cxrkit_requests", (("endpoint", "/v1/predict"), ("status", "415")))] == 1
    assert value[("cxrkit_predictions", ())] == 6
    assert value[("cxrkit_out_of_distribution", ())] == 2
    assert value[("cxrkit_positive_calls", (("finding", "Effusion"),))] == 4
    assert value[("cxrkit_positive_rate", (("finding", "Nodule"),))] == 0.5
    assert value[("cxrkit_ood_rate", ())] == 0.25
    assert value[("cxrkit_queue_depth", ())] == 3
    assert families["cxrkit_request_seconds"].type == "histogram"


def test_without_a_gate_or_enough_images_it_says_why() -> None:
    findings = ["Effusion"]
    ref = _reference(np.random.default_rng(1).random((100, 1)), findings)
    m = Monitor(findings, ref, gate=False, window=500)
    for _ in range(MIN_WINDOW_FOR_PSI - 1):
        m.record_prediction(np.array([0.3]), np.array([0]), None)
    s = m.summary()
    assert s["ood_rate"] is None and s["input_gate"] == "no input gate"
    n = MIN_WINDOW_FOR_PSI
    assert s["drift"]["unavailable"] == f"{n - 1} image(s) so far; PSI needs {n}"
    m.record_prediction(np.array([0.3]), np.array([0]), None)
    assert m.summary()["drift"]["psi"]["Effusion"] > 1  # all in one bin: far from uniform


def test_small_samples_of_the_reference_population_read_stable() -> None:
    """127 validation images against windows of 100 from the same distribution: the raw PSI
    often passes 0.1 by chance alone; read above its noise floor it is stable."""
    rng = np.random.default_rng(3)
    findings = ["Effusion"]
    draw = lambda n: rng.beta(2, 5, size=(n, 1))  # noqa: E731
    readings, raw = [], []
    for _ in range(100):
        m = Monitor(findings, _reference(draw(127), findings), gate=True, window=100)
        for probs in draw(100):
            m.record_prediction(probs, probs >= 0.5, True)
        drift = m.summary()["drift"]
        readings.append(drift["reading"]["Effusion"])
        raw.append(drift["psi"]["Effusion"])
        d = np.count_nonzero(_reference_fractions(m)) - 1
        assert drift["noise_floor"]["Effusion"] == pytest.approx(
            (d + 2 * np.sqrt(2 * d)) * (1 / 127 + 1 / 100)
        )
    assert np.mean(np.array(raw) > 0.1) > 0.3  # the bands alone would cry wolf
    assert readings.count("stable") >= 90


def _reference_fractions(m: Monitor) -> np.ndarray:
    return np.asarray(m.reference["fractions"]["Effusion"])
