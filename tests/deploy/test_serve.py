"""``cxrkit serve`` API (FastAPI TestClient): every status code, the limits, the token, CAMs,
and that neither file names nor DICOM patient data reach the log."""

from __future__ import annotations

import base64
import logging
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from cxrkit.cli.parser import main
from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.serve.app import check_port, create_app
from cxrkit.deploy.serve.engine import Engine
from cxrkit.deploy.serve.limits import TOKEN_ENV, ServeSettings, token_from
from cxrkit.errors import UserError
from cxrkit.io import read_xray

TOKEN = "s3cret-token-for-tests"
SECRET_NAME = "DOE_JOHN_1962-01-01_MRN12345.png"


@pytest.fixture(scope="module")
def predictor(trained: Path) -> Predictor:
    return Predictor.from_checkpoint(trained / "checkpoints" / "best.ckpt")


@pytest.fixture(scope="module")
def engine(predictor: Predictor) -> Engine:
    return Engine(predictor, max_pixels=10_000_000, display_size=512)


@pytest.fixture
def make_client(engine: Engine) -> Iterator[Callable[..., TestClient]]:
    """``make_client(engine=..., **settings)``: a started TestClient, closed after the test."""
    clients: list[TestClient] = []

    def make(engine_: Engine = engine, **settings: Any) -> TestClient:
        client = TestClient(create_app(engine_, ServeSettings(**settings)))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def phantom_png(phantom: Path) -> Path:
    return sorted((phantom / "images").glob("*.png"))[0]


def upload(client: TestClient, data: bytes, query: str = "", **kwargs: Any) -> Any:
    return client.post(f"/v1/predict{query}", files={"file": (SECRET_NAME, data)}, **kwargs)


def decode_png(text: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image


def expected_probs(predictor: Predictor, path: Path) -> np.ndarray:
    pixels = read_xray(path).pixels
    return predictor.predict_batch(torch.from_numpy(predictor.preprocess(pixels)[None]))[0]


def test_health_page_and_docs(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["capacity"] == 1 + 8
    page = client.get("/")
    assert page.status_code == 200 and "not a medical device" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/page.js").status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["file"]


def test_model_card(make_client: Callable[..., TestClient], predictor: Predictor) -> None:
    response = make_client().get("/v1/model")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    card = response.json()
    assert card["findings"] == predictor.findings
    assert card["thresholds_applied"] == dict(
        zip(predictor.findings, predictor.thresholds.tolist(), strict=True)
    )
    assert card["calibrated"] is False and "train_config" not in card
    assert "not a medical device" in card["disclaimer"]


def test_predict_phantom_png_matches_predictor(
    make_client: Callable[..., TestClient], predictor: Predictor, phantom_png: Path
) -> None:
    response = upload(make_client(), phantom_png.read_bytes())
    assert response.status_code == 200
    body = response.json()
    probs = [f["probability"] for f in body["findings"]]
    assert [f["finding"] for f in body["findings"]] == predictor.findings
    np.testing.assert_allclose(probs, expected_probs(predictor, phantom_png), atol=1e-6)
    for f in body["findings"]:
        assert f["call"] == (f["probability"] >= f["threshold"])
    assert body["positive"] == [f["finding"] for f in body["findings"] if f["call"]]
    assert body["image_info"] == {"format": "PNG", "width": 64, "height": 64, "bits_stored": 8}
    assert "image" not in body and "heatmaps" not in body


def test_predict_real_nih_png_jpeg_and_dicom(
    make_client: Callable[..., TestClient], predictor: Predictor, shared_data: Path
) -> None:
    client = make_client()
    png = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[0]
    body = upload(client, png.read_bytes()).json()
    np.testing.assert_allclose(
        [f["probability"] for f in body["findings"]], expected_probs(predictor, png), atol=1e-6
    )
    jpeg = upload(client, (shared_data / "formats" / "jpeg" / "cxr_16747_3_1.jpg").read_bytes())
    assert jpeg.status_code == 200 and jpeg.json()["image_info"]["format"] == "JPEG"
    for name in ("siim_pneumothorax_sample.dcm", "monochrome1_sample.dcm"):
        path = shared_data / "formats" / "dicom" / name
        response = upload(client, path.read_bytes(), "?image=true")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["image_info"]["format"] == "DICOM"
        # The returned image is what the model sees: the windowed, display-oriented pixels.
        pixels = read_xray(path).pixels
        shown = decode_png(body["image"])
        assert shown.ndim == 2 and shown.dtype == np.uint8 and max(shown.shape) == 512
        small = cv2.resize(pixels, shown.shape[::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(shown.astype(int) - small.astype(int)).max() <= 1


def test_token(make_client: Callable[..., TestClient], phantom_png: Path) -> None:
    client = make_client(token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong-token-123"}, {"Authorization": TOKEN}):
        for response in (
            client.get("/v1/model", headers=headers),
            upload(client, phantom_png.read_bytes(), headers=headers),
        ):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/v1/model", headers=good).status_code == 200
    assert upload(client, phantom_png.read_bytes(), headers=good).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_token_from_option_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert token_from(None) is None
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert token_from(None) == TOKEN
    assert token_from("from-the-option") == "from-the-option"
    with pytest.raises(UserError, match="at least 8"):
        ServeSettings(token="short")


def test_upload_limit_413(make_client: Callable[..., TestClient], phantom_png: Path) -> None:
    data = phantom_png.read_bytes()
    client = make_client(max_upload_mb=len(data) / 1e6 - 1e-4)
    assert upload(client, data).status_code == 413  # the field is over the limit
    client = make_client(max_upload_mb=0.001)
    declared = upload(client, b"\0" * 200_000)  # Content-Length says so: nothing read
    assert declared.status_code == 413 and "limit of 0.001 MB" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the stream is cut at the cap
        yield b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n"
        for _ in range(20):
            yield b"\0" * 10_000

    streamed = client.post(
        "/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413
    assert client.get("/health").json()["in_flight"] == 0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"patient notes, not an image\n", "unrecognised content"),
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "truncated PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x13" * 100, "JPEG"),
    ],
)
def test_unreadable_content_415(
    make_client: Callable[..., TestClient], data: bytes, reason: str
) -> None:
    response = upload(make_client(), data)
    assert response.status_code == 415
    assert reason in response.json()["detail"]


def test_content_not_extension_decides(
    make_client: Callable[..., TestClient], phantom_png: Path
) -> None:
    client = make_client()
    named = client.post("/v1/predict", files={"file": ("scan.dcm", phantom_png.read_bytes())})
    assert named.status_code == 200 and named.json()["image_info"]["format"] == "PNG"
    raw = client.post(
        "/v1/predict", content=phantom_png.read_bytes(), headers={"content-type": "image/png"}
    )
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["detail"]


def test_decompression_bomb_refused(make_client: Callable[..., TestClient]) -> None:
    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    data = bytearray(png.tobytes())
    data[16:24] = struct.pack(">II", 60_000, 60_000)  # IHDR claims 3.6 gigapixels
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    response = upload(make_client(), bytes(data))
    assert response.status_code == 415 and "decompression bomb" in response.json()["detail"]


def test_missing_field_and_bad_cam_422(
    make_client: Callable[..., TestClient], phantom_png: Path
) -> None:
    client = make_client()
    missing = client.post("/v1/predict", files={"image": ("x.png", phantom_png.read_bytes())})
    assert missing.status_code == 422 and "no field 'file'" in missing.json()["detail"]
    bad = upload(client, phantom_png.read_bytes(), "?cam=NotAFinding")
    assert bad.status_code == 422 and "unknown cam value" in bad.json()["detail"]


def test_cam_heatmaps(
    make_client: Callable[..., TestClient], predictor: Predictor, phantom_png: Path
) -> None:
    client = make_client()
    body = upload(client, phantom_png.read_bytes(), "?cam=true&image=true").json()
    probs = [f["probability"] for f in body["findings"]]
    expected = body["positive"] or [predictor.findings[int(np.argmax(probs))]]
    assert list(body["heatmaps"]) == expected
    image = decode_png(body["image"])
    assert image.shape == (64, 64)
    for text in body["heatmaps"].values():
        heat = decode_png(text)
        assert heat.shape == image.shape and heat.dtype == np.uint8
    one = predictor.findings[-1]
    single = upload(client, phantom_png.read_bytes(), f"?cam={one}").json()
    assert list(single["heatmaps"]) == [one]
    every = upload(client, phantom_png.read_bytes(), "?cam=all").json()
    assert list(every["heatmaps"]) == predictor.findings


class BlockingEngine(Engine):
    """The real engine, but each prediction first waits for :attr:`go`."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__(predictor, max_pixels=10_000_000, display_size=512)
        self.go = threading.Event()

    def predict(self, data: bytes, **kwargs: Any) -> dict[str, Any]:
        assert self.go.wait(30), "test never released the engine"
        return super().predict(data, **kwargs)


def wait_until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_full_queue_503_with_retry_after(
    make_client: Callable[..., TestClient], predictor: Predictor, phantom_png: Path
) -> None:
    blocking = BlockingEngine(predictor)
    client = make_client(blocking, workers=1, max_queue=1)
    admission = client.app.state.admission  # type: ignore[attr-defined]
    data = phantom_png.read_bytes()
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(upload(client, data).status_code))]
    threads.append(threading.Thread(target=lambda: codes.append(upload(client, data).status_code)))
    for t in threads:
        t.start()
    wait_until(lambda: admission.in_use == 2)  # one running (blocked), one queued
    refused = upload(client, data)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    blocking.go.set()
    for t in threads:
        t.join(30)
    assert codes == [200, 200]
    wait_until(lambda: admission.in_use == 0)
    assert upload(client, data).status_code == 200


def test_timeout_504_keeps_the_slot_until_the_job_ends(
    make_client: Callable[..., TestClient], predictor: Predictor, phantom_png: Path
) -> None:
    blocking = BlockingEngine(predictor)
    client = make_client(blocking, workers=1, max_queue=0, timeout=1.0)
    admission = client.app.state.admission  # type: ignore[attr-defined]
    late = upload(client, phantom_png.read_bytes())
    assert late.status_code == 504 and "--timeout" in late.json()["detail"]
    assert admission.in_use == 1  # the thread still works on it: no new upload is taken in
    assert upload(client, phantom_png.read_bytes()).status_code == 503
    blocking.go.set()
    wait_until(lambda: admission.in_use == 0)


def test_upload_never_spooled_to_disk(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("SpooledTemporaryFile", "NamedTemporaryFile", "TemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", no_disk)
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8)
    data = cv2.imencode(".png", noise)[1].tobytes()
    assert len(data) > 1_200_000  # above Starlette's 1 MB spooling threshold
    response = upload(make_client(), data)
    assert response.status_code == 200 and response.json()["image_info"]["width"] == 1200


def test_no_file_name_or_patient_data_in_logs(
    make_client: Callable[..., TestClient],
    shared_data: Path,
    phantom_png: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import pydicom

    dicom = shared_data / "formats" / "dicom" / "siim_pneumothorax_sample.dcm"
    tags = pydicom.dcmread(dicom, stop_before_pixels=True)
    patient = [str(tags.PatientName), str(tags.PatientID)]
    assert all(patient)
    client = make_client()
    with caplog.at_level(logging.DEBUG):
        assert upload(client, dicom.read_bytes()).status_code == 200
        assert upload(client, phantom_png.read_bytes()).status_code == 200
        assert upload(client, b"not an image").status_code == 415
    assert "predict 200: DICOM" in caplog.text and "predict 415" in caplog.text
    for secret in [SECRET_NAME, "DOE_JOHN", *patient]:
        assert secret not in caplog.text


def test_settings_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="--workers"):
        ServeSettings(workers=0)
    with pytest.raises(UserError, match="--max-upload-mb"):
        ServeSettings(max_upload_mb=0)
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen"):
            check_port("127.0.0.1", busy.getsockname()[1])


@pytest.fixture(scope="module")
def gated_engine(gated: Path) -> Engine:
    """An engine over the tiny checkpoint with an input gate fitted (conftest's ``gated``)."""
    return Engine(Predictor.from_checkpoint(gated), max_pixels=10_000_000, display_size=512)


def test_input_gate_in_predict_and_model(
    make_client: Callable[..., TestClient], gated_engine: Engine, prepared: Path
) -> None:
    from cxrkit.data.manifest import load_manifest

    client = make_client(gated_engine)
    card = client.get("/v1/model").json()["input_gate"]
    assert card["false_alarm_rate"] == 0.1 and card["threshold"] > 0 and "arrays" not in card
    assert "colour photograph" in card["structural_checks"]
    film = Path(load_manifest(prepared).rows("test")["path"].iloc[0])
    body = upload(client, film.read_bytes()).json()
    gate = body["input_gate"]
    assert set(gate) == {"ood_score", "in_distribution", "reasons", "threshold", "false_alarm_rate"}
    assert isinstance(gate["ood_score"], float) and "warnings" not in body
    assert gate["in_distribution"] == (gate["ood_score"] <= gate["threshold"])
    hue = np.tile(np.linspace(0, 179, 256, dtype=np.uint8), (256, 1))
    photo = cv2.cvtColor(np.dstack([hue, hue * 0 + 200, hue * 0 + 200]), cv2.COLOR_HSV2BGR)
    response = upload(client, cv2.imencode(".jpg", photo)[1].tobytes())
    assert response.status_code == 200  # still predicted, flagged
    gate = response.json()["input_gate"]
    assert gate["in_distribution"] is False and gate["ood_score"] is None  # inf: null in JSON
    assert gate["reasons"][0] == "colour photograph"


def test_a_model_without_gate_says_so(
    make_client: Callable[..., TestClient], phantom_png: Path
) -> None:
    client = make_client()
    assert client.get("/v1/model").json()["input_gate"] is None
    body = upload(client, phantom_png.read_bytes()).json()
    assert body["input_gate"] is None
    assert body["warnings"][0].startswith("no input gate")


def test_page_warns_above_the_findings(make_client: Callable[..., TestClient]) -> None:
    html = make_client().get("/").text
    assert html.index('id="gate-warning"') < html.index('id="findings"')
    script = make_client().get("/page.js").text
    assert "renderGate(result);\n    renderFindings(result);" in script


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_and_monitor_count_what_was_served(
    make_client: Callable[..., TestClient], predictor: Predictor, phantom: Path
) -> None:
    client = make_client(token=TOKEN, monitor_window=3)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/metrics").status_code == 401  # the token guards the metrics too
    files = sorted((phantom / "images").glob("*.png"))[:4]
    answers = [upload(client, f.read_bytes(), headers=auth).json() for f in files]
    assert upload(client, b"not an image", headers=auth).status_code == 415
    m = client.get("/v1/monitor", headers=auth).json()
    assert m["window"] == {"size": 3, "images": 3} and m["images_since_start"] == 4
    calls = np.array([[f["call"] for f in a["findings"]] for a in answers[-3:]])
    assert m["positive_rate"] == dict(zip(predictor.findings, calls.mean(axis=0), strict=True))
    assert m["input_gate"] == "no input gate" and m["ood_rate"] is None  # this model has none
    assert "no reference score distribution" in m["drift"]["unavailable"]
    response = client.get("/metrics", headers=auth)
    assert response.headers["content-type"].startswith("text/plain; version=")
    value = _samples(response.text)
    assert value[("cxrkit_requests_total", (("endpoint", "/v1/predict"), ("status", "200")))] == 4
    assert value[("cxrkit_requests_total", (("endpoint", "/v1/predict"), ("status", "415")))] == 1
    assert value[("cxrkit_requests_total", (("endpoint", "/metrics"), ("status", "401")))] == 1
    assert value[("cxrkit_predictions_total", ())] == 4
    every = np.array([[f["call"] for f in a["findings"]] for a in answers]).sum(axis=0)
    for finding, n in zip(predictor.findings, every, strict=True):
        assert value[("cxrkit_positive_calls_total", (("finding", finding),))] == n
    assert value[("cxrkit_request_seconds_count", (("endpoint", "/v1/predict"),))] == 5
    text = response.text
    assert SECRET_NAME not in text and "png" not in text.lower()  # nothing names an image


def test_metrics_answer_while_every_prediction_place_is_taken(
    make_client: Callable[..., TestClient], predictor: Predictor, phantom_png: Path
) -> None:
    blocking = BlockingEngine(predictor)
    client = make_client(blocking, workers=1, max_queue=0)
    admission = client.app.state.admission  # type: ignore[attr-defined]
    busy = threading.Thread(target=lambda: upload(client, phantom_png.read_bytes()))
    busy.start()
    wait_until(lambda: admission.in_use == 1)
    assert upload(client, phantom_png.read_bytes()).status_code == 503  # predictions: full
    response = client.get("/metrics")  # monitoring: not behind the prediction queue
    assert response.status_code == 200
    assert _samples(response.text)[("cxrkit_queue_depth", ())] == 1
    assert client.get("/v1/monitor").status_code == 200
    blocking.go.set()
    busy.join(30)


def test_drift_against_the_gate_reference(
    make_client: Callable[..., TestClient], gated_engine: Engine, phantom: Path
) -> None:
    from cxrkit.deploy.serve.monitor import MIN_WINDOW_FOR_PSI

    client = make_client(gated_engine)
    films = sorted((phantom / "images").glob("*.png"))
    for f in (films * 2)[:MIN_WINDOW_FOR_PSI]:
        assert upload(client, f.read_bytes()).status_code == 200
    m = client.get("/v1/monitor").json()
    assert m["input_gate"] == "fitted" and 0.0 <= m["ood_rate"] <= 1.0
    findings = set(gated_engine.findings)
    assert set(m["drift"]["psi"]) == findings and m["drift"]["unavailable"] is None
    assert all(v >= 0 for v in m["drift"]["psi"].values())
    assert set(m["drift"]["noise_floor"]) == findings and set(m["drift"]["reading"]) == findings
    assert m["drift"]["reference"]["split"] == "val"


def test_model_card_markdown_endpoint(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    response = client.get("/v1/model/card.md")
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/markdown"
    )
    assert "Research software, not a medical device" in response.text
    assert "## Known limitations" in response.text
