"""Typed training configuration, read from YAML, with ``--set a.b=value`` overrides.

Every value is checked when the config is loaded, before a run starts: unknown keys are
rejected with the closest valid names, values of the wrong type with the type expected, and
values outside what the code handles (an unknown choice, an impossible number) by
:data:`~cxrkit.train.rules.RULES`, with the key, the value found and what is expected. The
resolved config is saved beside the run so a result can always be traced to the exact settings
that produced it.

The choices and ranges of every key are defined once, in :mod:`cxrkit.train.rules`; the
modules that act on them import those constants.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrkit.errors import UserError, did_you_mean
from cxrkit.train.rules import RULES, show


@dataclass
class ModelConfig:
    backbone: str = "densenet121"  # any timm model name
    pretrained: bool = True  # ImageNet weights (needs network or a local timm/HF cache)
    drop_rate: float = 0.0
    output_stride: int = 32  # 16 or 8: dilate the last stage(s) for finer CAMs (ResNets etc.)
    channels_last: bool = True
    compile: bool = False  # torch.compile the network (first steps slower; faster after)
    init: str | None = None  # start from this checkpoint/bundle's weights (same backbone)


@dataclass
class DataConfig:
    image_size: int = 224  # model input; the cache (prepare --size) should be >= this
    batch_size: int = 32
    num_workers: int = 2
    findings: list[str] | None = None  # None: every manifest finding with train positives
    combine: str = "union"  # several --data: union or intersection of their findings
    sampler: str = "random"  # random | weighted (rare findings drawn more: train/loaders.py)
    pin_memory: bool | None = None  # page-locked batches; None: when CUDA is available
    embeddings: bool = False  # --data is an embedding folder (cxrkit embed): a linear probe


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.85, 1.0)  # random resized crop, area fraction
    ratio: tuple[float, float] = (0.9, 1.1)
    rotate_deg: float = 7.0
    translate: float = 0.05  # fraction of the image
    brightness: float = 0.15
    contrast: float = 0.15
    hflip: bool = False  # off: laterality (heart on the left, situs) is anatomy, not noise
    on: str = "auto"  # loader (OpenCV, uint8, CPU workers) | device (torch, whole batch) | auto


@dataclass
class LossConfig:
    name: str = "bce"  # bce | focal | class_balanced | asymmetric
    pos_weight: str | None = None  # None | "auto" (negatives/positives per class, clipped)
    focal_gamma: float = 2.0
    cb_beta: float = 0.999
    asl_gamma_neg: float = 4.0  # asymmetric loss (Ridnik et al. 2021): focusing on negatives
    asl_gamma_pos: float = 0.0  # ... on positives
    asl_clip: float = 0.05  # probability margin m shifted off easy negatives


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    scheduler: str = "cosine"  # cosine | plateau | none
    warmup_epochs: float = 0.0
    layer_decay: float = 1.0  # layer-wise lr decay: lr x decay^(L - layer id); 1.0 = off


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    accelerator: str = "auto"
    devices: Any = "auto"  # auto, a count (2) or a list of device ids ([0, 1])
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ... (Lightning's); see docs/training.md
    num_nodes: int = 1  # machines taking part in DDP
    precision: str = "auto"  # auto: bf16-mixed on CUDA with bf16, 16-mixed on CUDA, else 32
    patience: int = 5  # early stopping on validation macro AUROC; 0 = off
    deterministic: bool = False
    log_every_n_steps: int = 10
    limit_train_batches: float = 1.0
    checkpoint_every_n_steps: int = 1000  # also write last.ckpt every N steps (0: epoch ends)


@dataclass
class TrainConfig:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: str = "tensorboard"  # tensorboard | mlflow | none (RUN/epochs.csv is always written)


def _build(cls: type, values: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a dict, recursing, rejecting unknown keys and values
    of the wrong type (ints become floats, lists tuples, where the field says so)."""
    if not isinstance(values, dict):
        section = where.rstrip(".") or "top level"
        raise UserError(f"config section {section} must be a mapping, got {show(values)}")
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in defaults:
            raise did_you_mean(f"{where}{key}", [f"{where}{k}" for k in hints], what="config key")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, defaults[key], f"{where}{key}")
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, default: Any, key: str) -> Any:
    """``value`` converted to the field's annotation ``hint``, or a UserError saying what
    type is expected (``default`` is the example shown)."""
    ok, converted = _convert(value, hint)
    if not ok:
        like = "" if default is None else f" like {default!r}"
        if isinstance(default, tuple):
            like = f" like {show(default)}"
        raise UserError(f"config key {key} expects {_type_name(hint)}{like}, got {value!r}")
    return converted


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(matches, converted)`` for ``value`` against a field annotation."""
    if hint is Any:  # e.g. trainer.devices: "auto", 2 or [0, 1]
        return True, value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        for arg in args:
            ok, converted = _convert(value, arg)
            if ok:
                return True, converted
        return False, None
    if hint is type(None):
        return value is None, None
    if hint is bool or hint is str:
        return isinstance(value, hint), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:  # an int is a float; NaN and infinities are no setting
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, None
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            return False, None
        return (True, number) if math.isfinite(number) else (False, None)
    if origin in (tuple, list) and isinstance(value, list | tuple):
        items = args if origin is tuple else (args[0],) * len(value)
        if len(items) != len(value):
            return False, None
        pairs = [_convert(v, a) for v, a in zip(value, items, strict=True)]
        if not all(ok for ok, _ in pairs):
            return False, None
        return True, origin(converted for _, converted in pairs)
    if origin in (tuple, list):
        return False, None
    raise TypeError(f"config annotation {hint!r} is not handled by _convert")  # a bug


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is list:
        return f"[{_type_name(args[0])}, ...]"
    return getattr(hint, "__name__", str(hint))


def _leaves(obj: Any, where: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, annotation, value)`` of every non-section field of a config."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(value, f"{where}{f.name}.")
        else:
            yield f"{where}{f.name}", hints[f.name], value


def validate_config(config: TrainConfig) -> TrainConfig:
    """Check every value of ``config`` (its type, then :data:`RULES`); return it unchanged.

    :func:`load_config` calls it; call it on a config built or changed in Python."""
    for key, hint, value in _leaves(config):
        _check_type(value, hint, None, key)
        rule = RULES.get(key)
        if rule is not None and not rule.ok(value):
            raise rule.error(key, value)
    return config


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, except that ``1e-4`` is a number (YAML 1.2), not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> nested dict; values are parsed as YAML scalars/lists.

    Every pair is kept (a key given twice takes its last value)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key.sub=value, got {pair!r}")
        node = tree
        *parents, leaf = key.strip().split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parents[: depth + 1])
                raise UserError(f"--set {pair} conflicts with --set {section}={show(node)}")
        if isinstance(node.get(leaf), dict):
            raise UserError(f"--set {pair} would replace the keys --set gave under {key}")
        node[leaf] = _yaml(raw)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None), apply ``overrides`` (every
    ``--set`` pair, in order) and validate the result (:func:`validate_config`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            raw = _yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise UserError(
                f"{path} holds a YAML {type(raw).__name__}, expected a mapping of sections "
                "(model:, data:, trainer:, ...) as in the shipped recipes"
            )
    return validate_config(_build(TrainConfig, _merge(raw, parse_overrides(overrides or [])), ""))


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain dict (tuples as lists) for YAML/JSON output."""
    return _listify(dataclasses.asdict(config))


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    return value


RECIPES = Path(__file__).parent.parent / "configs"  # the recipes shipped with cxrkit


def resolve_recipe(name: str) -> Path:
    """A config path, or the name of a recipe shipped with cxrkit (``demo``, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = RECIPES / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    recipes = [p.stem for p in RECIPES.glob("*.yaml")]
    raise did_you_mean(name, recipes, what="config file or recipe") from None
