"""What a foundation encoder is, as data: the card's ``encoder`` section (:class:`EncoderSpec`),
the four functions an encoder family provides (:class:`Family`), and the licence a model folder
states. Shared by :mod:`~cxrkit.models.encoders` and the families
(:mod:`~cxrkit.models.hf_encoders`, :mod:`~cxrkit.models.openclip_encoders`), which import
nothing else of each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

NO_LICENCE = "not stated in the model folder (check the model's page before any use)"


@dataclass
class EncoderSpec:
    """What the card records of a foundation encoder (``card["encoder"]``).

    ``config`` is the tower's own config (enough to rebuild it with random weights),
    ``mean``/``std`` the RGB normalisation for [0, 1] inputs, ``native_size`` the input size it
    was trained at, ``prefix_tokens`` the class/register tokens before the patch tokens and
    ``cam_layer`` the module (inside the tower) whose output tokens a CAM reshapes to the grid.
    """

    family: str  # "hf" or "open_clip"
    source: str  # what the user gave after the prefix
    architecture: str  # e.g. "dinov2", "siglip_vision_model", "open_clip native ViT"
    config: dict[str, Any]
    mean: list[float]
    std: list[float]
    normalization_source: str
    native_size: int
    patch_size: int
    prefix_tokens: int
    pooling: str
    cam_layer: str
    licence: str
    channels: str = "gray replicated to 3 channels, then the encoder's per-channel mean/std"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_card(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_card(cls, values: dict[str, Any]) -> EncoderSpec:
        return cls(**values)


@dataclass(frozen=True)
class Family:
    """One encoder family: find a source (``resolve``: a UserError when it can't), build its
    tower with random weights from a spec (``build``), load a tower and its spec from a source
    (``load``), and embed ``(N, 3, H, W)`` normalised pixels to ``(N, D)`` (``embed``)."""

    resolve: Callable[[str], object]
    load: Callable[[str, bool], tuple[nn.Module, EncoderSpec]]
    build: Callable[[EncoderSpec], nn.Module]
    embed: Callable[[nn.Module, EncoderSpec, torch.Tensor], torch.Tensor]


def folder_licence(folder: Path) -> str:
    """The licence a Hugging Face style model folder states in its README's front matter
    (``license``, with ``license_name``/``license_link`` when given), else :data:`NO_LICENCE`."""
    readme = folder / "README.md"
    if not readme.is_file():
        return NO_LICENCE
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return NO_LICENCE
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return NO_LICENCE
    if not isinstance(meta, dict) or not meta.get("license"):
        return NO_LICENCE
    parts = [str(meta["license"])]
    parts += [str(meta[k]) for k in ("license_name", "license_link") if meta.get(k)]
    return " ".join([parts[0], f"({', '.join(parts[1:])})"] if len(parts) > 1 else parts)
