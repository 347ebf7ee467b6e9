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
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
from torch import nn

from cxrkit.errors import UserError, did_you_mean


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its local cache only (no 50 s of retries without network)."""
    import huggingface_hub.constants as hc

    before = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = before


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

    Raises a UserError listing the closest names for an unknown backbone, and one explaining
    what to do when pretrained weights cannot be fetched (no network, nothing cached).
    """
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
    """A UserError listing the closest timm names when ``backbone`` is not a timm model."""
    if backbone not in timm.list_models(pretrained=False):
        raise did_you_mean(backbone, timm.list_models(), what="backbone")


def _create(backbone: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model, with an actionable error when pretrained weights are unavailable."""
    if not pretrained:
        return timm.create_model(backbone, pretrained=False, **kwargs)
    online = _hub_reachable()
    try:
        with contextlib.nullcontext() if online else _hub_offline():
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


def cpu_has_native_bf16() -> bool:
    """True on CPUs with native bf16 math (AVX512-BF16 or AMX), where bf16 autocast is fast."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags
