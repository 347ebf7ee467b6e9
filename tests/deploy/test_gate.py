"""The input gate end to end: structural checks on real material, fitting into the card, flag
rates on unseen phantoms and on non-chest images, the export round trip, the features API and
``cxrkit gate``'s bad input."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cxrkit.cli.parser import main
from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.batch import predict_paths
from cxrkit.deploy.export import export_bundle
from cxrkit.deploy.gate import structural_reasons
from cxrkit.deploy.gate_fit import fit_gate
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.io.images import read_xray, read_xray_bytes
from cxrkit.io.xray import ImageReadError

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _material():  # noqa: ANN202 - the benchmark's module of non-chest images
    spec = importlib.util.spec_from_file_location("gate_material", BENCHMARKS / "gate_material.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("gate_material", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def test_images(prepared: Path) -> list[Path]:
    return [Path(p) for p in load_manifest(prepared).rows("test")["path"]]


def encode(img: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def test_structural_checks_on_real_material(test_images: list[Path]) -> None:
    data = pytest.importorskip("skimage.data")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        bgr = cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR)
        for ext in (".png", ".jpg"):
            xray = read_xray_bytes(encode(bgr, ext))
            assert xray.colour > 0.1, name
            assert "colour photograph" in structural_reasons(xray), name
    film = read_xray(test_images[0])
    assert film.colour == 0.0 and structural_reasons(film) == []
    as_rgb = cv2.cvtColor(film.pixels, cv2.COLOR_GRAY2BGR)
    for ext in (".png", ".jpg"):  # a radiograph saved in colour stays a radiograph
        xray = read_xray_bytes(encode(as_rgb, ext))
        assert xray.colour < 0.005 and structural_reasons(xray) == []
    # a colour JPEG still decodes to libjpeg's luma, as before the colour measure existed
    jpeg = encode(as_rgb, ".jpg")
    gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(read_xray_bytes(jpeg).pixels, gray)
    blank = np.full((256, 256), 128, np.uint8)
    assert structural_reasons(read_xray_bytes(encode(blank, ".png"))) == ["blank image"]
    white = film.pixels.copy()
    white[: int(0.8 * white.shape[0])] = 255
    assert structural_reasons(read_xray_bytes(encode(white, ".png"))) == ["saturated image"]
    strip = cv2.resize(film.pixels, (600, 200))
    assert structural_reasons(read_xray_bytes(encode(strip, ".png"))) == ["aspect ratio 3.0:1"]
    for path in test_images:
        negative = read_xray_bytes(encode(255 - read_xray(path).pixels, ".png"))
        assert structural_reasons(negative) == ["inverted radiograph"]
        assert structural_reasons(read_xray(path)) == []


def test_real_nih_films_pass_and_their_negatives_do_not(shared_data: Path) -> None:
    films = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:40]
    for path in films:
        xray = read_xray(path)
        assert structural_reasons(xray) == [], path.name
        negative = read_xray_bytes(encode(255 - xray.pixels, ".png"))
        assert structural_reasons(negative) == ["inverted radiograph"], path.name


def test_ct_and_mr_are_flagged_when_the_modality_gate_lets_them_in(gated: Path) -> None:
    from pydicom.data import get_testdata_file

    files = [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")]
    for f in files:
        with pytest.raises(ImageReadError, match="modality"):
            read_xray(f)
    predictor = Predictor.from_checkpoint(gated)
    for pred in predict_paths(predictor, files, modalities=None):
        assert pred.probs is not None and pred.gate is not None
        assert not pred.gate.in_distribution
        assert any(r.startswith("feature distance") for r in pred.gate.reasons)


def test_fit_gate_writes_gate_and_reference(gated: Path, prepared: Path) -> None:
    predictor = Predictor.from_checkpoint(gated)
    gate, ref = predictor.card["gate"], predictor.card["reference"]
    manifest = load_manifest(prepared)
    assert gate["n_train"] == len(manifest.rows("train"))
    assert gate["n_val"] == len(manifest.rows("val"))
    assert gate["false_alarm_rate"] == 0.1 and gate["threshold"] > 0  # conftest's GATED_RATE
    assert 0.0 <= gate["val_false_alarm_rate"] <= 0.1
    assert gate["threshold_rule"].startswith("pac") and gate["confidence"] == 0.9
    assert gate["n_held_out"] == gate["n_train"] and gate["held_out_false_alarm_rate"] <= 0.1
    assert gate["dim"] == predictor.feature_dim
    assert set(ref) == {"split", "n_images", "bin_edges", "fractions"}
    assert ref["n_images"] == len(manifest.rows("val"))
    assert list(ref["fractions"]) == predictor.findings
    for fractions in ref["fractions"].values():
        assert len(fractions) == 10 and sum(fractions) == pytest.approx(1.0)
    with pytest.raises(UserError, match="bundle"):
        fit_gate(gated.parent, prepared, progress=False)


def test_flag_rates_on_unseen_phantoms_and_non_chest_images(trained: Path, tmp_path: Path) -> None:
    """The tiny model, gated on a fresh phantom population it never saw; held out: that
    population's test split, and pydicom CT/MR/US/NM, skimage images and noise; and lateral
    phantom films, chests in the view the frontal-only model never saw."""
    pytest.importorskip("skimage")
    from cxrkit.data.prepare import prepare
    from cxrkit.data.synth.dataset import generate_dataset

    generate_dataset(tmp_path / "nih", n_patients=160, size=64, seed=11, progress=False)
    manifest = prepare("nih", tmp_path / "nih", tmp_path / "prep", size=64, progress=False)
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(trained / "checkpoints" / "best.ckpt", ckpt)
    fit_gate(ckpt, tmp_path / "prep", progress=False)
    predictor = Predictor.from_checkpoint(ckpt)
    test = [Path(p) for p in manifest.rows("test")["path"]]
    material = _material()
    ood = [
        *material.dicom_frames(),
        *material.natural_images(tmp_path / "skimage"),
        *material.noise_images(tmp_path / "noise", n=20),
    ]
    lateral = material.lateral_films(tmp_path / "lateral", n=20, size=64, seed=100)

    def flagged(paths: list[Path]) -> float:
        preds = list(predict_paths(predictor, paths, modalities=None))
        return float(np.mean([not p.gate.in_distribution for p in preds if p.gate]))

    assert len(test) >= 60 and len(ood) >= 50
    # asked at most 5%: 4 of these 68 films measured; 8 (12%) allows for 68 films' chance
    assert flagged(test) <= 0.12
    assert flagged(ood) >= 0.95
    # The tiny 64 px model flags 96 of 100 lateral films, its closest within 1% of the
    # threshold: 90% here; the demo model's >= 95% is test_demo_model_flag_rates' (slow).
    assert flagged(lateral) >= 0.9


def test_export_carries_the_gate_and_onnx_gives_the_features(
    gated: Path, test_images: list[Path], tmp_path: Path
) -> None:
    bundle = export_bundle(gated, tmp_path / "bundle")
    torch_p = Predictor.from_checkpoint(gated, backend="torch", precision="fp32")
    onnx_p = Predictor.from_checkpoint(bundle, backend="onnx", precision="fp32")
    assert onnx_p.card["gate"] == torch_p.card["gate"]
    assert onnx_p.card["reference"] == torch_p.card["reference"]
    assert onnx_p.card["onnx"]["features"]["name"] == "features"
    assert onnx_p.backend.has_features  # type: ignore[union-attr]
    batch = torch.from_numpy(
        np.stack([torch_p.preprocess(read_xray(p).pixels) for p in test_images])
    )
    expected = torch_p.features_batch(batch)
    np.testing.assert_allclose(onnx_p.features_batch(batch), expected, rtol=1e-3, atol=1e-4)
    by_onnx = [p.gate for p in predict_paths(onnx_p, test_images)]
    by_torch = [p.gate for p in predict_paths(torch_p, test_images)]
    np.testing.assert_allclose(
        [v.ood_score for v in by_onnx], [v.ood_score for v in by_torch], rtol=1e-3
    )
    assert [v.in_distribution for v in by_onnx] == [v.in_distribution for v in by_torch]
    onnx_p.backend.has_features = False  # type: ignore[union-attr]  # an older bundle's file
    np.testing.assert_allclose(onnx_p.features_batch(batch), expected, rtol=1e-4, atol=1e-5)


def test_eval_refreshes_the_drift_reference_with_calibrated_scores(
    gated: Path, prepared: Path, tmp_path: Path
) -> None:
    from cxrkit.evaluate.runs import EvalOptions, evaluate_checkpoint
    from cxrkit.models.checkpoint import read_checkpoint, update_card
    from cxrkit.models.gate import reference_distribution

    ckpt = tmp_path / "best.ckpt"
    shutil.copy(gated, ckpt)
    stale = read_checkpoint(ckpt)["model_card"]["reference"]
    stale = {**stale, "fractions": {f: [1.0] + [0.0] * 9 for f in stale["fractions"]}}
    update_card(ckpt, reference=stale)  # as if fitted on other scores
    evaluate_checkpoint(ckpt, prepared, tmp_path / "ev", options=EvalOptions(n_boot=0,
                        report=False), write_card=True, progress=False)  # fmt: skip
    card = read_checkpoint(ckpt)["model_card"]
    assert card["calibration"] is not None
    predictor = Predictor.from_checkpoint(ckpt)  # applies the calibration now in the card
    manifest = load_manifest(prepared)
    probs = predictor.predict_manifest(manifest, manifest.rows("val"))
    expected = reference_distribution(probs, predictor.findings, "val")
    assert card["reference"]["n_images"] == expected["n_images"]
    for finding, shares in expected["fractions"].items():
        assert np.allclose(card["reference"]["fractions"][finding], shares, atol=1e-9)


def test_features_api(gated: Path, prepared: Path) -> None:
    predictor = Predictor.from_checkpoint(gated, precision="fp32")
    manifest = load_manifest(prepared)
    rows = manifest.rows("val")
    emb = predictor.embed_manifest(manifest, rows)
    assert emb.shape == (len(rows), predictor.feature_dim) and emb.dtype == np.float32
    assert predictor.embed_manifest(manifest, rows.iloc[:0]).shape == (0, predictor.feature_dim)
    images = next(iter(predictor.manifest_batches(manifest, rows)))
    probs, feats = predictor.predict_with_features(images)
    np.testing.assert_array_equal(probs, predictor.predict_batch(images))
    np.testing.assert_allclose(feats, emb[: len(images)], rtol=1e-5, atol=1e-6)
    predictor.tta = True  # the gate scores the plain view whatever the TTA
    np.testing.assert_allclose(predictor.features_batch(images), feats, rtol=1e-5, atol=1e-6)


def test_cli_gate_and_its_bad_input(
    gated: Path, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "copy.ckpt"
    shutil.copy(gated, ckpt)
    capsys.readouterr()
    # 5% (the default) cannot be promised from the tiny phantom's 11 validation images
    assert main(["gate", "--checkpoint", str(ckpt), "--data", str(prepared)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs at least 19 validation images" in err
    bad = ["gate", "--checkpoint", str(ckpt), "--data", str(prepared), "--false-alarm-rate"]
    assert main([*bad, "0.1"]) == 0
    out = capsys.readouterr().out
    assert "input gate: threshold" in out
    assert "validation images so that at most 10.0% of in-distribution images are flagged" in out
    assert main([*bad, "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--false-alarm-rate must be in (0, 0.5]" in err
    bundle = export_bundle(gated, tmp_path / "bundle", onnx=False)
    assert main(["gate", "--checkpoint", str(bundle), "--data", str(prepared)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fixed at export" in err


@pytest.mark.slow
def test_demo_model_flag_rates(tmp_path: Path) -> None:
    """benchmarks/bench_gate.py's groups on a fresh `cxrkit demo` model (5-10 minutes on
    2 cores): the issue's targets. At most 5% of the demo's own test films are flagged (14 of
    294 measured, 4.8%) and at least 95% of every non-chest group (all measured)."""
    pytest.importorskip("skimage")
    from cxrkit.cli.demo import run_demo

    run_demo(tmp_path / "demo", n_cam=0)
    spec = importlib.util.spec_from_file_location("bench_gate", BENCHMARKS / "bench_gate.py")
    _material()
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    predictor = Predictor.from_checkpoint(tmp_path / "demo" / "run" / "checkpoints" / "best.ckpt")
    gate = predictor.card["gate"]
    assert gate["threshold_rule"].startswith("pac") and gate["held_out_false_alarm_rate"] <= 0.05
    rates = bench.flag_rates(predictor, bench.groups(tmp_path / "demo" / "prepared", tmp_path))
    for name, r in rates.items():
        if name == bench.IN_DISTRIBUTION:
            assert r["rate"] <= 0.05, r
        else:
            assert r["rate"] >= 0.95, (name, r)
