"""Typed training configuration, read from YAML, with ``--set a.b=value`` overrides.

Unknown keys are rejected with the closest valid names; the resolved config is saved beside
the run so a result can always be traced to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrkit.errors import UserError, did_you_mean


@dataclass
class ModelConfig:
    backbone: str = "densenet121"  # any timm model name
    pretrained: bool = True  # ImageNet weights (needs network or a local timm/HF cache)
    drop_rate: float = 0.0
    output_stride: int = 32  # 16 or 8: dilate the last stage(s) for finer CAMs (ResNets etc.)
    channels_last: bool = True
    compile: bool = False  # torch.compile the network (first steps slower; faster after)


@dataclass
class DataConfig:
    image_size: int = 224  # model input; the cache (prepare --size) should be >= this
    batch_size: int = 32
    num_workers: int = 2
    findings: list[str] | None = None  # None: every manifest finding with train positives
    combine: str = "union"  # several --data: union or intersection of their findings
    sampler: str = "random"  # random | weighted (rare findings drawn more: train/loaders.py)
    pin_memory: bool | None = None  # page-locked batches; None: when CUDA is available


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


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a dict, recursing, rejecting unknown keys."""
    if not isinstance(values, dict):
        raise UserError(f"config section {where or 'top level'} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise did_you_mean(f"{where}{key}", [f"{where}{k}" for k in fields], what="config key")
        spec = fields[key]
        if spec.default_factory is not dataclasses.MISSING:
            nested = spec.default_factory()
            if dataclasses.is_dataclass(nested):
                kwargs[key] = _build(type(nested), value, f"{where}{key}.")
                continue
        if spec.type in ("Any", Any):  # e.g. trainer.devices: "auto", 2 or [0, 1]
            kwargs[key] = value
            continue
        kwargs[key] = _check_type(value, spec.default, f"{where}{key}")
    return cls(**kwargs)


def _check_type(value: Any, default: Any, key: str) -> Any:
    """Coerce/validate ``value`` against the type of the field's default (None: anything)."""
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, (list, tuple)) and len(v) == len(default),
    }.get(type(default))
    if ok is not None and value is not None and not ok(value):
        raise UserError(
            f"config key {key} expects {type(default).__name__} like {default!r}, got {value!r}"
        )
    if isinstance(default, tuple):
        return tuple(value)
    return float(value) if isinstance(default, float) else value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key.sub=value, got {pair!r}")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
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
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply ``overrides``."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {err}") from None
    return _build(TrainConfig, _merge(raw, parse_overrides(overrides or [])), "")


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
