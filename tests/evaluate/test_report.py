"""Tests for the self-contained HTML evaluation report (``cxrkit.evaluate.report``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from cxrkit.evaluate.metrics import roc_auc, summarize
from cxrkit.evaluate.report import write_report

CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax", "Hernia"]
CHROMIUM = Path("/usr/bin/chromium")


def synthetic(n: int = 300, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Labels with NaN (Hernia all negative: skipped), scores, calibrated scores and a metrics
    dict following the full report schema."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.25, 0.15, 0.3, 0.1, 0.0])
    y = (rng.random((n, len(CLASSES))) < prevalence).astype(float)
    y[rng.random(y.shape) < 0.15] = np.nan
    logits = rng.normal(size=y.shape) + 1.6 * np.nan_to_num(y) - 1.0
    score = 1 / (1 + np.exp(-1.5 * logits))
    calibrated = 1 / (1 + np.exp(-logits))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auroc = roc_auc(y, score)
    per_class = {}
    for j, name in enumerate(CLASSES):
        a = None if np.isnan(auroc[j]) else float(auroc[j])
        row = {k: None for k in ("ap", "sensitivity", "specificity", "ppv", "npv", "f1")}
        if a is not None:
            row = {"ap": 0.5, "sensitivity": 0.72, "specificity": 0.81, "ppv": 0.4, "npv": 0.93}
            row |= {"f1": 0.51, "sens_at_spec_0.8": 0.7, "sens_at_spec_0.9": 0.55}
            row |= {"sens_at_spec_0.95": 0.4, "spec_at_sens_0.8": 0.7, "spec_at_sens_0.9": 0.6}
            row |= {"auroc_ci": [a - 0.05, a + 0.05], "ap_ci": [0.41, 0.6]}
            row |= {"sensitivity_ci": [0.6, 0.8], "specificity_ci": [0.75, 0.86]}
            row["sens_at_spec_0.8_ci"] = [0.58, 0.81]
        labelled = ~np.isnan(y[:, j])
        per_class[name] = row | {
            "auroc": a,
            "n_labelled": int(labelled.sum()),
            "n_positive": int((y[:, j] == 1).sum()),
            "prevalence": float((y[labelled, j] == 1).mean()),
            "threshold": 0.5,
            "brier": 0.12,
            "ece": 0.08,
            "brier_calibrated": 0.1,
            "ece_calibrated": 0.03,
        }
    per_class["Effusion"]["auroc_ci"] = [0.701, 0.834]
    rows = [
        {
            "column": c,
            "group": g,
            "finding": f,
            "n": 60,
            "n_positive": 12,
            "auroc": a,
            "auroc_ci": [a - 0.1, a + 0.1],
        }
        for f in CLASSES[:4]
        for c, groups in (("sex", ("F", "M")), ("age_band", ("18-40", "40-65", "65+")))
        for g, a in zip(groups, (0.7, 0.8, 0.75), strict=False)
    ]
    metrics = {
        "classes": CLASSES,
        "split": "test",
        "n_images": n,
        "n_patients": n // 2,
        "per_class": per_class,
        "macro": {"auroc": 0.8, "auroc_ci": [0.76, 0.84], "ap": 0.5, "ap_ci": [0.45, 0.55]},
        "micro": {"auroc": 0.82, "ap": 0.52},
        "weighted": {"auroc": 0.81, "ap": None},
        "skipped_classes": ["Hernia"],
        "bootstrap": {"n": 1000, "unit": "patient", "seed": 0},
        "thresholds": {"method": "f1", "split": "val", "values": dict.fromkeys(CLASSES, 0.5)},
        "calibration": {"method": "temperature", "split": "val"},
        "subgroups": {
            "by": ["sex", "age_band"],
            "rows": rows,
            "largest_gap": {
                f: {"column": "age_band", "gap": 0.1, "low_group": "18-40", "high_group": "40-65"}
                for f in CLASSES[:4]
            },
        },
        "missing": {"in_predictions_only": 2, "in_labels_only": 1, "examples": ["img_001.png"]},
        "source": {"checkpoint": "/runs/demo/best.ckpt", "data": "/data/prepared"},
        "config": {"model": "densenet121", "image_size": 224, "url": "https://example.org"},
        "versions": {"cxrkit": "0.1.0", "numpy": np.__version__},
        "warnings": ["summarize: NaN for columns lacking positives or negatives: 'Hernia'"],
    }
    return metrics, y, score, calibrated


def assert_self_contained(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html.lower()
    assert "data:image/png;base64," in html


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of :func:`synthetic` with every optional section, written once."""
    metrics, y, score, calibrated = synthetic()
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    return write_report(out, metrics, y, calibrated, uncalibrated=score)


