"""Foundation encoders as backbones: ``hf:<id or folder>`` and ``open_clip:<name or folder>``.

A chest X-ray foundation encoder (RAD-DINO, a DINOv2 ViT-B; MedSigLIP; BiomedCLIP; CLIP-style
models) becomes a cxrkit network by :class:`EncoderNet`: the vision tower, its own per-channel
normalisation and a linear multilabel head. It keeps the input convention of every cxrkit model
(``(N, 1, S, S)`` float; here in [0, 1], the card's scalar ``mean`` 0 and ``std`` 1) and does
the rest itself: the gray image is replicated to three channels and normalised with the
encoder's own RGB mean and std. It offers the timm interface the rest of cxrkit uses
(``forward_features``, ``forward_head(pre_logits=...)``, ``num_features``,
``get_classifier()``), so training, inference, the input gate, embeddings and CAMs take it
unchanged.

Everything needed to rebuild the network without its source folder lives in the model card's
``encoder`` section (:meth:`EncoderSpec.to_card`): the family, the source, the tower's full
config, the normalisation and where it came from, the native input size, the patch size, the
prefix (class/register) tokens, the pooling, the CAM layer and the licence string the model
ships with. The families themselves (:mod:`~cxrkit.models.hf_encoders`,
:mod:`~cxrkit.models.openclip_encoders`) know how to find, build and run their towers.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from cxrkit.errors import UserError, did_you_mean
from cxrkit.models.encoder_spec import EncoderSpec, Family

#: backbone prefixes of the encoder families, e.g. ``hf:microsoft/rad-dino``
PREFIXES = ("hf:", "open_clip:")


def _family(name: str) -> Family:
    if name == "hf":
        from cxrkit.models.hf_encoders import FAMILY
    elif name == "open_clip":
        from cxrkit.models.openclip_encoders import FAMILY
    else:
        raise did_you_mean(name, [p.rstrip(":") for p in PREFIXES], what="encoder family")
    return FAMILY


def is_encoder(backbone: str) -> bool:
    """Whether ``backbone`` names a foundation encoder rather than a timm model."""
    return backbone.startswith(PREFIXES)


def split_backbone(backbone: str) -> tuple[str, str]:
    """``"hf:microsoft/rad-dino"`` -> ``("hf", "microsoft/rad-dino")``."""
    family, _, source = backbone.partition(":")
    if not source:
        raise UserError(f"backbone {backbone!r} names no model after {family}:")
    return family, source


class EncoderNet(nn.Module):
    """A vision tower + linear head: ``(N, 1, S, S)`` in [0, 1] -> logits ``(N, C)``."""

    def __init__(
        self, tower: nn.Module, spec: EncoderSpec, num_classes: int, drop_rate: float = 0.0
    ):
        super().__init__()
        self.tower = tower
        self.spec = spec
        self.embed_fn = _family(spec.family).embed
        self.register_buffer("rgb_mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self.num_features = int(spec.extra["embed_dim"])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        # The card's scalar normalisation: [0, 1] inputs; the RGB one happens in forward.
        # The native input size is the default where a command picks one (``embed``).
        self.pretrained_cfg = {
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "input_size": (1, spec.native_size, spec.native_size),
        }
        spec.cam_layer = last_block_norm(tower, spec)
        self.cam_target = f"tower.{spec.cam_layer}"
        self.num_prefix_tokens = spec.prefix_tokens

    @property
    def card_fields(self) -> dict[str, Any]:
        """The card's ``encoder`` section and ``licence`` (:func:`encoder_card_fields`)."""
        return {"encoder": self.spec.to_card(), "licence": self.spec.licence}

    def patch_grid(self, input_size: int) -> tuple[int, int]:
        """The patch-token grid ``(H, W)`` at ``input_size``."""
        side = input_size // self.spec.patch_size
        return side, side

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` in [0, 1] -> ``(N, D)`` pooled embedding."""
        if x.shape[-1] % self.spec.patch_size or x.shape[-2] % self.spec.patch_size:
            raise UserError(
                f"input {x.shape[-2]} x {x.shape[-1]} px is not a multiple of the encoder's "
                f"patch size {self.spec.patch_size}; set data.image_size to a multiple, e.g. "
                f"{self.spec.native_size}"
            )
        rgb = (x.expand(-1, 3, -1, -1) - self.rgb_mean) / self.rgb_std
        return self.embed_fn(self.tower, self.spec, rgb)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(N, D)`` -> logits ``(N, C)``, or the features themselves with ``pre_logits``."""
        return features if pre_logits else self.head(self.head_drop(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head


def last_block_norm(tower: nn.Module, spec: EncoderSpec) -> str:
    """The name (in ``tower``) of the last transformer block's first layer norm, whose output
    tokens a CAM reshapes: ``encoder.layer.11.norm1`` (DINOv2), ``...layers.11.layer_norm1``
    (CLIP, SigLIP), ``transformer.resblocks.11.ln_1`` / ``trunk.blocks.11.norm1`` (open_clip).
    Found by name pattern, so that it follows the library's module layout of the day."""
    found = [
        (int(m.group(1)), name)
        for name, _ in tower.named_modules()
        if (m := re.search(r"(?:^|\.)(\d+)\.(?:norm1|layer_norm1|ln_1)$", name))
    ]
    if not found:
        raise UserError(f"{spec.family}:{spec.source}: no transformer block found for CAMs")
    return max(found)[1]


def check_encoder(backbone: str) -> None:
    """Fail early (a UserError) when the encoder's source cannot be found; loads nothing."""
    family, source = split_backbone(backbone)
    _family(family).resolve(source)


def create_encoder(
    backbone: str, num_classes: int, *, pretrained: bool = True, drop_rate: float = 0.0
) -> EncoderNet:
    """The encoder ``backbone`` (``hf:...`` / ``open_clip:...``) with a new head; its weights
    from the source folder or cache (``pretrained``), else random from its config."""
    family, source = split_backbone(backbone)
    tower, spec = _family(family).load(source, pretrained)
    return EncoderNet(tower, spec, num_classes, drop_rate)


def encoder_from_card(values: dict[str, Any], num_classes: int) -> EncoderNet:
    """The network of a card's ``encoder`` section, random weights (a state dict follows)."""
    spec = EncoderSpec.from_card(values)
    return EncoderNet(_family(spec.family).build(spec), spec, num_classes)
