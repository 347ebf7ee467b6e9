"""Monitoring a served model: Prometheus metrics and the drift of its score distributions.

:class:`Monitor` holds what ``/metrics`` and ``/v1/monitor`` report, in a registry of its own
(``prometheus-client``):

* ``cxrkit_requests_total{endpoint, status}``: answered requests by HTTP status;
* ``cxrkit_request_seconds{endpoint}``: latency histogram;
* ``cxrkit_queue_depth``: requests admitted and not finished (in work or waiting);
* ``cxrkit_predictions_total``, ``cxrkit_out_of_distribution_total``: images predicted and
  those the input gate flagged; ``cxrkit_ood_rate``: the flagged share of the recent window;
* ``cxrkit_positive_calls_total{finding}`` and ``cxrkit_positive_rate{finding}`` (recent
  window): how often each finding is called positive;
* ``cxrkit_psi{finding}``: the population stability index of the finding's scores over the
  last ``window`` predictions against the validation reference stored in the model card
  (``card["reference"]``: ten bins of [0, 1] and each finding's fraction of validation images
  per bin).

PSI = sum over bins of ``(p - q) * ln(p / q)``, ``p`` the recent share and ``q`` the
reference share of a bin, both floored at :data:`PSI_FLOOR` so an empty bin stays finite. The
common reading: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one
(:data:`PSI_BANDS`). Those bands assume large samples: two samples of one distribution, of
``n`` and ``m`` images over ``k`` occupied bins, differ by about ``(k - 1)(1/n + 1/m)`` on
average and rarely by more than :func:`psi_noise` (0.40 for 127 validation images against 100
recent ones over 10 bins), so the reading is of the PSI *above* that noise floor, and both
are reported.

Nothing that identifies a patient or an image is kept: only the last
``window`` probability vectors (``(window, C)`` floats), counters and histograms.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PSI_FLOOR = 1e-4
PSI_BANDS = ((0.1, "stable"), (0.25, "moderate shift"), (float("inf"), "major shift"))
MIN_WINDOW_FOR_PSI = 100  # fewer recent images than this: PSI is not reported (too noisy)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def psi(recent: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of two ``(B,)`` bin shares (each summing to 1)."""
    p = np.maximum(np.asarray(recent, np.float64), PSI_FLOOR)
    q = np.maximum(np.asarray(reference, np.float64), PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def psi_noise(reference: np.ndarray, n_reference: int, n_recent: int) -> float:
    """The PSI two samples of one distribution rarely exceed (about 5% of the time): with
    ``d = k - 1`` for the ``k`` bins the ``(B,)`` reference shares occupy, PSI is about
    ``chi2(d) * (1/n + 1/m)``, and this is its mean plus two standard deviations,
    ``(d + 2 sqrt(2 d)) (1/n + 1/m)``."""
    d = max(int(np.count_nonzero(np.asarray(reference) > 0)) - 1, 0)
    return (d + 2.0 * math.sqrt(2.0 * d)) * (1.0 / max(n_reference, 1) + 1.0 / max(n_recent, 1))


def psi_band(value: float | None) -> str | None:
    """The reading of a PSI value (:data:`PSI_BANDS`); None for None."""
    if value is None:
        return None
    return next(name for bound, name in PSI_BANDS if value < bound)


class Monitor:
    """Counters, a latency histogram and a window of recent scores; thread-safe.

    ``reference``: the card's ``reference`` (``bin_edges``, per-finding ``fractions``) or None
    (a model without one: drift is then reported as unavailable, with the reason).
    ``gate``: whether the model has an input gate (without one there is no OOD rate).
    ``queue_depth``: called at each scrape for the current number of admitted requests."""

    def __init__(
        self,
        findings: list[str],
        reference: dict[str, Any] | None,
        *,
        gate: bool,
        window: int = 500,
        queue_depth: Callable[[], int] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.findings = list(findings)
        self.reference = reference
        self.gate = gate
        self.window = window
        self._scores = np.zeros((window, len(findings)), np.float32)
        self._calls = np.zeros((window, len(findings)), bool)
        self._ood = np.zeros(window, np.int8)  # 1 flagged, 0 in distribution, -1 no gate
        self._n = 0  # predictions recorded so far (the window holds the last min(n, window))
        self._lock = threading.Lock()
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "cxrkit_requests", "answered requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "cxrkit_request_seconds",
            "seconds from request to answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        depth = Gauge("cxrkit_queue_depth", "requests admitted and not finished", registry=r)
        if queue_depth is not None:
            depth.set_function(queue_depth)
        self.predictions = Counter("cxrkit_predictions", "images predicted", registry=r)
        self.flagged = Counter(
            "cxrkit_out_of_distribution", "images the input gate flagged", registry=r
        )
        self.positives = Counter("cxrkit_positive_calls", "positive calls", ["finding"], registry=r)
        self.ood_rate = Gauge("cxrkit_ood_rate", "flagged share of the recent window", registry=r)
        self.positive_rate = Gauge(
            "cxrkit_positive_rate", "positive share of the recent window", ["finding"], registry=r
        )
        self.psi = Gauge(
            "cxrkit_psi", "population stability index vs the card's reference", ["finding"],
            registry=r,
        )  # fmt: skip
        for f in self.findings:  # every series exists from the start, at 0
            self.positives.labels(f)

    def record_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One answered request (any status)."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def record_prediction(
        self, probs: np.ndarray, calls: np.ndarray, in_distribution: bool | None
    ) -> None:
        """One predicted image: ``(C,)`` probabilities and 0/1 calls; the gate's verdict
        (None: the model has no input gate)."""
        with self._lock:
            i = self._n % self.window
            self._scores[i] = probs
            self._calls[i] = calls.astype(bool)
            self._ood[i] = -1 if in_distribution is None else int(not in_distribution)
            self._n += 1
        self.predictions.inc()
        if in_distribution is False:
            self.flagged.inc()
        for f, c in zip(self.findings, calls, strict=True):
            if c:
                self.positives.labels(f).inc()

    def summary(self) -> dict[str, Any]:
        """What ``/v1/monitor`` returns: the recent window's positive rates, OOD rate and each
        finding's PSI with its reading, and the totals since start."""
        with self._lock:
            n = min(self._n, self.window)
            scores, calls = self._scores[:n].copy(), self._calls[:n].copy()
            ood = self._ood[:n].copy()
            total = self._n
        gated = ood[ood >= 0]
        drift, noise, reason = self._drift(scores)
        return {
            "window": {"size": self.window, "images": n},
            "images_since_start": total,
            "positive_rate": {
                f: (float(calls[:, j].mean()) if n else None) for j, f in enumerate(self.findings)
            },
            "ood_rate": float(gated.mean()) if gated.size else None,
            "input_gate": "fitted" if self.gate else "no input gate",
            "drift": {
                "metric": "population stability index (PSI) vs the card's validation scores",
                "bands": {name: bound for bound, name in PSI_BANDS if bound != float("inf")},
                "psi": drift,
                "noise_floor": noise,
                "reading": {f: psi_band(v - noise[f]) for f, v in drift.items()}
                if drift and noise
                else None,
                "unavailable": reason,
                "reference": None
                if self.reference is None
                else {k: self.reference.get(k) for k in ("split", "n_images")},
            },
        }

    def _drift(
        self, scores: np.ndarray
    ) -> tuple[dict[str, float] | None, dict[str, float] | None, str | None]:
        """Per-finding PSI of ``(n, C)`` recent scores and its no-drift noise floor
        (:func:`psi_noise`), or None and why not."""
        if self.reference is None:
            return None, None, "the model card has no reference score distribution (fit the "
            "input gate with `cxrkit gate`, which stores one)"
        if len(scores) < MIN_WINDOW_FOR_PSI:
            return None, None, f"{len(scores)} image(s) so far; PSI needs {MIN_WINDOW_FOR_PSI}"
        edges = np.asarray(self.reference["bin_edges"], np.float64)
        n_ref = int(self.reference.get("n_images") or 0)
        out, noise = {}, {}
        for j, f in enumerate(self.findings):
            ref = self.reference["fractions"].get(f)
            if ref is None:
                continue
            counts, _ = np.histogram(np.clip(scores[:, j], edges[0], edges[-1]), bins=edges)
            out[f] = psi(counts / counts.sum(), np.asarray(ref))
            noise[f] = psi_noise(np.asarray(ref), n_ref, len(scores))
        return out, noise, None

    def prometheus(self) -> bytes:
        """The text exposition format of every metric (``/metrics``); the window gauges are
        brought up to date first."""
        s = self.summary()
        if s["ood_rate"] is not None:
            self.ood_rate.set(s["ood_rate"])
        for f, rate in s["positive_rate"].items():
            if rate is not None:
                self.positive_rate.labels(f).set(rate)
        for f, value in (s["drift"]["psi"] or {}).items():
            self.psi.labels(f).set(value)
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: every answered HTTP request into ``monitor`` (status and seconds),
    labelled by path for the known ``endpoints`` and ``other`` for the rest (so a scanner's
    random paths cannot grow the label set)."""

    def __init__(self, app: ASGIApp, monitor: Monitor, endpoints: tuple[str, ...]) -> None:
        self.app, self.monitor, self.endpoints = app, monitor, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in self.endpoints else "other"
            self.monitor.record_request(path, status[0], time.perf_counter() - started)
