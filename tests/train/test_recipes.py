"""The shipped recipes (``configs/*.yaml``): each loads, documents where its numbers come from,
and trains a few steps on the phantom data when shrunk with ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrkit.errors import UserError
from cxrkit.train.config import RECIPES as RECIPE_DIR
from cxrkit.train.config import load_config, resolve_recipe
from cxrkit.train.fit import fit

RECIPES = [
    "nih_chexnet",
    "nih_official_split",
    "chexpert_competition",
    "vindr",
    "mimic",
    "multi_dataset",
]
#: one probe recipe per foundation encoder: the backbone its embeddings must come from
ENCODER_PROBES = {
    "raddino_probe": "hf:microsoft/rad-dino",
    "medsiglip_probe": "hf:google/medsiglip-448",
    "biomedclip_probe": "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
}
#: Shrink a recipe to seconds on a CPU: no download, tiny images, a training batch or two.
SHRINK = [
    "model.pretrained=false",
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=0.1",
    "trainer.patience=0",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
]


def test_every_shipped_recipe_is_covered() -> None:
    shipped = {p.stem for p in RECIPE_DIR.glob("*.yaml")}
    assert shipped == {"demo", "probe", *RECIPES, *ENCODER_PROBES, "raddino_finetune"}


def test_probe_recipe_says_how_to_run_it_and_where_its_numbers_come_from() -> None:
    """The probe recipe (tests/train/test_probe.py trains it) embeds first, then trains."""
    path = resolve_recipe("probe")
    config = load_config(path)
    text = path.read_text()
    assert config.data.embeddings and config.optim.scheduler == "none"
    for step in ("cxrkit prepare ", "cxrkit embed ", "cxrkit train --config probe "):
        assert step in text
    assert "Published" in text and "measured" in text


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_says_how_to_run_it_and_what_to_expect(name: str) -> None:
    path = resolve_recipe(name)
    config = load_config(path)
    text = path.read_text()
    assert config.model.backbone == "densenet121" and config.model.pretrained
    assert "cxrkit prepare " in text and f"cxrkit train --config {name} " in text
    assert "Published" in text, "the published figures to approach (or why there are none)"
    assert "ESTIMATE, not a measurement" in text, "GPU time is labelled as an estimate"


def test_recipes_carry_their_papers_settings() -> None:
    chexnet = load_config(resolve_recipe("nih_chexnet"))
    assert (chexnet.data.image_size, chexnet.data.batch_size, chexnet.optim.lr) == (224, 16, 1e-3)
    assert chexnet.optim.scheduler == "plateau" and chexnet.optim.weight_decay == 0.0
    assert chexnet.augment.hflip and len(chexnet.data.findings or []) == 14
    chexpert = load_config(resolve_recipe("chexpert_competition"))
    assert chexpert.data.image_size == 320 and chexpert.optim.lr == 1e-4
    assert sorted(chexpert.data.findings or []) == [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Effusion",
    ]
    assert "--uncertain chexpert-best" in resolve_recipe("chexpert_competition").read_text()
    assert load_config(resolve_recipe("vindr")).loss.name == "asymmetric"
    assert load_config(resolve_recipe("multi_dataset")).data.combine == "union"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_a_few_steps_on_the_phantom(
    name: str, prepared: Path, tmp_path: Path
) -> None:
    # DenseNet121 itself once (CheXNet's recipe, at 32 px); a small ResNet for the others.
    tiny = [] if name == "nih_chexnet" else ["model.backbone=resnet10t"]
    config = load_config(resolve_recipe(name), [*SHRINK, *tiny])
    data = [prepared, prepared] if name == "multi_dataset" else prepared
    result = fit(config, data, tmp_path / "run", progress=False)
    assert result.epochs == 1 and result.best.is_file()
    card = torch.load(result.best, weights_only=True)["model_card"]
    assert card["backbone"] == config.model.backbone
    assert card["val_metrics"]["n_images"] == card["training_data"]["n_val"]


@pytest.mark.parametrize("name", sorted(ENCODER_PROBES))
def test_encoder_probe_recipes_say_how_to_run_them(name: str) -> None:
    path = resolve_recipe(name)
    config = load_config(path)
    text = path.read_text()
    assert config.data.embeddings and config.model.backbone == ENCODER_PROBES[name]
    embed = f"cxrkit embed --backbone {ENCODER_PROBES[name]}"
    for step in ("hf download ", "cxrkit prepare ", embed, f"cxrkit train --config {name} "):
        assert step in text, step
    assert "Published" in text and "0.893" in text and "Licence" in text


def test_encoder_recipes_train_on_a_tiny_encoder(prepared: Path, tmp_path: Path) -> None:
    """The fine-tuning recipe (layer decay on) and a probe recipe, with a tiny DINOv2 folder
    standing in for RAD-DINO (``--set model.backbone=hf:FOLDER``)."""
    pytest.importorskip("transformers")
    from tiny_encoders import write_hf

    from cxrkit.deploy.embed import embed

    backbone = f"hf:{write_hf(tmp_path / 'dino', 'dinov2')}"
    small = [f"model.backbone={backbone}", "data.image_size=64", "data.batch_size=8",
             "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
             "trainer.precision=32-true", "optim.warmup_epochs=0"]  # fmt: skip
    config = load_config(resolve_recipe("raddino_finetune"), small)
    result = fit(config, prepared, tmp_path / "ft", progress=False)
    card = torch.load(result.best, weights_only=True)["model_card"]
    assert card["encoder"]["architecture"] == "dinov2" and card["input_size"] == 64
    emb = tmp_path / "emb"
    embed(prepared, emb, backbone=backbone, precision="fp32", device="cpu", progress=False)
    probe = load_config(resolve_recipe("raddino_probe"), [f"model.backbone={backbone}"])
    result = fit(probe, emb, tmp_path / "probe", progress=False)
    assert torch.load(result.best, weights_only=True)["model_card"]["backbone"] == backbone
    with pytest.raises(UserError, match="the embeddings were made with model.backbone="):
        fit(load_config(resolve_recipe("raddino_probe")), emb, tmp_path / "p2", progress=False)
