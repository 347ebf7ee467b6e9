"""``--device`` / ``--precision``: the one resolver, the backends it allows, and what each
command prints and records. CUDA paths run only where a CUDA GPU is visible; never faked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.cli.parser import main
from cxrkit.deploy.backends import resolve_backend
from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.records import check_resume, infer_record, save_record
from cxrkit.errors import UserError
from cxrkit.models.backbones import cpu_has_native_bf16, create_model
from cxrkit.models.checkpoint import LoadedModel
from cxrkit.models.devices import resolve_device, resolve_precision, resolve_runtime

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(CUDA, reason="checks the errors of a machine without CUDA")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ckpt(trained: Path) -> Path:
    return trained / "checkpoints" / "best.ckpt"


def test_auto_picks_cuda_then_mps_then_cpu() -> None:
    device = resolve_device("auto")
    if CUDA:
        assert device == torch.device("cuda", torch.cuda.current_device())
    elif torch.backends.mps.is_available():
        assert device == torch.device("mps")
    else:
        assert device == CPU
    assert resolve_device("CPU") == resolve_device(torch.device("cpu")) == CPU


def test_precision_auto_on_the_cpu_follows_native_bf16() -> None:
    native = cpu_has_native_bf16()
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    reason = "auto: native bf16" if native else "auto: no native bf16 on this CPU"
    line = resolve_runtime("cpu", "auto").line()
    assert line == f"device cpu, precision {'bf16' if native else 'fp32'} ({reason})"
    assert resolve_runtime("cpu", "fp32").line() == "device cpu, precision fp32 (asked)"


@pytest.mark.parametrize(
    ("device", "precision", "message"),
    [
        ("tpu", "auto", "unknown --device 'tpu'; did you mean 'cpu'?"),
        ("cuda:zero", "auto", "unknown --device 'cuda:zero'"),
        ("cpu", "fp16", "--precision fp16 on the CPU: float16 autocast is slow"),
        ("cpu", "fp8", "unknown --precision 'fp8'"),
        pytest.param("cuda", "auto", "--device cuda: this machine has no CUDA GPU", marks=no_cuda),
        pytest.param("cuda:7", "auto", "--device cuda:7: this machine has no CUDA", marks=no_cuda),
    ],
)
def test_what_cannot_run_here_is_one_line(device: str, precision: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        resolve_runtime(device, precision)
    text = str(err.value)
    assert message in text and "\n" not in text
    if "no CUDA GPU" in text:
        assert torch.__version__ in text and "use --device cpu or auto" in text


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
def test_mps_where_there_is_none_is_refused() -> None:
    with pytest.raises(UserError, match="--device mps: Apple's Metal .* use --device cpu or auto"):
        resolve_device("mps")


def test_onnx_backends_run_on_the_cpu_only(tmp_path: Path) -> None:
    """The rule itself, on device objects (no GPU is used: resolve_backend only reads the type)."""
    loaded = LoadedModel(
        create_model("resnet10t", 2),
        {"findings": ["a", "b"], "files": {"model.onnx": {}}},
        tmp_path,
    )
    gpu = torch.device("cuda", 0)
    assert resolve_backend("auto", loaded, CPU, "fp32") == "onnx"
    assert resolve_backend("auto", loaded, CPU, "bf16") == "torch"
    assert resolve_backend("auto", loaded, gpu, "fp32") == "torch"
    assert resolve_backend("torch", loaded, gpu, "bf16") == "torch"
    for name in ("onnx", "onnx-int8", "openvino"):
        with pytest.raises(UserError, match=f"--backend {name} runs on the CPU only"):
            resolve_backend(name, loaded, gpu, "fp32")


def test_a_resume_may_change_device_but_not_precision(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    fp32 = Predictor.from_checkpoint(ckpt, precision="fp32")
    record = infer_record(fp32, None, ())
    assert (record["device"], record["precision"]) == ("cpu", "fp32")
    save_record(out, {**record, "device": "cuda:0"})  # as if the first run had a GPU
    check_resume(out, record)  # another device: fine
    bf16 = infer_record(Predictor.from_checkpoint(ckpt, precision="bf16"), None, ())
    with pytest.raises(UserError, match="precision: 'fp32' then, 'bf16' now"):
        check_resume(out, bf16)


def test_infer_and_eval_print_and_record_device_and_precision(
    ckpt: Path, prepared: Path, phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = next((phantom / "images").glob("*.png"))
    out = tmp_path / "p.csv"
    argv = ["infer", "--checkpoint", str(ckpt), "--source", str(image), "--out", str(out)]
    argv += ["--backend", "torch"]  # auto at fp32 exports an ONNX copy: test_onnx_cache.py
    assert main([*argv, "--workers", "0", "--device", "cpu", "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "device cpu, precision fp32 (asked)" in printed
    record = json.loads(out.with_name("p.csv.json").read_text())
    assert (record["device"], record["precision"], record["backend"]) == ("cpu", "fp32", "torch")
    assert (
        main([*argv, "--workers", "0", "--device", "auto", "--precision", "fp32", "--resume"]) == 0
    )

    ev = tmp_path / "ev"
    argv = ["eval", "--checkpoint", str(ckpt), "--data", str(prepared), "--out", str(ev)]
    argv += ["--bootstrap", "0", "--no-report", "--no-write-card", "--calibration", "none"]
    assert main(argv) == 0
    expected = resolve_runtime("auto", "auto")
    assert expected.line() in capsys.readouterr().out.splitlines()
    runtime = json.loads((ev / "metrics.json").read_text())["runtime"]
    assert runtime == {
        "device": str(expected.device),
        "precision": expected.precision,
        "backend": "torch",
        "processes": 1,
    }


def test_serve_reports_its_runtime(ckpt: Path) -> None:
    from cxrkit.deploy.serve.engine import Engine

    predictor = Predictor.from_checkpoint(ckpt, precision="fp32")
    card = Engine(predictor, max_pixels=10**7, display_size=256).model_card()
    assert card["runtime"] == {"device": "cpu", "precision": "fp32", "backend": "torch"}


@needs_cuda
def test_cuda_matches_the_cpu(ckpt: Path, prepared: Path) -> None:
    from cxrkit.data.manifest import load_manifest

    manifest = load_manifest(prepared)
    rows = manifest.rows("test").iloc[:16]
    cpu = Predictor.from_checkpoint(ckpt, precision="fp32").predict_manifest(manifest, rows)
    gpu = resolve_device("cuda")
    assert gpu.index is not None
    for precision, tol in (("fp32", 1e-4), ("auto", 0.02)):
        predictor = Predictor.from_checkpoint(ckpt, device="cuda", precision=precision)
        assert predictor.device == gpu and next(predictor.model.parameters()).is_cuda
        assert predictor.precision in (("fp32",) if precision == "fp32" else ("bf16", "fp16"))
        assert np.abs(predictor.predict_manifest(manifest, rows) - cpu).max() < tol
    with pytest.raises(UserError, match="this machine has"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@needs_cuda
def test_infer_and_cam_on_cuda(
    ckpt: Path, phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = next((phantom / "images").glob("*.png"))
    out = tmp_path / "p.csv"
    argv = ["infer", "--checkpoint", str(ckpt), "--source", str(image), "--out", str(out)]
    assert main([*argv, "--workers", "0", "--device", "cuda"]) == 0
    record = json.loads(out.with_name("p.csv.json").read_text())
    assert record["device"].startswith("cuda:") and record["precision"] in ("bf16", "fp16")
    cam = ["cam", "--checkpoint", str(ckpt), "--image", str(image), "--out", str(tmp_path / "c")]
    assert main([*cam, "--device", "cuda"]) == 0
    assert "device cuda:" in capsys.readouterr().out
