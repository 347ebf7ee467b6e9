"""Inference backends: what turns a normalised float batch into logits for a Predictor.

A backend is any callable ``(N, 1, S, S)`` normalised float tensor -> ``(N, C)`` logits, with
a method ``with_features(x) -> ((N, C) logits, (N, D) features or None)``: the penultimate
features (pooled, pre-logits) of the same forward pass, which the input gate
(:mod:`cxrkit.models.gate`) scores:

* PyTorch: timm's ``forward_features`` then ``forward_head`` twice (``pre_logits=True`` for the
  features, the plain head for the logits), so one pass through the network gives both.
* ONNX / OpenVINO: the bundle's ONNX files have a second output ``features``
  (:mod:`cxrkit.deploy.export` writes it), read from the same inference. A bundle exported
  before that output existed has ``logits`` only: ``with_features`` then returns None and the
  :class:`~cxrkit.deploy.predictor.Predictor` computes the features with the PyTorch weights the
  bundle also carries (a second forward pass). The int8 files' features are quantised too.

The backends:

* ``auto`` (default): ``onnx`` for a bundle that has ``model.onnx`` when running fp32 on the
  CPU (``--precision auto`` on a CPU without native bf16; onnxruntime ran DenseNet121 about
  1.5x faster than PyTorch fp32 on the 2-core benchmark machine, docs/benchmarks.md), else
  ``torch`` (always on a GPU). For a checkpoint file in that same case (:func:`copy_applies`),
  a :class:`~cxrkit.deploy.predictor.Predictor` made with ``onnx_copy=True`` (``cxrkit
  infer``) runs an ONNX copy exported once beside it (:mod:`cxrkit.deploy.onnx_cache`) and
  records the backend as ``onnx``.
* ``torch``: the PyTorch module itself, on the predictor's device.
* ``onnx``: the bundle's ``model.onnx`` under onnxruntime's CPU provider.
* ``onnx-int8``: the bundle's ``model.int8.onnx`` (``export --quantize static|dynamic``) under
  onnxruntime.
* ``openvino`` / ``openvino-int8``: the same files under OpenVINO's CPU runtime (the
  ``openvino`` extra). With a static int8 file this was the fastest CPU path measured, about
  1.4x onnxruntime fp32 for DenseNet121 on 2 AVX2 cores (docs/benchmarks.md); onnxruntime's
  int8 kernels gained little there.

The ONNX and OpenVINO backends run on the CPU only: asked for with a GPU ``--device`` they are
refused (one line). They need a bundle folder (``cxrkit export``) whose card lists the file,
so the file was checked against its sha256 when the bundle was loaded.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrkit.errors import UserError, did_you_mean
from cxrkit.models.checkpoint import LoadedModel

Backend = Callable[[torch.Tensor], torch.Tensor]
Both = tuple[torch.Tensor, torch.Tensor | None]
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ONNX_FILES = {
    "onnx": ONNX_FILE,
    "onnx-int8": INT8_FILE,
    "openvino": ONNX_FILE,
    "openvino-int8": INT8_FILE,
}
BACKENDS = ("auto", "torch", *ONNX_FILES)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


#: decoding processes at most by default: on the CPU the model needs the cores; on a GPU the
#: decoders are what keeps it fed, so they get every core but the main loop's, up to this many
MAX_DEFAULT_WORKERS = {"cpu": 4, "cuda": 16}


def default_workers(device: torch.device, processes: int = 1) -> int:
    """``infer --workers``' default on ``device``, the total for ``processes`` prediction
    processes on this machine (``--devices N``, a launcher's local ranks), which divide it:
    on the CPU cores - 2 (at most 4; none on 2 cores, where background threads decode faster);
    on CUDA each process's share of the cores less its main loop (at most 16 per GPU)."""
    cores = usable_cores()
    if device.type == "cuda":
        each = max(0, min(MAX_DEFAULT_WORKERS["cuda"], cores // processes - 1))
        return each * processes
    return max(0, min(MAX_DEFAULT_WORKERS["cpu"], cores - 2))


class TorchBackend:
    """A timm module: calling it gives logits; :meth:`with_features` logits and features from
    one pass (``forward_features``, then the head with and without ``pre_logits``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def with_features(self, x: torch.Tensor) -> Both:
        """``(N, 1, S, S)`` -> ``(N, C)`` logits and ``(N, D)`` pooled pre-logit features."""
        fmap = self.model.forward_features(x)
        return self.model.forward_head(fmap), self.model.forward_head(fmap, pre_logits=True)


class WithFeatures(nn.Module):
    """``model`` with two outputs, ``(N, C)`` logits and ``(N, D)`` features (what
    :mod:`cxrkit.deploy.export` writes to ONNX as ``logits`` and ``features``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = TorchBackend(self.model).with_features(x)
        assert features is not None
        return logits, features


class ArrayBackend:
    """A runtime over an exported ONNX file: :meth:`run` maps float32 arrays, calling it maps
    torch tensors like the module it replaces."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """``(N, 1, S, S)`` float32 array -> ``(N, C)`` float32 logits."""
        return self.run_both(x)[0]

    def run_both(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(N, 1, S, S)`` float32 -> ``(N, C)`` logits and ``(N, D)`` features (None when the
        file has no ``features`` output)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x.detach().float().cpu().numpy()))

    def with_features(self, x: torch.Tensor) -> Both:
        logits, features = self.run_both(x.detach().float().cpu().numpy())
        return torch.from_numpy(logits), None if features is None else torch.from_numpy(features)


class OnnxBackend(ArrayBackend):
    """An onnxruntime CPU session over an exported ONNX file (input ``input``, output
    ``logits``).

    Its threads sleep instead of spin-waiting between operators, so the cores they leave idle go
    to image decoding (see :func:`cxrkit.deploy.batch.decoded_batches`); model-only speed did not
    change measurably on the 2-core benchmark machine (``spin_wait=True``: onnxruntime's
    default, for that comparison)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, spin_wait: bool = False):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spin_wait)))
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.has_features = len(self.session.get_outputs()) > 1

    def run_both(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return out[0], out[1] if self.has_features else None


class OpenVinoBackend(ArrayBackend):
    """An OpenVINO CPU model compiled from an ONNX file (latency hint: one request uses all
    ``threads``); same interface as :class:`OnnxBackend`. One inference at a time (a lock):
    the request's output buffer is reused, so results are copied out."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise UserError(
                "the openvino backends need OpenVINO: pip install 'cxrkit[openvino]' "
                "(or use --backend onnx / onnx-int8)"
            ) from None
        self.path = Path(path)
        core = ov.Core()
        # f32: on CPUs with native bf16 (AVX512-BF16, AMX) OpenVINO would otherwise run the
        # fp32 graph in bf16 and differ from onnxruntime by ~3e-4; the file decides precision.
        config = {
            "INFERENCE_NUM_THREADS": threads or usable_cores(),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        compiled = core.compile_model(str(self.path), "CPU", config)
        self.has_features = len(compiled.outputs) > 1
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()

    def run_both(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with self.lock:
            out = self.request.infer({0: np.ascontiguousarray(x, np.float32)})
            logits = np.array(out[0], dtype=np.float32, copy=True)
            features = np.array(out[1], dtype=np.float32, copy=True) if self.has_features else None
            return logits, features


def backend_available(name: str) -> bool:
    """False for the openvino backends when OpenVINO is not installed."""
    return not name.startswith("openvino") or importlib.util.find_spec("openvino") is not None


def resolve_backend(name: str, loaded: LoadedModel, device: torch.device, precision: str) -> str:
    """The backend ``name`` stands for on ``device`` at ``precision`` (``fp32``, ``bf16`` or
    ``fp16``): ``auto`` becomes ``onnx`` or ``torch`` (see the module docstring); any other
    name is returned as it is, except an ONNX/OpenVINO one on a GPU (a UserError)."""
    if name != "auto":
        if name in ONNX_FILES and device.type != "cpu":
            raise UserError(
                f"--backend {name} runs on the CPU only, not on --device {device}; use "
                "--backend torch (or auto) on a GPU, or --device cpu"
            )
        return name
    source = loaded.source
    has_onnx = (
        source is not None and source.is_dir() and ONNX_FILE in (loaded.card.get("files") or {})
    )
    return "onnx" if device.type == "cpu" and precision == "fp32" and has_onnx else "torch"


def copy_applies(name: str, loaded: LoadedModel, device: torch.device, precision: str) -> bool:
    """Whether ``--backend name`` would run a checkpoint file's ONNX copy: ``auto`` on the CPU
    at fp32 (where a bundle's ``model.onnx`` would run) with a checkpoint file, not a bundle."""
    source = loaded.source
    is_file = source is not None and source.is_file()
    return name == "auto" and device.type == "cpu" and precision == "fp32" and is_file


def create_backend(name: str, loaded: LoadedModel, model: nn.Module) -> TorchBackend | ArrayBackend:
    """A :class:`TorchBackend` over ``model`` for ``torch``; an :class:`OnnxBackend` or
    :class:`OpenVinoBackend` over the bundle's file otherwise."""
    if name == "torch":
        return TorchBackend(model)
    if name not in ONNX_FILES:
        raise did_you_mean(name, BACKENDS, what="backend")
    file = ONNX_FILES[name]
    source = loaded.source
    if source is None or not source.is_dir():
        raise UserError(
            f"backend {name!r} runs {file} of a bundle folder, but {source} is a checkpoint; "
            "make a bundle with `cxrkit export --checkpoint CKPT --out BUNDLE`"
        )
    if file not in (loaded.card.get("files") or {}):
        hint = "--quantize static" if file == INT8_FILE else "ONNX (without --no-onnx)"
        raise UserError(f"bundle {source} has no {file}; export again with {hint}")
    runtime = OpenVinoBackend if name.startswith("openvino") else OnnxBackend
    return runtime(source / file)
