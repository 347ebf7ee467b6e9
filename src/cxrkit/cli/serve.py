"""``cxrkit serve``: its arguments and the command; the server is :mod:`cxrkit.deploy.serve`.

It checks the settings and the port before loading the model, so a busy port or a bad option
fails in a second with one line, before the banner.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cxrkit.cli.devices import add_device_arguments

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_serve_parser(add: Add) -> None:
    """Register ``cxrkit serve`` through ``add(name, fn, help)`` (see ``build_parser``)."""
    s = add("serve", cmd_serve, "REST API and web page for one model (research use only)")
    s.add_argument("--checkpoint", required=True, help="checkpoint (or exported bundle)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", help="bearer token required on /v1/* (or set CXRKIT_SERVE_TOKEN)")
    s.add_argument("--max-upload-mb", type=float, default=50.0, help="upload limit (413 above)")
    s.add_argument("--max-queue", type=int, default=8, help="requests waiting beyond --workers")
    s.add_argument("--workers", type=int, default=1, help="prediction threads (default 1)")
    s.add_argument(
        "--backend",
        default="auto",
        help="as infer --backend: auto, torch, onnx, onnx-int8, openvino, openvino-int8 "
        "(heatmaps always use the PyTorch weights)",
    )
    add_device_arguments(s)
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request (408/504)")
    s.add_argument(
        "--monitor-window",
        type=int,
        default=500,
        help="recent predictions behind /v1/monitor's rates and score drift (default 500)",
    )


def cmd_serve(a: argparse.Namespace) -> int:
    from cxrkit.cli.devices import device_options, runtime_line
    from cxrkit.deploy.predictor import Predictor
    from cxrkit.deploy.serve.app import check_port, run_server
    from cxrkit.deploy.serve.engine import DISCLAIMER, Engine
    from cxrkit.deploy.serve.limits import TOKEN_ENV, ServeSettings, token_from

    settings = ServeSettings(
        host=a.host,
        port=a.port,
        token=token_from(a.token),
        max_upload_mb=a.max_upload_mb,
        max_queue=a.max_queue,
        monitor_window=a.monitor_window,
        workers=a.workers,
        timeout=a.timeout,
    )
    check_port(a.host, a.port)  # a busy port fails before the model loads and the banner prints
    predictor = Predictor.from_checkpoint(a.checkpoint, backend=a.backend, **device_options(a))
    engine = Engine(predictor, max_pixels=settings.max_pixels, display_size=settings.display_size)
    host = f"[{a.host}]" if ":" in a.host else a.host
    print(f"cxrkit serve: {len(engine.findings)} findings from {a.checkpoint}")
    print(f"{runtime_line(predictor)}, backend {predictor.backend_name}")
    print(f"open http://{host}:{a.port}/ (API docs: http://{host}:{a.port}/docs)")
    print(f"monitoring: http://{host}:{a.port}/metrics (Prometheus), /v1/monitor (drift)")
    print(
        "bearer token required on /v1/* and /metrics"
        if settings.token
        else f"no token: /v1/* and /metrics are open to anyone who reaches this address "
        f"(--token or {TOKEN_ENV})"
    )
    print(DISCLAIMER)
    run_server(engine, settings)
    return 0