def test_full_report(full_report: Path) -> None:
    out = full_report
    html = out.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert html.count("data:image/png;base64,") == 3  # ROC, PR, reliability
    for name in CLASSES:
        assert name in html
    assert "Research software, not a medical device" in html
    assert "[0.701, 0.834]" in html
    assert "1000 bootstrap resamples by patient" in html
    assert "gap-low" in html and "gap-high" in html
    assert "<details>" in html
    assert "n/a" in html  # Hernia's AUROC, weighted AP
    assert out.stat().st_size < 2_000_000


def test_optional_sections_absent(tmp_path: Path) -> None:
    metrics, y, score, _ = synthetic(n=120, seed=1)
    keep = [0, 1, 4]  # fewer panels, faster; Atelectasis, Cardiomegaly and the skipped Hernia
    y, score, metrics["classes"] = y[:, keep], score[:, keep], [CLASSES[j] for j in keep]
    for key in ("bootstrap", "thresholds", "calibration", "subgroups", "missing", "config"):
        metrics[key] = None
    for key in ("versions", "source", "warnings", "n_patients", "weighted"):
        del metrics[key]
    metrics["per_class"]["Atelectasis"] = None
    metrics["per_class"]["Cardiomegaly"] = {"auroc": None, "auroc_ci": None, "threshold": None}
    html = write_report(tmp_path / "report.html", metrics, y, score).read_text(encoding="utf-8")
    assert_self_contained(html)
    assert "No subgroup analysis" in html and "No calibration was applied" in html
    assert all(name in html for name in metrics["classes"])
    assert "Not plotted: no class" not in html and "Black dot" not in html  # plotted, no thresholds


def test_summarize_output_renders(tmp_path: Path) -> None:
    """The minimal dict from :func:`cxrkit.evaluate.metrics.summarize` (no CIs, no extras)
    renders."""
    _, y, score, _ = synthetic(n=150, seed=2)
    y, score, classes = y[:, 2:], score[:, 2:], CLASSES[2:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = summarize(y, score, classes=classes, thresholds=np.full(len(classes), 0.4))
    html = write_report(tmp_path / "r.html", metrics, y, score).read_text(encoding="utf-8")
    assert_self_contained(html)
    assert "Hernia" in html and "skipped" in html and "Black dot" in html


def test_shape_mismatch_raises(tmp_path: Path) -> None:
    metrics, y, score, _ = synthetic(n=50)
    with pytest.raises(ValueError, match="uncalibrated"):
        write_report(tmp_path / "r.html", metrics, y, score, uncalibrated=score[:, :3])


def test_renders_in_chromium(full_report: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install chromium")
    cv2 = pytest.importorskip("cv2")
    page = shutil.copy(full_report, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [str(CHROMIUM), *flags, f"--user-data-dir={profile}", "--window-size=1400,3000"]
            + [f"--screenshot={shot}", Path(page).resolve().as_uri()],
            check=False,
            capture_output=True,
            timeout=60,
        )
    assert shot.exists() and shot.stat().st_size > 20_000
    image = cv2.imread(str(shot))
    assert image is not None and image.std() > 5
    artifacts = os.environ.get("CXRKIT_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report.png")
