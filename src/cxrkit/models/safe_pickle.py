"""Reading the tensors out of a pickled PyTorch module without running its code.

Some published weight files (torchxrayvision's DenseNets among them) are a whole
``nn.Module`` pickled by ``torch.save(model)``: ``torch.load(weights_only=True)`` refuses them
and ``weights_only=False`` would run whatever the file names. :func:`read_weights` tries
``weights_only=True`` first (a plain state dict), then unpickles through
:class:`AllowlistUnpickler`, whose ``find_class`` resolves only

* torch's tensor and parameter rebuild functions (storage types, ``torch.FloatStorage`` and the
  like, are resolved by torch's own wrapper before ``find_class``, zip and legacy formats),
  ``collections.OrderedDict``, ``set``, ``torch.Size`` and two inert legacy helpers;
* the module classes such files contain (:data:`MODULE_CLASSES`), each mapped to an inert
  :class:`ModuleStub` subclass that only stores its pickled ``__dict__``: no code of theirs
  runs and neither torchvision nor torchxrayvision is imported.

Any other global raises a :class:`~cxrkit.errors.UserError` naming it and the file.
:func:`stub_state_dict` then walks the stubs' ``_parameters``/``_buffers``/``_modules`` into
the keys ``module.state_dict()`` would have produced.
"""

from __future__ import annotations

import collections
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from cxrkit.errors import UserError

_NN = "torch.nn.modules"
#: module classes that weight files of torchvision / torchxrayvision networks contain
MODULE_CLASSES: frozenset[str] = frozenset(
    [
        *(f"{_NN}.conv.{n}" for n in ("Conv2d",)),
        *(f"{_NN}.batchnorm.{n}" for n in ("BatchNorm2d",)),
        *(f"{_NN}.activation.{n}" for n in ("ReLU",)),
        *(f"{_NN}.pooling.{n}" for n in ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d")),
        *(f"{_NN}.linear.{n}" for n in ("Linear", "Identity")),
        *(f"{_NN}.container.{n}" for n in ("Sequential", "ModuleDict", "ModuleList")),
        *(f"{_NN}.dropout.{n}" for n in ("Dropout",)),
        *(f"{_NN}.flatten.{n}" for n in ("Flatten",)),
        *(
            f"torchvision.models.densenet.{n}"
            for n in ("DenseNet", "_DenseLayer", "_DenseBlock", "_Transition")
        ),
        *(f"torchvision.models.resnet.{n}" for n in ("ResNet", "Bottleneck", "BasicBlock")),
        *(
            f"torchxrayvision.models.{n}"
            for n in ("DenseNet", "_DenseLayer", "_DenseBlock", "_Transition", "ResNet")
        ),
    ]
)

_REBUILDS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter")
_REBUILDS += ("_rebuild_parameter_with_state",)
_PYTHON2 = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # the names protocol 2 writes


class ModuleStub:
    """An unpickled module that is only data: ``qualname`` is the class the file named,
    ``state`` the module's pickled ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``,
    ...). Unpickling calls no method of the real class."""

    qualname = "?"
    dump_patches = False  # torch's legacy loader would write a .patch file for a changed class

    state: Mapping[str, Any] = {}  # set per instance by __setstate__; never mutated

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, Mapping) else {}


def _stub_class(qualname: str) -> type[ModuleStub]:
    module, _, name = qualname.rpartition(".")
    return type(name, (ModuleStub,), {"qualname": qualname, "__module__": module})


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 pickles) for stubs over ``object`` only."""
    if base is not object or not (isinstance(cls, type) and issubclass(cls, ModuleStub)):
        raise pickle.UnpicklingError(f"refused copyreg._reconstructor of {cls!r}")
    return object.__new__(cls)


def _inert() -> None:
    """``torch.nn.backends.thnn._get_thnn_function_backend`` of torch < 1.5 files."""
    return None


def _allowed_functions() -> dict[str, Callable[..., Any]]:
    allowed: dict[str, Callable[..., Any]] = {
        f"torch._utils.{n}": getattr(torch._utils, n) for n in _REBUILDS
    }
    allowed.update(
        {
            "collections.OrderedDict": collections.OrderedDict,
            "builtins.set": set,
            "torch.Size": torch.Size,
            "torch.nn.parameter.Parameter": torch.nn.Parameter,
            "copyreg._reconstructor": _reconstructor,
            "builtins.object": object,
            "torch.nn.backends.thnn._get_thnn_function_backend": _inert,
        }
    )
    return allowed


class RefusedGlobal(UserError):
    """The file names a global outside the allowlist (``qualname``)."""

    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


class AllowlistUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` resolves the allowlist only."""

    _functions = _allowed_functions()
    _stubs = {name: _stub_class(name) for name in MODULE_CLASSES}

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{_PYTHON2.get(module, module)}.{name}"
        found = self._functions.get(qualname) or self._stubs.get(qualname)
        if found is None:
            raise RefusedGlobal(qualname)
        return found


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` uses: ``Unpickler`` and ``load``."""

    __name__ = "cxrkit.models.safe_pickle"
    Unpickler = AllowlistUnpickler

    @staticmethod
    def load(fh: IO[bytes], **kwargs: Any) -> Any:
        return AllowlistUnpickler(fh, **kwargs).load()


@dataclass
class Weights:
    """A weights file's tensors: ``state`` as ``module.state_dict()`` keys them (CPU tensors,
    each of its own shape) and ``container``, what the file held: ``"state dict"`` or the
    pickled module's class (e.g. ``torchxrayvision.models.DenseNet``)."""

    state: dict[str, torch.Tensor]
    container: str


def read_weights(path: str | Path) -> Weights:
    """The tensors of a torch weights file (a state dict, or a pickled module unpickled into
    stubs); one-line UserErrors for a refused global, a non-torch or a truncated file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain state dict: read it through the allowlist
        obj = _allowlist_load(path)
    if isinstance(obj, ModuleStub):
        return Weights(stub_state_dict(obj), obj.qualname)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
        state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if state:
            return Weights(state, "state dict")
    raise UserError(f"{path} holds a {type(obj).__name__}, not a module or a state dict of tensors")


def _allowlist_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy loader's SourceChangeWarning on stubs
            return torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=_PickleModule
            )
    except RefusedGlobal as err:
        raise UserError(
            f"refused to unpickle {err.qualname} from {path}: not a class torchxrayvision "
            "weights contain; a weights file that names it may run code when loaded, so "
            "nothing of it was run"
        ) from None
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any other failure: not a readable weights file
        raise UserError(
            f"{path} is not a readable torch weights file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'truncated or corrupt'})"
        ) from None


def stub_state_dict(root: ModuleStub) -> dict[str, torch.Tensor]:
    """The ``state_dict()`` of the module ``root`` stands for: parameters, then persistent
    buffers, then each child's under ``name.``; None entries are skipped, as torch does."""
    out: dict[str, torch.Tensor] = {}

    def walk(stub: ModuleStub, prefix: str) -> None:
        state = stub.state
        skip = set(state.get("_non_persistent_buffers_set") or ())
        for name, value in (state.get("_parameters") or {}).items():
            if value is not None:
                out[prefix + name] = _tensor(value, prefix + name)
        for name, value in (state.get("_buffers") or {}).items():
            if value is not None and name not in skip:
                out[prefix + name] = _tensor(value, prefix + name)
        for name, child in (state.get("_modules") or {}).items():
            if isinstance(child, ModuleStub):
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    return out


def _tensor(value: Any, key: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise UserError(f"entry {key!r} of the pickled module is a {type(value).__name__}")
    return value.detach()
