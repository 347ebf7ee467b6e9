"""Tiny foundation-encoder folders, built offline from configs (two layers, 64 px, patch 8),
saved the way the real ones ship: ``save_pretrained`` for transformers models (a full SigLIP or
CLIP model with its text tower, as the Hub has them), ``open_clip_config.json`` +
``open_clip_model.safetensors`` for open_clip. No test downloads anything."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SIZE = 64
PATCH = 8
VISION = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": PATCH,
    "image_size": SIZE,
}
TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 100,
}
README = "---\nlicense: other\nlicense_name: msrla\nlicense_link: https://example.org/msrla\n---\n"
MEAN, STD = [0.53, 0.53, 0.53], [0.26, 0.26, 0.26]


def write_hf(folder: Path, kind: str) -> Path:
    """A tiny ``dinov2`` / ``dinov2_with_registers`` / ``siglip`` / ``clip`` model folder."""
    import transformers as tr

    torch.manual_seed(0)
    if kind == "dinov2":
        model = tr.Dinov2Model(tr.Dinov2Config(**VISION))
    elif kind == "dinov2_with_registers":
        config = tr.Dinov2WithRegistersConfig(**VISION, num_register_tokens=4)
        model = tr.Dinov2WithRegistersModel(config)
    elif kind == "siglip":
        model = tr.SiglipModel(tr.SiglipConfig(vision_config=VISION, text_config=TEXT))
    elif kind == "clip":
        model = tr.CLIPModel(tr.CLIPConfig(vision_config=VISION, text_config=TEXT))
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    return folder


def write_rad_dino_like(folder: Path) -> Path:
    """A DINOv2 folder with what RAD-DINO ships besides: a licence in its README's front matter
    and its own normalisation in ``preprocessor_config.json``."""
    write_hf(folder, "dinov2")
    (folder / "README.md").write_text(README + "# tiny\n")
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": MEAN, "image_std": STD, "size": {"shortest_edge": SIZE}})
    )
    return folder


def write_open_clip(folder: Path, *, timm_tower: bool = False) -> Path:
    """A tiny open_clip folder: a native ViT tower (64 px) or a timm ViT one (224 px)."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    if timm_tower:
        vision = {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        }
    else:
        vision = {"image_size": SIZE, "layers": 2, "width": 32, "patch_size": PATCH}
        vision["head_width"] = 16
    text = {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
    cfg = {"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}
    model = CLIP(**cfg)
    folder.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    pre = {"mean": MEAN, "std": STD}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": pre})
    )
    return folder
