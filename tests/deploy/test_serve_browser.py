"""``cxrkit serve`` on a live uvicorn server (a thread, a free loopback port): the web page in
headless Chromium through Playwright, and a slow upload cut off by the request timeout.

The browser test needs Debian's ``/usr/bin/chromium`` and the ``playwright`` package (dev
extras; its own browser download is never used) and skips with the reason when either is
missing. Its screenshot is ``serve_page.png`` in the test's tmp folder, copied to
``$CXRKIT_TEST_ARTIFACTS`` when that variable is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import pytest
import uvicorn
from conftest import SHARED_DATA

from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.serve.app import create_app
from cxrkit.deploy.serve.engine import Engine
from cxrkit.deploy.serve.limits import ServeSettings

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def engine(trained: Path) -> Engine:
    predictor = Predictor.from_checkpoint(trained / "checkpoints" / "best.ckpt")
    return Engine(predictor, max_pixels=50_000_000, display_size=1024)


@contextmanager
def live_server(engine: Engine, **settings: Any) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a uvicorn server running ``engine`` in a thread."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(engine, ServeSettings(port=port, **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def read_response(conn: socket.socket) -> str:
    """One HTTP response (headers and a ``Content-Length`` body) read from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")[1:]
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_slow_upload_gets_408(engine: Engine) -> None:
    with live_server(engine, timeout=1.0) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )  # ... and the other 4,995 bytes never come
            reply = read_response(conn)
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "did not arrive within 1 s" in reply


def test_the_page_states_the_gate_s_promise(gated: Path) -> None:
    """The card panel's "Input gate" line, from `/v1/model`: the threshold and the asked rate
    with its confidence (a pooled threshold), not a bare validation rate."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    engine = Engine(Predictor.from_checkpoint(gated), max_pixels=50_000_000, display_size=1024)
    gate = engine.predictor.card["gate"]
    with live_server(engine) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#card dl")
            line = page.locator("#card dt:text-is('Input gate') + dd").inner_text()
        finally:
            browser.close()
    assert line == (
        f"flags images unlike the training data (threshold {gate['threshold']:.1f}, at most "
        f"{100 * gate['false_alarm_rate']:.0f}% false alarms, 90% confidence)"
    )


def test_page_in_chromium(engine: Engine, phantom: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    nih = SHARED_DATA / "nih-sample" / "images" / "00000075_000.png"
    image = nih if nih.is_file() else sorted((phantom / "images").glob("*.png"))[0]
    dicom = SHARED_DATA / "formats" / "dicom" / "monochrome1_sample.dcm"
    shot = tmp_path / "serve_page.png"
    findings = engine.findings
    with live_server(engine) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url + "/")
            page.wait_for_selector("#card dl")
            assert "not a medical device" in page.inner_text("#disclaimer")
            assert page.locator("#card-findings tbody tr").count() == len(findings)

            page.set_input_files("#file", str(image))
            page.wait_for_selector("#findings:not([hidden]) tbody tr", timeout=30_000)
            rows = page.locator("#findings tbody tr")
            assert rows.count() == len(findings)
            assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.finding)")) == sorted(
                findings
            )
            assert page.locator("#findings .bar .thr").count() == len(findings)
            assert page.locator("#xray").evaluate("img => img.naturalWidth") > 0

            # A finding without a heatmap yet: the page asks the server for it.
            last = rows.last.get_attribute("data-finding")
            rows.last.click()
            overlay = page.locator("#overlay")
            overlay.wait_for(state="visible", timeout=30_000)
            assert overlay.get_attribute("data-finding") == last
            assert last in page.inner_text("#overlay-label")
            # The most probable finding (its heatmap came with the result when it is positive).
            first = rows.first.get_attribute("data-finding")
            rows.first.click()
            page.wait_for_function(
                "name => document.getElementById('overlay').dataset.finding === name",
                arg=first,
                timeout=30_000,
            )
            assert overlay.evaluate("c => c.width") == page.locator("#xray").evaluate(
                "img => img.naturalWidth"
            )
            slider = page.locator("#opacity")
            slider.evaluate("s => { s.value = 60; s.dispatchEvent(new Event('input')); }")
            assert overlay.evaluate("c => c.style.opacity") == "0.6"
            assert page.inner_text("#opacity-value") == "60%"
            page.screenshot(path=str(shot), full_page=True)

            if dicom.is_file():
                page.set_input_files("#file", str(dicom))
                page.wait_for_function(
                    "() => document.getElementById('image-info').textContent.startsWith('DICOM')",
                    timeout=30_000,
                )
            page.set_input_files(
                "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}]
            )
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "415" in page.inner_text("#status")
            assert errors == []
        finally:
            browser.close()
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[1] == 1400 and picture.std() > 20
    artifacts = os.environ.get("CXRKIT_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "serve_page.png")
