"""The server's limits: its settings and the admission counter that bounds work in flight.

A request to ``/v1/predict`` takes a slot from :class:`Admission` **before** its body is
read, and gives it back when its job has finished in the worker pool, even when the request
itself already returned (a timed-out request's job keeps its slot until the thread is done:
a thread cannot be killed, and its memory is still in use). With ``workers`` threads and
``max_queue`` waiting places there are never more than ``workers + max_queue`` uploads in
memory; one more request gets 503 with ``Retry-After`` at once.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

from cxrkit.errors import UserError
from cxrkit.io.xray import DEFAULT_MAX_PIXELS

TOKEN_ENV = "CXRKIT_SERVE_TOKEN"


@dataclass(frozen=True)
class ServeSettings:
    """How ``cxrkit serve`` runs. ``token`` None: /v1/* is open (loopback use)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_upload_mb: float = 50.0
    max_queue: int = 8
    workers: int = 1
    timeout: float = 60.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    display_size: int = 1024
    monitor_window: int = 500  # recent predictions behind /v1/monitor's rates and PSI

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise UserError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_upload_mb <= 0:
            raise UserError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if self.max_queue < 0:
            raise UserError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.monitor_window < 1:
            raise UserError(f"--monitor-window must be >= 1, got {self.monitor_window}")
        if self.timeout <= 0:
            raise UserError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.token is not None and len(self.token) < 8:
            raise UserError("the bearer token must be at least 8 characters")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)


def token_from(option: str | None) -> str | None:
    """The bearer token: ``--token``, else the ``CXRKIT_SERVE_TOKEN`` variable, else None."""
    value = option if option is not None else os.environ.get(TOKEN_ENV)
    return value or None


class Slot:
    """One admitted request; :meth:`release` may be called any number of times, from any
    thread, and gives the slot back once."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False
        self._lock = threading.Lock()

    def release(self, *_: object) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._admission._leave()


class Admission:
    """At most ``workers + max_queue`` requests admitted at once (thread-safe)."""

    def __init__(self, workers: int, max_queue: int) -> None:
        self.workers = workers
        self.capacity = workers + max_queue
        self._in_use = 0
        self._lock = threading.Lock()
        self._mean_seconds = 1.0  # running mean of a job's duration, for Retry-After

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def try_enter(self) -> Slot | None:
        """A :class:`Slot`, or None when every place is taken (answer 503)."""
        with self._lock:
            if self._in_use >= self.capacity:
                return None
            self._in_use += 1
        return Slot(self)

    def _leave(self) -> None:
        with self._lock:
            self._in_use -= 1

    def record(self, seconds: float) -> None:
        """Fold one finished job's duration into the running mean."""
        with self._lock:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds after which a refused client should try again: the time for the queue
        ahead of it to drain at the mean job duration, between 1 and 60."""
        with self._lock:
            waiting = self._in_use / self.workers
            return max(1, min(60, math.ceil(waiting * self._mean_seconds)))


class Stopwatch:
    """Seconds since creation, and what is left of a budget."""

    def __init__(self, budget: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return max(0.0, self.budget - self.elapsed())
