"""``open_clip:<folder | hf-hub:id | name>``: the image towers of open_clip models.

BiomedCLIP's family and the CLIP-style chest X-ray models (CheXzero was trained as an OpenAI
CLIP ViT-B/32) ship as an ``open_clip_config.json`` (``model_cfg`` with its ``vision_cfg``, and
``preprocess_cfg``) beside ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``.
Only the image tower is built (no text tower: nothing to download for a PubMedBERT text
encoder), from ``vision_cfg``, and only its ``visual.*`` weights are loaded. Its output is the
projected image embedding, the one the contrastive training aligned with text.

``open_clip:ViT-B-16`` (an architecture open_clip ships, no folder) builds random weights with
``model.pretrained=false``; pretrained weights need a folder or an ``hf-hub:`` id. The towers
have fixed position embeddings: they take their native input size only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cxrkit.errors import UserError
from cxrkit.models.encoder_spec import EncoderSpec, Family, folder_licence
from cxrkit.models.hub import hub_snapshot, looks_like_path

CONFIG = "open_clip_config.json"
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENAI = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
HUB = "hf-hub:"


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise UserError(
            "open_clip: backbones need the open_clip_torch package: "
            "pip install 'cxrkit[foundation]'"
        ) from None
    return open_clip


def resolve(source: str) -> Path | str:
    """The model folder of ``source``, or the name of an architecture open_clip ships."""
    if source.startswith(HUB):
        folder = hub_snapshot(source[len(HUB) :], f"open_clip:{HUB}")
    else:
        folder = Path(source).expanduser()
        if not folder.exists() and not looks_like_path(source):
            if source in _open_clip().list_models():
                return source
            raise UserError(
                f"open_clip:{source} is neither a folder nor an architecture open_clip ships "
                "(see open_clip.list_models()); for a Hub model write open_clip:hf-hub:org/name"
            )
    if not (folder / CONFIG).is_file():
        raise UserError(
            f"open_clip:{source} ({folder}) is not an open_clip model folder: no {CONFIG}"
        )
    return folder


def _read_config(folder: Path, source: str) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"open_clip:{source}: {CONFIG} is not valid JSON: {err}") from None
    if not isinstance(config.get("model_cfg"), dict) or "vision_cfg" not in config["model_cfg"]:
        raise UserError(f"open_clip:{source}: {CONFIG} has no model_cfg.vision_cfg")
    return config


def _visual_state(folder: Path, source: str) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of the folder's weights, with that prefix removed."""
    path = next((folder / n for n in WEIGHTS if (folder / n).is_file()), None)
    if path is None:
        raise UserError(f"open_clip:{source}: {folder} holds none of {', '.join(WEIGHTS)}")
    try:
        state = (
            load_file(path)
            if path.suffix == ".safetensors"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
    except (SafetensorError, RuntimeError, OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable weights file: {err}") from None
    state = state.get("state_dict", state)
    return {
        k.removeprefix("module.")[len("visual.") :]: v
        for k, v in state.items()
        if k.removeprefix("module.").startswith("visual.")
    }


def load(source: str, pretrained: bool) -> tuple[nn.Module, EncoderSpec]:
    """The image tower of ``source`` and its spec (weights from the folder if ``pretrained``)."""
    where = resolve(source)
    if isinstance(where, str):
        if pretrained:
            raise UserError(
                f"open_clip:{source} names an architecture only; for pretrained weights give a "
                "model folder or open_clip:hf-hub:org/name, or set model.pretrained=false"
            )
        config = {"model_cfg": _open_clip().get_model_config(where)}
        licence = "random weights (architecture only)"
    else:
        config = _read_config(where, source)
        licence = folder_licence(where)
    spec, tower = _spec(config, source, licence)
    if pretrained and isinstance(where, Path):
        missing, unexpected = tower.load_state_dict(_visual_state(where, source), strict=False)
        if missing or unexpected:
            raise UserError(
                f"open_clip:{source}: the weights do not fit its {CONFIG} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    return tower.eval(), spec


def _spec(config: dict[str, Any], source: str, licence: str) -> tuple[EncoderSpec, nn.Module]:
    """The spec of an open_clip config and its tower (random weights), built once."""
    model_cfg = dict(config["model_cfg"])
    vision = dict(model_cfg["vision_cfg"], timm_model_pretrained=False)  # weights come after
    model_cfg["vision_cfg"] = vision
    pre = config.get("preprocess_cfg") or {}
    mean, std = pre.get("mean"), pre.get("std")
    where = CONFIG + " preprocess_cfg"
    if not (isinstance(mean, list) and isinstance(std, list)):
        mean, std = OPENAI
        where = "the OpenAI CLIP default (no preprocess_cfg)"
    timm_name = vision.get("timm_model_name")
    spec = EncoderSpec(
        family="open_clip",
        source=source,
        architecture=f"timm {timm_name}" if timm_name else "open_clip VisionTransformer",
        config=model_cfg,
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        normalization_source=where,
        native_size=0,
        patch_size=0,
        prefix_tokens=1,
        pooling="the tower's projected image embedding",
        cam_layer="",
        licence=licence,
        extra={"embed_dim": int(model_cfg["embed_dim"])},
    )
    tower = build(spec)
    _fill_geometry(spec, tower)
    return spec, tower


def _fill_geometry(spec: EncoderSpec, tower: nn.Module) -> None:
    """Native size, patch size and prefix tokens, read off the built tower."""
    trunk = getattr(tower, "trunk", None)
    if trunk is not None:  # a timm ViT inside open_clip's TimmModel
        if not hasattr(trunk, "blocks") or not hasattr(trunk, "patch_embed"):
            raise UserError(f"open_clip:{spec.source}: only ViT image towers are supported")
        spec.native_size = int(trunk.patch_embed.img_size[0])
        spec.patch_size = int(trunk.patch_embed.patch_size[0])
        spec.prefix_tokens = int(trunk.num_prefix_tokens)
    elif hasattr(tower, "transformer") and hasattr(tower, "grid_size"):
        spec.native_size = int(tower.image_size[0])
        spec.patch_size = int(tower.patch_size[0])
        spec.prefix_tokens = int(getattr(tower, "class_embedding", None) is not None)
    else:
        raise UserError(f"open_clip:{spec.source}: only ViT image towers are supported")


def build(spec: EncoderSpec) -> nn.Module:
    """The image tower of ``spec`` with random weights."""
    model_cfg = spec.config
    return (
        _open_clip()
        .model._build_vision_tower(
            model_cfg["embed_dim"], model_cfg["vision_cfg"], model_cfg.get("quick_gelu", False)
        )
        .eval()
    )


def embed(tower: nn.Module, spec: EncoderSpec, pixels: torch.Tensor) -> torch.Tensor:
    """``(N, 3, S, S)`` normalised at the native size -> ``(N, embed_dim)``."""
    if pixels.shape[-1] != spec.native_size or pixels.shape[-2] != spec.native_size:
        raise UserError(
            f"open_clip:{spec.source} takes {spec.native_size} px inputs only (fixed position "
            f"embeddings), got {pixels.shape[-1]}; set data.image_size={spec.native_size}"
        )
    return tower(pixels)


FAMILY = Family(resolve=resolve, load=load, build=build, embed=embed)
