"""Train / checkpoint / eval / infer / cam on the tiny phantom (session fixtures)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.batch import predict_paths, write_predictions
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.evaluate.runs import EvalOptions, evaluate_checkpoint
from cxrkit.explain.cam import cam_image, heatmaps, to_original
from cxrkit.models.checkpoint import load_checkpoint, read_checkpoint, update_card


def test_run_folder_contents(trained: Path) -> None:
    for rel in (
        "config.yaml",
        "run.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
    ):
        assert (trained / rel).is_file(), rel
    assert any((trained / "tensorboard").iterdir())
    run = json.loads((trained / "run.json").read_text())
    assert run["epochs"] == 2 and 0.0 <= run["best_val_macro_auroc"] <= 1.0
    epochs = pd.read_csv(trained / "logs" / "metrics.csv")
    assert epochs["val_macro_auroc"].notna().sum() == 2


def test_checkpoint_loads_with_weights_only_and_carries_the_card(trained: Path) -> None:
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", weights_only=True)
    card = ckpt["model_card"]
    assert card["backbone"] == "resnet10t" and card["input_size"] == 48
    assert card["normalization"]["letterbox_size"] == 64
    assert card["findings"] and card["training_data"]["n_train"] > 0
    loaded = load_checkpoint(trained / "checkpoints" / "best.ckpt")
    assert not loaded.model.training
    np.testing.assert_array_equal(loaded.thresholds(), 0.5)


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "none.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_checkpoint(junk)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(UserError, match="not a cxrkit checkpoint"):
        read_checkpoint(tmp_path / "plain.ckpt")


def test_file_prediction_equals_cache_prediction(trained: Path, prepared: Path) -> None:
    """Inference on the original PNGs reproduces what the model saw from the cache."""
    predictor = Predictor.from_checkpoint(trained / "checkpoints" / "best.ckpt")
    manifest = load_manifest(prepared)
    rows = manifest.rows("test").iloc[:8]
    from_cache = predictor.predict_manifest(manifest, rows)
    from_files = np.stack([p.probs for p in predict_paths(predictor, list(rows["path"]))])
    np.testing.assert_allclose(from_files, from_cache, atol=1e-5)
    assert np.ptp(from_cache, axis=0).max() > 0, "outputs vary across images"


def test_eval_matches_sklearn_and_writes_the_card(
    trained: Path, prepared: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes((trained / "checkpoints" / "best.ckpt").read_bytes())
    result = evaluate_checkpoint(
        ckpt,
        prepared,
        tmp_path / "eval",
        options=EvalOptions(n_boot=50, by=("sex",)),
        progress=False,
    )
    m = json.loads(result.metrics_file.read_text())
    assert set(m) >= {"classes", "per_class", "macro", "micro", "n_images", "subgroups"}
    for name in ("per_class.csv", "report.html", "predictions_test.csv"):
        assert (tmp_path / "eval" / name).is_file(), name
    preds = pd.read_csv(tmp_path / "eval" / "predictions_test.csv")
    assert len(preds) == m["n_images"]
    for name in m["classes"]:
        y, p = preds[f"label_{name}"], preds[f"prob_{name}"]
        entry = m["per_class"][name]
        assert {
            "auroc",
            "ap",
            "threshold",
            "sensitivity",
            "specificity",
            "sens_at_spec_0.8",
            "ppv",
            "npv",
            "f1",
            "brier",
            "ece",
        } <= set(entry)
        if y.nunique() == 2:
            assert entry["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
            low, high = entry["auroc_ci"]
            assert low <= entry["auroc"] <= high
        else:
            assert entry["auroc"] is None
    card = load_checkpoint(ckpt).card
    assert card["thresholds"]["split"] == "val"
    assert [card["thresholds"]["values"][c] for c in m["classes"]] == pytest.approx(
        [m["per_class"][c]["threshold"] for c in m["classes"]]
    )
    assert card["calibration"]["method"] == "temperature"
    # Inference now outputs the calibrated probabilities the metrics were computed on.
    rows = load_manifest(prepared).rows("test")
    predictor = Predictor.from_checkpoint(ckpt)
    got = predictor.predict_manifest(load_manifest(prepared), rows)
    np.testing.assert_allclose(got, preds[[f"prob_{c}" for c in m["classes"]]], atol=1e-6)
    with pytest.raises(UserError, match="fitted on the val split"):
        evaluate_checkpoint(
            ckpt, prepared, tmp_path / "e2", options=EvalOptions(split="val"), progress=False
        )


def test_infer_streams_rows_and_keeps_going_after_a_bad_file(
    trained: Path, prepared: Path, tmp_path: Path
) -> None:
    predictor = Predictor.from_checkpoint(trained / "checkpoints" / "best.ckpt", batch_size=3)
    good = [Path(p) for p in load_manifest(prepared).rows("test")["path"].iloc[:5]]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    summary = write_predictions(
        predictor, [good[0], bad, *good[1:]], tmp_path / "p.csv", progress=False
    )
    assert (summary.ok, summary.failed) == (5, 1)
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r["path"] for r in rows if r["status"] == "ok"] == [str(p) for p in good]
    bad_row = next(r for r in rows if r["path"] == str(bad))
    assert bad_row["status"].startswith("error:") and "not an image" in bad_row["status"]
    f0 = predictor.findings[0]
    for r in (r for r in rows if r["status"] == "ok"):
        assert 0.0 <= float(r[f"prob_{f0}"]) <= 1.0
        assert r[f"call_{f0}"] == str(int(float(r[f"prob_{f0}"]) >= predictor.thresholds[0]))


def test_cam_overlays_and_heatmaps(trained: Path, prepared: Path, tmp_path: Path) -> None:
    import cv2

    predictor = Predictor.from_checkpoint(trained / "checkpoints" / "best.ckpt")
    image = load_manifest(prepared).rows("test")["path"].iloc[0]
    results = cam_image(predictor, image, tmp_path / "cam", targets="all")
    assert [r.finding for r in results] == predictor.findings
    for r in results:
        assert r.heatmap.shape == (64, 64) and 0 <= r.heatmap.min() <= r.heatmap.max() <= 1
        png = cv2.imread(str(r.overlay_path))
        assert png.shape[0] > 64 and png.shape[1] > 64  # title band and colour bar
        assert np.load(r.overlay_path.with_suffix(".npy")).shape == (64, 64)
    with pytest.raises(UserError, match="unknown CAM target"):
        heatmaps(predictor, np.zeros((64, 64), np.uint8), "Cardiomegalyy")


def test_heatmap_maps_back_through_the_letterbox() -> None:
    heat = np.zeros((32, 32), np.float32)
    heat[8:24, :16] = 1.0  # the left half of the content of a wide image (content rows 8..24)
    back = to_original(heat, (50, 100), letterbox_size=32)
    assert back.shape == (50, 100)
    assert back[:, :40].mean() > 0.9 and back[:, 60:].mean() < 0.1


def test_update_card_is_atomic_and_keeps_weights(trained: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes())
    before = read_checkpoint(ckpt)["state_dict"]
    card = update_card(ckpt, calibration={"method": "none"})
    assert card["calibration"] == {"method": "none"}
    after = read_checkpoint(ckpt)
    assert after["model_card"]["calibration"] == {"method": "none"}
    assert all(torch.equal(before[k], after["state_dict"][k]) for k in before)
    assert list(tmp_path.iterdir()) == [ckpt]
