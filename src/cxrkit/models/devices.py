"""Where a model runs and in what precision: ``--device`` and ``--precision``, resolved once.

``--device auto|cpu|cuda|cuda:N|mps``: ``auto`` picks the first CUDA GPU when one is visible,
then Apple's MPS, then the CPU; ``cuda`` is the current CUDA device (``cuda:0`` unless
``torch.cuda.set_device`` said otherwise). A device this machine does not have, or a value
that is none of these, is a :class:`~cxrkit.errors.UserError` of one line saying what is
there and what to pass instead.

``--precision auto|fp32|bf16|fp16`` (the dtype of autocast; fp32 runs without it):

* ``auto``: bf16 on a CUDA GPU that supports it (Ampere and later), else fp16; on the CPU bf16
  where it has native bf16 math (:func:`cxrkit.models.backbones.cpu_has_native_bf16`), else
  fp32; fp16 on MPS.
* ``fp16`` on the CPU is refused (float16 autocast on a CPU is slow, and not what is meant);
  ``bf16`` on a CUDA GPU without bf16 support is refused.

The commands that run a model (``eval --checkpoint``, ``infer``, ``cam``, ``serve``,
``bench infer``) resolve both through :func:`resolve_runtime` (via the
:class:`~cxrkit.deploy.predictor.Predictor`) and print :meth:`Runtime.line`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from cxrkit.errors import UserError, did_you_mean
from cxrkit.models.backbones import cpu_has_native_bf16

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: the autocast dtype of each precision; fp32 runs without autocast
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CUDA = re.compile(r"cuda(?::(\d+))?")


@dataclass(frozen=True)
class Runtime:
    """A resolved device and precision, and why that precision (``auto: ...`` or ``asked``)."""

    device: torch.device
    precision: str
    reason: str

    def line(self) -> str:
        """``device cpu, precision bf16 (auto: native bf16)``: what each command prints."""
        return f"device {self.device}, precision {self.precision} ({self.reason})"


def _no_cuda(text: str) -> UserError:
    seen = "built without CUDA" if torch.version.cuda is None else "sees no device"
    return UserError(
        f"--device {text}: this machine has no CUDA GPU (torch {torch.__version__} {seen}; "
        "check nvidia-smi and CUDA_VISIBLE_DEVICES); use --device cpu or auto"
    )


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(text: str | torch.device) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` (or a ``torch.device``) -> the device, checked
    to exist here; a one-line UserError otherwise."""
    text = str(text).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise UserError(
                "--device mps: Apple's Metal (MPS) is not available here (it needs a Mac with "
                "Apple silicon and a torch built with MPS); use --device cpu or auto"
            )
        return torch.device("mps")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise did_you_mean(text, DEVICES, what="--device")
    if not torch.cuda.is_available():
        raise _no_cuda(text)
    index = torch.cuda.current_device() if match.group(1) is None else int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        there = (
            "1 CUDA GPU, cuda:0" if count == 1 else f"{count} CUDA GPUs, cuda:0 to cuda:{count - 1}"
        )
        raise UserError(
            f"--device {text}: this machine has {there}; use one of those or --device auto"
        )
    return torch.device("cuda", index)


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``--precision auto`` picks on ``device``, and why: ``("bf16", "auto: native bf16")``."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: GPU with bf16"
        return "fp16", "auto: GPU without bf16"
    if device.type == "mps":
        return "fp16", "auto: MPS"
    if cpu_has_native_bf16():
        return "bf16", "auto: native bf16"
    return "fp32", "auto: no native bf16 on this CPU"


def resolve_precision(text: str, device: torch.device) -> str:
    """``auto``/``fp32``/``bf16``/``fp16`` on ``device`` -> ``fp32``, ``bf16`` or ``fp16``;
    a one-line UserError for fp16 on the CPU, bf16 on a GPU without it, or an unknown name."""
    text = text.strip().lower()
    if text not in PRECISIONS:
        raise did_you_mean(text, PRECISIONS, what="--precision")
    if text == "auto":
        return auto_precision(device)[0]
    if text == "fp16" and device.type == "cpu":
        raise UserError(
            "--precision fp16 on the CPU: float16 autocast is slow on CPUs and not what is meant; "
            f"use --precision auto ({auto_precision(device)[0]} here), bf16 or fp32, or a GPU"
        )
    if text == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
            "use --precision fp16 or auto"
        )
    return text


def resolve_runtime(device: str | torch.device = "auto", precision: str = "auto") -> Runtime:
    """Both flags at once (device first: the precision depends on it)."""
    resolved = resolve_device(device)
    chosen = resolve_precision(precision, resolved)
    reason = auto_precision(resolved)[1] if precision.strip().lower() == "auto" else "asked"
    return Runtime(resolved, chosen, reason)
