"""Load test of ``cxrkit serve``: N requests at concurrency C against a live server on loopback.

Starts ``cxrkit serve --checkpoint CKPT`` as a subprocess on 127.0.0.1 (a free port), waits for
``/health``, sends a few warm-up requests, then POSTs ``--requests`` uploads from
``--concurrency`` client threads (each with its own keep-alive connection), cycling through
the images of ``--images``. Counts the answers by status (a request without an answer counts
as lost), the client-side latency p50/p95/max and the server's resident memory (VmRSS of the
server process) when idle, after the warm-up and after the run, and its peak (VmHWM). While
the load runs, one more client scrapes ``/metrics`` every ``--scrape-every`` seconds: its
latency under load is reported too (the monitoring target: within 50 ms at concurrency 8).

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_serve.py --checkpoint runs/demo/run/checkpoints/best.ckpt \\
        [--images ../shared/data/nih-sample/images] [--requests 500] [--concurrency 8] [--cam]

Only loopback is ever contacted; the run is bounded by the request count and ``--deadline``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared/data/nih-sample/images"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of process ``pid`` in MB, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cxrkit.cli", "serve", "--checkpoint", str(args.checkpoint)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
    command += ["--max-queue", str(args.max_queue)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_healthy(url: str, server: subprocess.Popen[bytes], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with code {server.returncode} before answering")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not answer /health in time")


def run_load(
    url: str, images: list[bytes], n: int, concurrency: int, query: str, deadline: float
) -> tuple[Counter[str], list[float], float]:
    """(answers by status, latencies in s of the answered requests, wall time in s)."""
    counter = itertools.count()
    lock = threading.Lock()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    stop_at = time.monotonic() + deadline

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop_at:
                i = next(counter)
                if i >= n:
                    return
                start = time.perf_counter()
                try:
                    files = {"file": ("image", images[i % len(images)])}
                    status = str(http.post(f"/v1/predict{query}", files=files).status_code)
                except httpx.HTTPError as err:
                    status = f"error {type(err).__name__}"
                elapsed = time.perf_counter() - start
                with lock:
                    statuses[status] += 1
                    if not status.startswith("error"):
                        latencies.append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return statuses, latencies, time.perf_counter() - start


def scrape_while(url: str, every: float, running: threading.Event) -> list[float]:
    """``/metrics`` latencies in s, one request every ``every`` s while ``running`` is set."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        while running.is_set():
            start = time.perf_counter()
            response = http.get("/metrics")
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200 and b"cxrkit_requests_total" in response.content
            time.sleep(every)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint or bundle")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="server --workers")
    parser.add_argument("--max-queue", type=int, default=8, help="server --max-queue")
    parser.add_argument("--cam", action="store_true", help="ask for heatmaps (?cam=true)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--deadline", type=float, default=1800, help="stop sending after (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--scrape-every", type=float, default=0.2, help="/metrics period (s)")
    args = parser.parse_args()

    if not args.images.is_dir():
        raise SystemExit(f"image folder not found: {args.images}")
    images = [p.read_bytes() for p in sorted(args.images.iterdir()) if p.is_file()]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        wait_healthy(url, server)
        idle = memory_mb(server.pid)
        query = "?cam=true" if args.cam else ""
        run_load(url, images, args.warmup, 1, query, args.deadline)
        warm = memory_mb(server.pid)
        running = threading.Event()
        running.set()
        with ThreadPoolExecutor(1) as scraper:
            scrapes = scraper.submit(scrape_while, url, args.scrape_every, running)
            statuses, latencies, wall = run_load(
                url, images, args.requests, args.concurrency, query, args.deadline
            )
            running.clear()
            scrape_ms = np.array(scrapes.result()) * 1000
        time.sleep(1.0)
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    answered = sum(v for k, v in statuses.items() if not k.startswith("error"))
    lat = np.array(latencies) * 1000
    figures = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "cam": args.cam,
        "images": len(images),
        "statuses": dict(statuses),
        "answered": answered,
        "lost": args.requests - answered,
        "wall_s": round(wall, 2),
        "throughput_rps": round(answered / wall, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p95": round(float(np.percentile(lat, 95)), 1),
            "max": round(float(lat.max()), 1),
        },
        "metrics_scrapes": len(scrape_ms),
        "metrics_latency_ms": {
            "p50": round(float(np.percentile(scrape_ms, 50)), 1),
            "p95": round(float(np.percentile(scrape_ms, 95)), 1),
            "max": round(float(scrape_ms.max()), 1),
        },
        "server_rss_mb": {
            "idle": round(idle["VmRSS"], 1),
            "after_warmup": round(warm["VmRSS"], 1),
            "after_run": round(after["VmRSS"], 1),
            "growth_during_run": round(after["VmRSS"] - warm["VmRSS"], 1),
            "peak": round(after["VmHWM"], 1),
        },
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
