"""``hf:<id or folder>``: vision encoders from Hugging Face ``transformers``.

DINOv2 (RAD-DINO's architecture, with or without register tokens), SigLIP (MedSigLIP) and CLIP
vision towers. A folder is anything ``save_pretrained`` wrote or the Hub holds (``config.json``
and weights); an id ``org/name`` is looked up in the Hugging Face cache first
(:func:`cxrkit.models.hub.hub_snapshot`). For a full SigLIP/CLIP model only the vision tower
is kept. The normalisation comes from the folder's ``preprocessor_config.json`` when it has
one, else from the family's published default; the card says which.

Pooling, as each model card recommends for linear probes: DINOv2's ``pooler_output`` (the
layer-normed CLS token), CLIP's (the post-layernormed CLS token), SigLIP's attention-pooling
head (the mean of the patch tokens when the model has no head). DINOv2 interpolates its
position embeddings to any multiple of the patch size; CLIP and SigLIP are run with
``interpolate_pos_encoding`` when the input size is not their native one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from cxrkit.errors import UserError
from cxrkit.models.encoder_spec import EncoderSpec, Family, folder_licence
from cxrkit.models.hub import hub_snapshot, looks_like_path

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
OPENAI_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
HALF = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])

#: model_type -> (vision class in transformers, default normalisation, position embeddings
#: interpolated on request)
TOWERS: dict[str, tuple[str, tuple[list[float], list[float]], bool]] = {
    "dinov2": ("Dinov2Model", IMAGENET, False),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", IMAGENET, False),
    "siglip": ("SiglipVisionModel", HALF, True),
    "clip": ("CLIPVisionModel", OPENAI_CLIP, True),
}
ALIASES = {"siglip_vision_model": "siglip", "clip_vision_model": "clip"}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers without its per-key loading report (cxrkit checks the keys itself)."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(
            "hf: backbones need the transformers package: pip install 'cxrkit[foundation]'"
        ) from None
    return transformers


def resolve(source: str) -> Path:
    """The model folder of ``source``: a local folder, or a Hub id from the cache."""
    path = Path(source).expanduser()
    if path.exists() or looks_like_path(source):
        if not path.is_dir():
            raise UserError(
                f"hf:{source}: {'not a folder' if path.exists() else 'no such folder'}; "
                "expected a Hugging Face model folder (config.json + weights) or a Hub id org/name"
            )
        folder = path
    else:
        folder = hub_snapshot(source, "hf:")
    if not (folder / "config.json").is_file():
        raise UserError(
            f"hf:{source} ({folder}) is not a Hugging Face model folder: no config.json "
            "(expected what save_pretrained writes or a Hub download)"
        )
    return folder


def _model_type(folder: Path, source: str) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"hf:{source}: config.json is not valid JSON: {err}") from None
    kind = ALIASES.get(config.get("model_type", ""), config.get("model_type", ""))
    if kind not in TOWERS:
        raise UserError(
            f"hf:{source} is a {kind or 'model without model_type'!r} model; cxrkit takes "
            f"these vision encoders: {', '.join(sorted(TOWERS))} (and their vision towers)"
        )
    return kind


def _normalization(folder: Path, kind: str) -> tuple[list[float], list[float], str]:
    """``(mean, std, where from)`` for [0, 1] RGB inputs."""
    path = folder / "preprocessor_config.json"
    if path.is_file():
        try:
            pre = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            pre = {}
        mean, std = pre.get("image_mean"), pre.get("image_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
            return [float(v) for v in mean], [float(v) for v in std], "preprocessor_config.json"
    mean, std = TOWERS[kind][1]
    return list(mean), list(std), f"the {kind} default (no preprocessor_config.json)"


def _tower_class(kind: str) -> type[nn.Module]:
    return getattr(_transformers(), TOWERS[kind][0])


def load(source: str, pretrained: bool) -> tuple[nn.Module, EncoderSpec]:
    """The vision tower of ``source`` (its weights, or random ones from its config) and spec."""
    folder = resolve(source)
    kind = _model_type(folder, source)
    cls = _tower_class(kind)
    with _quiet():
        if pretrained:
            try:
                tower, info = cls.from_pretrained(folder, output_loading_info=True)
            except (OSError, ValueError, RuntimeError, SafetensorError) as err:
                raise UserError(
                    f"hf:{source}: could not read the weights in {folder} "
                    f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                ) from None
            if info.get("missing_keys"):
                missing = sorted(info["missing_keys"])
                raise UserError(
                    f"hf:{source}: the weights lack {len(missing)} of the vision tower's "
                    f"tensors (e.g. {missing[0]}); is the folder complete?"
                )
        else:
            config = cls.config_class.from_pretrained(folder)
            tower = cls(config)
    mean, std, where = _normalization(folder, kind)
    spec = _spec(tower, kind, source, mean, std, where, folder_licence(folder))
    return tower.eval(), spec


def _spec(
    tower: nn.Module,
    kind: str,
    source: str,
    mean: list[float],
    std: list[float],
    where: str,
    licence: str,
) -> EncoderSpec:
    config = tower.config
    prefix = {"siglip": 0, "clip": 1}.get(kind, 1 + int(getattr(config, "num_register_tokens", 0)))
    has_head = kind != "siglip" or bool(getattr(config, "vision_use_head", True))
    pooling = {
        "siglip": "attention-pooling head" if has_head else "mean of the patch tokens",
        "clip": "post-layernormed CLS token",
    }.get(kind, "layer-normed CLS token")
    return EncoderSpec(
        family="hf",
        source=source,
        architecture=kind,
        config=json.loads(json.dumps(config.to_dict(), default=str)),  # plain data only
        mean=mean,
        std=std,
        normalization_source=where,
        native_size=int(config.image_size),
        patch_size=int(config.patch_size),
        prefix_tokens=prefix,
        pooling=pooling,
        cam_layer="",
        licence=licence,
        extra={"embed_dim": int(config.hidden_size), "tower_class": TOWERS[kind][0]},
    )


def build(spec: EncoderSpec) -> nn.Module:
    """The tower of ``spec`` with random weights, from the config stored in the card."""
    cls = _tower_class(spec.architecture)
    config = {k: v for k, v in spec.config.items() if k not in ("transformers_version",)}
    with _quiet():
        return cls(cls.config_class.from_dict(config)).eval()


def embed(tower: nn.Module, spec: EncoderSpec, pixels: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` normalised -> ``(N, D)`` pooled (see the module docstring)."""
    kwargs: dict[str, Any] = {}
    if TOWERS[spec.architecture][2] and pixels.shape[-1] != spec.native_size:
        kwargs["interpolate_pos_encoding"] = True
    out = tower(pixel_values=pixels, **kwargs)
    if out.pooler_output is not None:
        return out.pooler_output
    return out.last_hidden_state[:, spec.prefix_tokens :].mean(dim=1)


FAMILY = Family(resolve=resolve, load=load, build=build, embed=embed)
