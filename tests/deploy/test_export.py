"""`export`: bundle files and card, pickle-free loading, ONNX parity, the ONNX backend."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.bench import inference as bench_module
from cxrkit.bench.inference import bench_infer
from cxrkit.cli.parser import main
from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.backends import OnnxBackend
from cxrkit.deploy.export import export_bundle
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.models.checkpoint import file_sha256, load_model


@pytest.fixture(scope="module")
def ckpt(trained: Path) -> Path:
    return trained / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def bundle(ckpt: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full export (ONNX, static int8, AUROC change on val) shared by the tests below."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    return export_bundle(ckpt, out, quantize="static", data=prepared)


def _strict_json(text: str) -> dict:
    def reject(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def test_bundle_files_and_card(bundle: Path, ckpt: Path) -> None:
    names = {p.name for p in bundle.iterdir()}
    assert names == {
        "model_card.json",
        "MODEL_CARD.md",  # for a reviewer (tests/deploy/test_model_card.py)
        "model.safetensors",
        "model.onnx",
        "model.int8.onnx",
        ".cxrkit-output",  # the marker that lets --overwrite replace it
    }
    card = _strict_json((bundle / "model_card.json").read_text())
    assert card["format"] == "cxrkit-bundle/1"
    keys = "findings backbone input_size normalization thresholds calibration val_metrics"
    assert set(f"{keys} training_data cxrkit_version onnx files".split()) <= set(card)
    assert {"letterbox_size", "clahe", "mean", "std"} <= set(card["normalization"])
    for name, entry in card["files"].items():
        assert entry["sha256"] == file_sha256(bundle / name)
    assert card["onnx"]["verified"]["max_abs_logit_diff"] <= 1e-4
    assert (bundle / "model.safetensors").read_bytes()[8:9] == b"{"  # safetensors header
    assert card["findings"] == load_model(ckpt).findings


def test_bundle_loads_like_the_checkpoint(bundle: Path, ckpt: Path) -> None:
    a, b = load_model(ckpt), load_model(bundle)
    assert b.source == bundle and not b.model.training
    x = torch.randn(4, 1, a.card["input_size"], a.card["input_size"])
    with torch.inference_mode():
        torch.testing.assert_close(a.model(x), b.model(x), rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 5])
def test_onnx_logits_match_pytorch_for_any_batch(bundle: Path, n: int) -> None:
    loaded = load_model(bundle)
    size = loaded.card["input_size"]
    x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(n))
    with torch.inference_mode():
        expected = loaded.model(x).numpy()
    backend = OnnxBackend(bundle / "model.onnx")
    got = backend.run(x.numpy())
    assert got.shape == (n, len(loaded.findings))
    # its threads sleep between operators, leaving idle cores to the decoding threads
    options = backend.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_onnx_backend_predicts_like_torch(bundle: Path, prepared: Path) -> None:
    manifest = load_manifest(prepared)
    rows = manifest.rows("test").iloc[:6]
    torch_probs = Predictor.from_checkpoint(bundle, precision="fp32").predict_manifest(
        manifest, rows
    )
    onnx_probs = Predictor.from_checkpoint(bundle, backend="onnx").predict_manifest(manifest, rows)
    np.testing.assert_allclose(onnx_probs, torch_probs, rtol=0, atol=1e-4)
    assert np.ptp(onnx_probs, axis=0).max() > 0


def test_quantized_export_reports_the_auroc_change(
    bundle: Path, ckpt: Path, prepared: Path, tmp_path: Path
) -> None:
    import onnx

    q = json.loads((bundle / "model_card.json").read_text())["quantization"]
    assert q["file"] == "model.int8.onnx" and q["bytes"]["int8"] < q["bytes"]["fp32"] / 3
    manifest = load_manifest(prepared)
    assert q["method"] == "static"
    assert q["calibration_images"] == min(200, len(manifest.rows("train")))
    ops = {n.op_type for n in onnx.load(str(bundle / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ: fused at load
    val = q["validation"]
    assert val["split"] == "val" and val["n_images"] == len(manifest.rows("val"))
    assert val["macro_auroc_change"] == pytest.approx(
        val["macro_auroc_int8"] - val["macro_auroc_fp32"]
    )
    rows = manifest.rows("val")
    fp32 = Predictor.from_checkpoint(bundle, backend="onnx").predict_manifest(
        manifest, rows, calibrated=False
    )
    int8 = Predictor.from_checkpoint(bundle, backend="onnx-int8").predict_manifest(
        manifest, rows, calibrated=False
    )
    diff = np.abs(int8 - fp32)
    assert val["max_abs_prob_diff"] == pytest.approx(diff.max())
    assert 0 < diff.mean() < 0.05  # quantised, yet close to fp32
    dynamic = export_bundle(ckpt, tmp_path / "dynamic", quantize="dynamic")
    card = json.loads((dynamic / "model_card.json").read_text())
    assert card["quantization"]["method"] == "dynamic" and "validation" not in card["quantization"]
    ops = {n.op_type for n in onnx.load(str(dynamic / "model.int8.onnx")).graph.node}
    assert "ConvInteger" in ops
    with pytest.raises(UserError, match="calibrates activation ranges.*--data PREP"):
        export_bundle(ckpt, tmp_path / "s", quantize="static")
    with pytest.raises(UserError, match="did you mean 'static'"):
        export_bundle(ckpt, tmp_path / "s", quantize="statc", data=prepared)


#: OpenVINO runs in a child process: loaded into the pytest process, it was followed by a
#: segfault in a later, unrelated test (training or a notebook kernel start; not reproduced
#: outside pytest: `infer --backend openvino-int8 --workers 2` and Grad-CAM after OpenVINO run)
OPENVINO_RUN = """
import sys
import numpy as np
from cxrkit.deploy.predictor import Predictor
from cxrkit.data.manifest import load_manifest
bundle, prepared, out = sys.argv[1:]
manifest = load_manifest(prepared)
rows = manifest.rows("val")
probs = [
    Predictor.from_checkpoint(bundle, backend=b).predict_manifest(manifest, rows, calibrated=False)
    for b in ("onnx", "openvino", "onnx-int8", "openvino-int8")
]
np.save(out, np.stack(probs))
"""


def test_openvino_backends_match_onnxruntime(
    bundle: Path, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    out = tmp_path / "probs.npy"
    run = [sys.executable, "-c", OPENVINO_RUN, str(bundle), str(prepared), str(out)]
    subprocess.run(run, check=True, capture_output=True, timeout=600)
    onnx, openvino, onnx_int8, openvino_int8 = np.load(out)
    np.testing.assert_allclose(openvino, onnx, rtol=0, atol=1e-4)
    # the same QDQ file, OpenVINO's own int8 kernels
    assert np.abs(openvino_int8 - onnx_int8).mean() < 0.02
    assert np.ptp(openvino_int8, axis=0).max() > 0
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'cxrkit\[openvino\]'"):
        Predictor.from_checkpoint(bundle, backend="openvino-int8")


def test_auto_backend_runs_a_bundles_onnx_on_cpu(bundle: Path, ckpt: Path, tmp_path: Path) -> None:
    assert Predictor.from_checkpoint(bundle, precision="fp32").backend_name == "onnx"
    assert Predictor.from_checkpoint(bundle, precision="bf16").backend_name == "torch"
    assert Predictor.from_checkpoint(ckpt, precision="fp32").backend_name == "torch"
    plain = tmp_path / "plain"
    export_bundle(ckpt, plain, onnx=False)
    assert Predictor.from_checkpoint(plain, precision="fp32").backend_name == "torch"
    assert isinstance(Predictor.from_checkpoint(bundle, precision="fp32").backend, OnnxBackend)


def test_bad_bundles_are_clear_errors(bundle: Path, ckpt: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(UserError, match="sha256 does not match"):
        load_model(tampered)
    no_card = tmp_path / "no_card"
    no_card.mkdir()
    (no_card / "model.safetensors").write_bytes((bundle / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="not a cxrkit bundle"):
        load_model(no_card)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(UserError, match="is a checkpoint"):
        Predictor.from_checkpoint(ckpt, backend="onnx")
    with pytest.raises(UserError, match="unknown backend"):
        Predictor.from_checkpoint(bundle, backend="tensorrt")


def test_export_options_and_cli(bundle: Path, ckpt: Path, prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-onnx"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "model_card.json",
        "MODEL_CARD.md",
        "model.safetensors",
        ".cxrkit-output",
    }
    with pytest.raises(UserError, match="has no model.onnx"):
        Predictor.from_checkpoint(out, backend="onnx")
    with pytest.raises(UserError, match="already holds a cxrkit bundle; .* --overwrite"):
        export_bundle(ckpt, out, onnx=False)
    export_bundle(ckpt, out, onnx=False, overwrite=True)
    with pytest.raises(UserError, match="holds a cxrkit run folder"):  # not a bundle: kept
        export_bundle(ckpt, ckpt.parent.parent, onnx=False, overwrite=True)
    assert ckpt.is_file()
    with pytest.raises(UserError, match="drop --no-onnx"):
        export_bundle(ckpt, tmp_path / "q", onnx=False, quantize="dynamic")
    image = load_manifest(prepared).rows("test")["path"].iloc[0]
    csv = tmp_path / "pred.csv"
    argv = f"infer --checkpoint {bundle} --source {image} --out {csv} --backend onnx --workers 0"
    assert main(argv.split()) == 0 and csv.is_file()


def test_bench_infer_times_each_backend_and_the_one_infer_uses(
    bundle: Path,
    ckpt: Path,
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    for p in load_manifest(prepared).rows("test")["path"].iloc[:5]:
        shutil.copy(p, images)
    # OpenVINO stays out of the pytest process (see OPENVINO_RUN)
    monkeypatch.setattr(bench_module, "backend_available", lambda n: not n.startswith("openvino"))
    result = bench_infer(
        images,
        checkpoint=bundle,
        batch_size=2,
        precision="fp32",
        backends=("auto", "onnx-int8"),
        repeat=1,
    )
    assert set(result.model) == {"torch-fp32", "torch-bf16", "onnx", "onnx-int8"}
    assert set(result.end_to_end) == {"onnx", "onnx-int8"} and result.n_images == 5
    assert all(v > 0 for v in [*result.model.values(), *result.end_to_end.values()])
    assert "end to end (5 images, onnx-int8)" in "\n".join(result.lines())
    plain = bench_infer(images, checkpoint=ckpt, batch_size=2, precision="fp32", repeat=1)
    assert set(plain.model) == {"torch-fp32", "torch-bf16"} and set(plain.end_to_end) == {
        "torch-fp32"
    }
    with pytest.raises(UserError, match="is a checkpoint"):
        bench_infer(images, checkpoint=ckpt, backends=("onnx-int8",), repeat=1)
    stand = bench_infer(images, backbone="resnet10t", input_size=64, onnx=False, repeat=1)
    assert "onnx" not in stand.model
    quantised = bench_infer(
        images, backbone="resnet10t", input_size=64, backends=("onnx-int8",), repeat=1
    )
    assert {"onnx", "onnx-int8"} <= set(quantised.model) and set(quantised.end_to_end) == {
        "onnx-int8"
    }
    argv = ["bench", "infer", "--images", str(images), "--backbone", "resnet10t"]
    argv += ["--input-size", "64", "--no-onnx", "--rounds", "2", "--precision", "fp32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "model only, torch-fp32:" in out
    assert "end to end (5 images, torch-fp32):" in out and "of model-only" in out
