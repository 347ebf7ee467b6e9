"""Foundation encoders as backbones (``hf:``, ``open_clip:``): built from tiny offline folders,
checked against the library's own forward pass, rebuilt from the card alone, and refused with
one line when the source is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from tiny_encoders import (  # noqa: E402
    MEAN,
    SIZE,
    STD,
    write_hf,
    write_open_clip,
    write_rad_dino_like,
)

from cxrkit.errors import UserError  # noqa: E402
from cxrkit.explain.layers import cam_layers  # noqa: E402
from cxrkit.models import backbones  # noqa: E402
from cxrkit.models.backbones import check_backbone, create_model  # noqa: E402
from cxrkit.models.checkpoint import _build  # noqa: E402
from cxrkit.models.encoder_spec import NO_LICENCE  # noqa: E402
from cxrkit.models.inputs import input_normalization  # noqa: E402

HF_KINDS = ["dinov2", "dinov2_with_registers", "siglip", "clip"]
PREFIX_TOKENS = {"dinov2": 1, "dinov2_with_registers": 5, "siglip": 0, "clip": 1}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    out = {kind: write_hf(root / kind, kind) for kind in HF_KINDS}
    out["rad_dino"] = write_rad_dino_like(root / "rad_dino")
    out["open_clip"] = write_open_clip(root / "open_clip")
    out["open_clip_timm"] = write_open_clip(root / "open_clip_timm", timm_tower=True)
    return out


def _rebuilt(model: torch.nn.Module) -> torch.nn.Module:
    """The model as every later command gets it: from a JSON card and a state dict only."""
    card = json.loads(json.dumps({"findings": ["a", "b", "c"], **model.card_fields}))
    return _build(card, model.state_dict(), "test")


@pytest.mark.parametrize("kind", HF_KINDS)
def test_hf_encoder_matches_transformers_and_rebuilds_from_card(
    folders: dict[str, Path], kind: str
) -> None:
    import transformers as tr

    model = create_model(f"hf:{folders[kind]}", 3, pretrained=True).eval()
    assert input_normalization(model) == (0.0, 1.0)  # the card passes [0, 1]; RGB happens inside
    assert model.pretrained_cfg["input_size"] == (1, SIZE, SIZE)  # embed's default size
    enc = model.card_fields["encoder"]
    assert enc["prefix_tokens"] == PREFIX_TOKENS[kind]
    assert enc["native_size"] == SIZE and enc["patch_size"] == 8
    assert enc["licence"] == NO_LICENCE and "default" in enc["normalization_source"]
    torch.manual_seed(1)
    x = torch.rand(2, 1, SIZE, SIZE)
    # The library's own vision tower on the gray image replicated to RGB and normalised.
    cls = {"dinov2": tr.Dinov2Model, "dinov2_with_registers": tr.Dinov2WithRegistersModel}.get(
        kind, {"siglip": tr.SiglipVisionModel, "clip": tr.CLIPVisionModel}.get(kind)
    )
    ref = cls.from_pretrained(folders[kind]).eval()
    mean = torch.tensor(enc["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(enc["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(pixel_values=(x.expand(-1, 3, -1, -1) - mean) / std).pooler_output
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
        logits = model(x)
        assert logits.shape == (2, 3) and model.num_features == 32
        torch.testing.assert_close(model.get_classifier()(features), logits)
        torch.testing.assert_close(_rebuilt(model)(x), logits, atol=0, rtol=0)
        assert model(torch.rand(1, 1, 96, 96)).shape == (1, 3)  # other multiples of the patch


def test_folder_normalisation_and_licence_are_recorded(folders: dict[str, Path]) -> None:
    model = create_model(f"hf:{folders['rad_dino']}", 2, pretrained=True)
    enc = model.card_fields["encoder"]
    assert enc["mean"] == MEAN and enc["std"] == STD
    assert enc["normalization_source"] == "preprocessor_config.json"
    assert model.card_fields["licence"] == "other (msrla, https://example.org/msrla)"
    assert enc["channels"].startswith("gray replicated to 3 channels")


def test_pretrained_false_is_random_and_pretrained_loads_the_folder(
    folders: dict[str, Path],
) -> None:
    name = f"hf:{folders['dinov2']}"
    a, b = create_model(name, 2, pretrained=True), create_model(name, 2, pretrained=True)
    key = "tower.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    torch.manual_seed(5)
    random = create_model(name, 2, pretrained=False)
    assert not torch.equal(random.state_dict()[key], a.state_dict()[key])


@pytest.mark.parametrize(("name", "size"), [("open_clip", SIZE), ("open_clip_timm", 224)])
def test_open_clip_tower_matches_open_clip(folders: dict[str, Path], name: str, size: int) -> None:
    import open_clip

    model = create_model(f"open_clip:{folders[name]}", 3, pretrained=True).eval()
    enc = model.card_fields["encoder"]
    assert enc["mean"] == MEAN and enc["native_size"] == size and enc["prefix_tokens"] == 1
    ref = open_clip.create_model(f"local-dir:{folders[name]}").eval()
    x = torch.rand(2, 1, size, size)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.encode_image((x.expand(-1, 3, -1, -1) - mean) / std)
        features = model.forward_features(x)
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(_rebuilt(model)(x), model(x), atol=0, rtol=0)
    with pytest.raises(UserError, match=f"takes {size} px inputs only"):
        model(torch.rand(1, 1, size + 16, size + 16))


@pytest.mark.parametrize("kind", [*HF_KINDS, "open_clip"])
def test_cam_layer_is_the_last_block_on_the_patch_grid(folders: dict[str, Path], kind: str) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxrkit.explain.cam import open_cam

    prefix = "open_clip" if kind == "open_clip" else "hf"
    model = create_model(f"{prefix}:{folders[kind]}", 3).eval()
    (layer,) = cam_layers(model, f"{prefix}:x", SIZE)
    assert layer.name == model.cam_target and layer.grid == (SIZE // 8, SIZE // 8)
    assert layer.reshape is not None
    with open_cam(model, layer, "gradcam") as cam:
        heat = cam(input_tensor=torch.rand(1, 1, SIZE, SIZE), targets=[ClassifierOutputTarget(1)])
    assert heat.shape == (1, SIZE, SIZE) and heat.max() > heat.min()


def test_bad_sources_say_what_was_expected(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="no such folder"):
        create_model(f"hf:{tmp_path / 'missing'}", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Hugging Face model folder: no config.json"):
        check_backbone(f"hf:{tmp_path / 'empty'}")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="'bert' model; cxrkit takes these vision encoders: clip"):
        create_model(f"hf:{bert}", 2)
    with pytest.raises(UserError, match="not an open_clip model folder: no open_clip_config"):
        create_model(f"open_clip:{folders['dinov2']}", 2)
    with pytest.raises(UserError, match="neither a folder nor an architecture"):
        create_model("open_clip:ViT-Q-99", 2)
    with pytest.raises(UserError, match="names an architecture only"):
        create_model("open_clip:ViT-B-32", 2, pretrained=True)
    with pytest.raises(UserError, match="transformer encoder: leave it at 32"):
        create_model(f"hf:{folders['dinov2']}", 2, output_stride=16)
    with pytest.raises(UserError, match="not a multiple of the encoder's patch size 8"):
        create_model(f"hf:{folders['dinov2']}", 2)(torch.rand(1, 1, 60, 60))
    # A Hub id, offline, with an empty cache: one line naming what to download and how.
    monkeypatch.setattr("cxrkit.models.hub.hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"not in the Hugging Face cache .* `hf download org/nope`"):
        check_backbone("hf:org/nope")


def test_truncated_weights_are_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    broken = shutil.copytree(folders["dinov2"], tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="could not read the weights"):
        create_model(f"hf:{broken}", 2, pretrained=True)


def test_timm_backbones_are_untouched() -> None:
    model = backbones.create_model("resnet10t", 2)
    assert backbones.encoder_card_fields(model) == {}


def test_a_hub_id_is_read_from_the_cache_offline(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hf:org/name`` with no network: the snapshot in the Hugging Face cache layout is used."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny-dino"
    shutil.copytree(folders["rad_dino"], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr("cxrkit.models.hub.hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = create_model("hf:org/tiny-dino", 2, pretrained=True)
    assert model.card_fields["encoder"]["source"] == "org/tiny-dino"
    assert model.card_fields["licence"].startswith("other (msrla")
    reference = create_model(f"hf:{folders['rad_dino']}", 2, pretrained=True)
    key = "tower.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.state_dict()[key], reference.state_dict()[key])
