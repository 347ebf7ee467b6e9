"""Backbones over timm with a multilabel head on one-channel (grayscale) input.

Input convention: ``(N, 1, H, W)`` float, the uint8 image divided by 255 then normalised with
the *mean over RGB* of the backbone's pretrained mean and std. With ``in_chans=1`` timm sums
the pretrained first convolution's RGB kernels, so the network computes what the RGB model
computes on the gray image replicated to three channels, up to the small differences between
the three per-channel normalisations. ``forward`` returns logits ``(N, n_findings)``; sigmoid,
calibration and thresholds are explicit later steps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import timm
from torch import nn

from cxrkit.errors import UserError, did_you_mean
from cxrkit.models.encoders import check_encoder, create_encoder, is_encoder
from cxrkit.models.hub import hub_offline, hub_reachable


def create_model(
    backbone: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    drop_rate: float = 0.0,
    output_stride: int = 32,
) -> nn.Module:
    """A timm ``backbone`` with a new ``num_classes`` head and a one-channel stem.

    ``output_stride`` 16 or 8 dilates the last stage(s) instead of striding them (same weights,
    a 2x or 4x finer last feature map, so finer class-activation maps); 32 is the default.

    ``hf:<id or folder>`` and ``open_clip:<name or folder>`` are foundation encoders
    (:mod:`cxrkit.models.encoders`): their weights come from the folder or the Hugging Face
    cache when ``pretrained``, and they have no ``output_stride``.

    Raises a UserError listing the closest names for an unknown backbone, and one explaining
    what to do when pretrained weights cannot be fetched (no network, nothing cached).
    """
    if is_encoder(backbone):
        if output_stride != 32:
            raise UserError(
                f"model.output_stride={output_stride} applies to CNNs; {backbone} is a "
                "transformer encoder: leave it at 32"
            )
        return create_encoder(backbone, num_classes, pretrained=pretrained, drop_rate=drop_rate)
    check_backbone(backbone)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": 1, "drop_rate": drop_rate}
    if output_stride != 32:
        if output_stride not in (8, 16):
            raise UserError(f"model.output_stride must be 32, 16 or 8, got {output_stride}")
        kwargs["output_stride"] = output_stride
    try:
        return _create(backbone, pretrained, kwargs)
    except TypeError as err:
        if "output_stride" not in str(err):
            raise
        raise UserError(
            f"backbone {backbone!r} does not support model.output_stride={output_stride}; "
            "leave it at 32 or pick a ResNet/ConvNeXt/EfficientNet-style timm model"
        ) from None


def check_backbone(backbone: str) -> None:
    """A UserError listing the closest timm names when ``backbone`` is not a timm model, or
    saying what is missing when a foundation encoder's source cannot be found."""
    if is_encoder(backbone):
        check_encoder(backbone)
        return
    if backbone not in timm.list_models(pretrained=False):
        raise did_you_mean(backbone, timm.list_models(), what="backbone")


def _create(backbone: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model, with an actionable error when pretrained weights are unavailable."""
    if not pretrained:
        return timm.create_model(backbone, pretrained=False, **kwargs)
    online = hub_reachable()
    try:
        with contextlib.nullcontext() if online else hub_offline():
            return timm.create_model(backbone, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(
            f"could not load pretrained ImageNet weights for {backbone!r} "
            f"({'download failed' if online else 'no network and not in the local cache'}: "
            f"{type(err).__name__}). Either train from scratch with "
            "`--set model.pretrained=false`, or on a machine with network run "
            f"`python -c \"import timm; timm.create_model('{backbone}', pretrained=True)\"` "
            "to fill the Hugging Face cache (~/.cache/huggingface) and copy it here"
        ) from None


def encoder_card_fields(model: nn.Module) -> dict[str, Any]:
    """What the model card must hold to rebuild ``model`` without its source folder: the
    ``encoder`` section (config, per-channel normalisation, licence) of a foundation encoder,
    nothing for a timm model (its name is enough)."""
    return dict(getattr(model, "card_fields", {}))


def cpu_has_native_bf16() -> bool:
    """True on CPUs with native bf16 math (AVX512-BF16 or AMX), where bf16 autocast is fast."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags
