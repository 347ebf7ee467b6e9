"""A foundation encoder through the whole CLI: ``train`` on ``hf:FOLDER`` (a tiny DINOv2 saved
with ``save_pretrained``), then ``eval``, ``infer``, ``cam`` and ``export`` with the source
folder deleted: every later command rebuilds the network from the card alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")

from tiny_encoders import write_rad_dino_like  # noqa: E402

from cxrkit.cli.parser import main  # noqa: E402
from cxrkit.deploy.predictor import Predictor  # noqa: E402
from cxrkit.models.checkpoint import load_model, read_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def encoder_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("encoder_run")
    folder = write_rad_dino_like(root / "rad-dino-tiny")
    sets = [
        f"model.backbone=hf:{folder}",
        "data.image_size=64",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.patience=0",
    ]
    argv = ["train", "--config", "demo", "--data", str(prepared), "--out", str(root / "run")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    shutil.rmtree(folder)  # nothing later may need the source folder
    return root / "run" / "checkpoints" / "best.ckpt"


def test_card_records_the_encoder(encoder_run: Path) -> None:
    card = read_checkpoint(encoder_run)["model_card"]
    enc = card["encoder"]
    assert card["backbone"].startswith("hf:") and enc["architecture"] == "dinov2"
    assert enc["normalization_source"] == "preprocessor_config.json"
    assert card["licence"].startswith("other (msrla")
    assert card["normalization"]["mean"] == 0.0 and card["normalization"]["std"] == 1.0
    assert json.loads(json.dumps(card)) == card  # plain data: weights_only loading keeps it


def test_eval_infer_cam_export_without_the_source_folder(
    encoder_run: Path, prepared: Path, phantom: Path, tmp_path: Path
) -> None:
    ev = str(tmp_path / "ev")
    assert main(["eval", "--checkpoint", str(encoder_run), "--data", str(prepared),
                 "--out", ev, "--bootstrap", "0", "--no-report"]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0.0 <= metrics["macro"]["auroc"] <= 1.0
    images = sorted(phantom.rglob("*.png"))[:3]
    assert images
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    assert main(["infer", "--checkpoint", str(encoder_run), "--source", str(folder),
                 "--out", str(tmp_path / "p.csv")]) == 0  # fmt: skip
    table = pd.read_csv(tmp_path / "p.csv")
    assert (table["status"] == "ok").all() and len(table) == 3
    assert main(["cam", "--checkpoint", str(encoder_run), "--image", str(folder / images[0].name),
                 "--out", str(tmp_path / "cams")]) == 0  # fmt: skip
    assert list((tmp_path / "cams").glob("*.png"))
    assert main(["export", "--checkpoint", str(encoder_run), "--out", str(tmp_path / "b")]) == 0
    text = (tmp_path / "b" / "MODEL_CARD.md").read_text()
    assert "Foundation encoder (hf, dinov2)" in text and "msrla" in text
    # The bundle, PyTorch and ONNX, predicts what the checkpoint predicts.
    ckpt = Predictor(load_model(encoder_run), precision="fp32", backend="torch")
    x = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    for backend in ("torch", "onnx"):
        bundle = Predictor(load_model(tmp_path / "b"), precision="fp32", backend=backend)
        diff = abs(bundle.predict_batch(x) - ckpt.predict_batch(x)).max()
        assert diff < 1e-5, (backend, diff)


def test_embed_and_probe_a_foundation_encoder(prepared: Path, tmp_path: Path) -> None:
    """``embed --backbone hf:FOLDER`` then ``train --config probe``: the probe checkpoint
    (encoder + head) predicts what its head gives on the stored embeddings."""
    import numpy as np

    from cxrkit.data import embeddings as store
    from cxrkit.data.manifest import load_manifest

    folder = write_rad_dino_like(tmp_path / "enc")
    emb, run = tmp_path / "emb", tmp_path / "probe"
    assert main(["embed", "--backbone", f"hf:{folder}", "--data", str(prepared),
                 "--out", str(emb), "--precision", "fp32"]) == 0  # fmt: skip
    shutil.rmtree(folder)  # the embedding folder holds the encoder itself
    assert main(["train", "--config", "probe", "--data", str(emb), "--out", str(run),
                 "--set", "trainer.max_epochs=20"]) == 0  # fmt: skip
    loaded = load_model(run / "checkpoints" / "best.ckpt")
    assert loaded.card["encoder"]["architecture"] == "dinov2" and loaded.card["input_size"] == 64
    e = store.open_embeddings(emb)
    rows = e.split("val")
    with torch.no_grad():
        head = loaded.model.get_classifier()
        logits = head(torch.from_numpy(np.asarray(e.array[rows], np.float32))).numpy()
    manifest = load_manifest(prepared)
    probs = Predictor(loaded, precision="fp32").predict_manifest(manifest, manifest.rows("val"))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=2e-3)
