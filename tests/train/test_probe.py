"""Linear probes (``cxrkit train --config probe``): a logistic head on an embedding folder,
written as a normal checkpoint whose logits are the head applied to the stored embeddings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrkit.cli.parser import main
from cxrkit.data import embeddings as store
from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.embed import embed
from cxrkit.deploy.predictor import Predictor
from cxrkit.errors import UserError
from cxrkit.models.checkpoint import load_checkpoint, read_checkpoint
from cxrkit.train.config import load_config, resolve_recipe
from cxrkit.train.fit import fit
from cxrkit.train.run_folder import read_json

FAST = ["trainer.max_epochs=30", "trainer.patience=0"]


@pytest.fixture(scope="module")
def emb(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe-emb") / "emb"
    embed(
        prepared,
        out,
        backbone="resnet18",
        pretrained=False,
        image_size=64,
        precision="fp32",
        device="cpu",
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def probe_run(emb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe-run") / "run"
    fit(load_config(resolve_recipe("probe"), FAST), emb, out, progress=False)
    return out


def test_best_checkpoint_is_the_head_on_the_stored_embeddings(
    probe_run: Path, emb: Path, prepared: Path
) -> None:
    ckpt = probe_run / "checkpoints" / "best.ckpt"
    loaded = load_checkpoint(ckpt)
    card = loaded.card
    e = store.open_embeddings(emb)
    val = e.split("val")
    head = loaded.model.get_classifier()
    with torch.no_grad():
        logits = head(torch.from_numpy(np.asarray(e.array[val], np.float32))).numpy()
    manifest = load_manifest(prepared)
    probs = Predictor(loaded, precision="fp32").predict_manifest(manifest, manifest.rows("val"))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=2e-3)
    # The card's validation AUROC is scikit-learn's on those logits.
    labels = manifest.labels(manifest.rows("val"), card["findings"])
    for j, f in enumerate(card["findings"]):
        y = labels[:, j]
        ok = ~np.isnan(y)
        if len(set(y[ok])) == 2:
            assert card["val_metrics"]["auroc"][f] == pytest.approx(
                roc_auc_score(y[ok], logits[ok, j])
            )
    for key in ("findings", "backbone", "input_size", "thresholds", "training_data"):
        assert key in card
    assert card["backbone"] == "resnet18" and card["input_size"] == 64
    assert card["normalization"]["letterbox_size"] == 64
    assert card["train_config"]["data"]["embeddings"] is True
    assert card["training_data"]["datasets"][0]["prepared"] == manifest.origin


def test_the_run_folder_has_the_shape_of_a_training_run(probe_run: Path) -> None:
    for name in ("config.yaml", "run.json", "epochs.csv", "metrics.json"):
        assert (probe_run / name).is_file()
    info = read_json(probe_run / "run.json")
    assert info["status"] == "finished" and info["epochs"] == 30
    metrics = read_json(probe_run / "metrics.json")
    assert metrics["best_val_macro_auroc"] == pytest.approx(info["best_val_macro_auroc"])
    last = read_checkpoint(probe_run / "checkpoints" / "last.ckpt")
    assert last["model_card"]["val_metrics"]["epoch"] == 29
    assert load_config(probe_run / "config.yaml").model.backbone == "resnet18"


def test_eval_takes_the_probe_checkpoint(probe_run: Path, prepared: Path, tmp_path: Path) -> None:
    ckpt = probe_run / "checkpoints" / "best.ckpt"
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(prepared), "--out", str(tmp_path)]
    assert main([*args, "--bootstrap", "0", "--device", "cpu"]) == 0
    assert (tmp_path / "metrics.json").is_file()


def test_class_weights_and_early_stopping(emb: Path, tmp_path: Path) -> None:
    sets = ["loss.pos_weight=auto", "trainer.max_epochs=200", "trainer.patience=2"]
    result = fit(load_config(resolve_recipe("probe"), sets), emb, tmp_path / "r", progress=False)
    assert result.epochs < 200 and read_json(tmp_path / "r" / "metrics.json")["stopped_early"]


@pytest.mark.parametrize(
    ("recipe", "sets", "message"),
    [
        ("demo", [], "--config probe"),
        ("probe", ["augment.rotate_deg=3"], "does not apply to a probe"),
        ("probe", ["optim.scheduler=cosine"], "optim.scheduler=none"),
        ("probe", ["model.backbone=resnet50"], "model.backbone=resnet18"),
        ("probe", ["model.init=x.ckpt"], "model.init"),
    ],
)
def test_a_mismatch_of_recipe_and_data_is_refused_in_one_line(
    recipe: str,
    sets: list[str],
    message: str,
    emb: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["train", "--config", recipe, "--data", str(emb), "--out", str(tmp_path / "r")]
    assert main([*args, *[f"--set={s}" for s in sets]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_the_probe_recipe_on_a_prepared_folder_says_to_embed_it(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--config", "probe", "--data", str(prepared), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "cxrkit embed" in capsys.readouterr().err


def test_a_manifest_changed_since_embedding_is_refused(prepared: Path, tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    shutil.copytree(prepared, prep)
    out = tmp_path / "emb"
    embed(
        prep,
        out,
        backbone="resnet10t",
        pretrained=False,
        image_size=64,
        device="cpu",
        precision="fp32",
        progress=False,
    )
    csv = prep / "manifest.csv"
    csv.write_text(csv.read_text().replace(",0.0,", ",1.0,", 1))
    with pytest.raises(UserError, match="changed since"):
        fit(load_config(resolve_recipe("probe"), FAST), out, tmp_path / "r", progress=False)


def test_the_benchmark_folder_trains(tmp_path: Path) -> None:
    """benchmarks/bench_probe.py's synthetic folder, shortened (20,000 x 768 float16, 14
    findings, 5 epochs), trains to a checkpoint; its speed is measured by the benchmark."""
    import importlib.util

    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_probe.py"
    spec = importlib.util.spec_from_file_location("bench_probe", bench)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    emb = module.synthetic_folder(tmp_path, n=20000, dim=768, n_findings=14)
    sets = ["trainer.max_epochs=5", "trainer.patience=0"]
    fit(load_config(resolve_recipe("probe"), sets), emb, tmp_path / "r", progress=False)
    card = load_checkpoint(tmp_path / "r" / "checkpoints" / "best.ckpt").card
    assert len(card["findings"]) == 14 and card["val_metrics"]["n_images"] > 0
