"""Config loading, ``--set`` overrides (repeated flags accumulate), the validation of every
value (types, choices, ranges) and did-you-mean errors."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml

from cxrkit.errors import UserError, did_you_mean
from cxrkit.train.config import (
    RECIPES,
    TrainConfig,
    config_to_dict,
    load_config,
    parse_overrides,
    resolve_recipe,
    validate_config,
)
from cxrkit.train.rules import (
    AUGMENT_ON,
    COMBINE_MODES,
    LOGGERS,
    LOSS_NAMES,
    OUTPUT_STRIDES,
    POS_WEIGHTS,
    PRECISIONS,
    RULES,
    SAMPLERS,
    SCHEDULERS,
)


def test_overrides_nest_and_parse_yaml_values() -> None:
    tree = parse_overrides(["a.b=3", "a.c=[1, 2]", "d=true", "e=none"])
    assert tree == {"a": {"b": 3, "c": [1, 2]}, "d": True, "e": "none"}


def test_override_without_equals_is_a_user_error() -> None:
    with pytest.raises(UserError, match="key.sub=value"):
        parse_overrides(["model.backbone"])


def test_load_config_applies_recipe_then_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  backbone: resnet18\ntrainer:\n  max_epochs: 4\n")
    cfg = load_config(recipe, ["trainer.max_epochs=7", "augment.scale=[0.5, 1.0]"])
    assert cfg.model.backbone == "resnet18"
    assert cfg.trainer.max_epochs == 7
    assert cfg.augment.scale == (0.5, 1.0)
    assert config_to_dict(cfg)["augment"]["scale"] == [0.5, 1.0]


def test_unknown_key_names_the_closest_valid_key() -> None:
    with pytest.raises(UserError, match=r"unknown config key 'model.backbon'.*'model.backbone'"):
        load_config(None, ["model.backbon=resnet18"])


def test_wrong_type_is_rejected_with_the_expected_type() -> None:
    with pytest.raises(UserError, match="trainer.max_epochs expects int"):
        load_config(None, ["trainer.max_epochs=ten"])


def test_missing_and_invalid_config_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_did_you_mean_lists_close_names_and_all_choices() -> None:
    msg = str(did_you_mean("densnet121", ["densenet121", "resnet50"], what="backbone"))
    assert "did you mean 'densenet121'" in msg
    assert "Valid: densenet121, resnet50" in msg


# --- repeated --set flags -------------------------------------------------------------------

TRAIN = ["train", "--config", "demo", "--data", "PREP", "--out", "RUN"]
THREE = ["model.backbone=densenet121", "data.image_size=224", "trainer.max_epochs=1"]


def test_repeated_set_flags_accumulate_through_the_real_parser() -> None:
    from cxrkit.cli.parser import build_parser

    parser = build_parser()
    repeated = parser.parse_args([*TRAIN, *(a for pair in THREE for a in ("--set", pair))])
    assert repeated.set == THREE
    assert parser.parse_args([*TRAIN, "--set", *THREE]).set == THREE
    mixed = parser.parse_args([*TRAIN, "--set", THREE[0], THREE[1], "--set", THREE[2]])
    assert mixed.set == THREE
    assert parser.parse_args(TRAIN).set == []  # and the earlier parses left nothing behind
    resume = parser.parse_args(["train", "--resume", "RUN", "--set", "a=1", "--set", "b=2"])
    assert resume.set == ["a=1", "b=2"]
    with pytest.raises(SystemExit):  # a bare --set is a mistake, not "no overrides"
        parser.parse_args([*TRAIN, "--set"])


def test_every_set_pair_reaches_the_config() -> None:
    from cxrkit.cli.parser import build_parser

    def picked(cfg: TrainConfig) -> tuple[object, ...]:
        return cfg.model.backbone, cfg.data.image_size, cfg.trainer.max_epochs

    args = build_parser().parse_args([*TRAIN, *(a for pair in THREE for a in ("--set", pair))])
    assert picked(load_config(resolve_recipe("demo"))) == ("resnet10t", 128, 8)
    cfg = load_config(resolve_recipe(args.config), args.set)
    assert picked(cfg) == ("densenet121", 224, 1)
    assert config_to_dict(cfg) == config_to_dict(load_config(resolve_recipe("demo"), THREE))
    # a key given twice takes its last value, as written
    assert load_config(None, ["optim.lr=0.1", "optim.lr=0.2"]).optim.lr == 0.2


def test_set_pairs_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(UserError, match=r"--set model.backbone=x conflicts with --set model=3"):
        parse_overrides(["model=3", "model.backbone=x"])
    with pytest.raises(UserError, match="would replace the keys --set gave under model"):
        parse_overrides(["model.backbone=x", "model=3"])


# --- enumerated keys ------------------------------------------------------------------------

CHOICES = {
    "optim.scheduler": (SCHEDULERS, "plateu", "plateau"),
    "loss.name": (LOSS_NAMES, "asymetric", "asymmetric"),
    "loss.pos_weight": (POS_WEIGHTS, "Auto", "auto"),
    "trainer.precision": (PRECISIONS, "bf16-mix", "bf16-mixed"),
    "logger": (LOGGERS, "tensorbord", "tensorboard"),
    "data.sampler": (SAMPLERS, "weigthed", "weighted"),
    "data.combine": (COMBINE_MODES, "intersect", "intersection"),
    "augment.on": (AUGMENT_ON, "devices", "device"),
}


def _get(cfg: TrainConfig, key: str) -> object:
    value: object = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_misspelt_choice_names_the_key_and_suggests_the_valid_value(key: str) -> None:
    choices, typo, meant = CHOICES[key]
    with pytest.raises(UserError) as err:
        load_config(None, [f"{key}={typo}"])
    msg = str(err.value)
    assert f"unknown {key} '{typo}'" in msg
    assert f"did you mean '{meant}'" in msg
    shown = sorted("null" if c is None else c for c in choices)
    assert msg.endswith("Valid: " + ", ".join(shown))


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_valid_choice_is_accepted_as_written(key: str) -> None:
    for choice in CHOICES[key][0]:
        written = "null" if choice is None else choice
        assert _get(load_config(None, [f"{key}={written}"]), key) == choice


def test_the_scheduler_typo_of_the_issue_exits_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxrkit.cli.parser import main

    run = tmp_path / "run"
    argv = ["train", "--config", "demo", "--data", str(tmp_path), "--out", str(run)]
    assert main([*argv, "--set", "trainer.max_epochs=1", "--set", "optim.scheduler=plateu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cxrkit train: error: unknown optim.scheduler 'plateu'; did you mean 'plateau'? "
        "Valid: cosine, none, plateau"
    ]
    assert not run.exists()
    # --resume reads its overrides through load_config too
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(TrainConfig())))
    assert main(["train", "--resume", str(run), "--set", "trainer.precision=bf16-mix"]) == 2
    assert "did you mean 'bf16-mixed'" in capsys.readouterr().err


def test_output_stride_is_one_of_the_strides_the_backbones_build() -> None:
    for stride in OUTPUT_STRIDES:
        assert load_config(None, [f"model.output_stride={stride}"]).model.output_stride == stride
    with pytest.raises(UserError, match=r"model.output_stride must be one of 32, 16, 8, got 7$"):
        load_config(None, ["model.output_stride=7"])


def test_the_choices_are_exactly_what_the_consuming_code_handles() -> None:
    """The lists live in config.py (the modules below import it); these are the same lists,
    and each value does what its name says in the code that consumes it."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from lightning.fabric.connector import _PRECISION_INPUT_STR

    from cxrkit.models.backbones import create_model
    from cxrkit.train.config import AugmentConfig, LossConfig, OptimConfig
    from cxrkit.train.loaders import SAMPLERS as LOADER_SAMPLERS
    from cxrkit.train.losses import LOSSES, AsymmetricLoss, FocalLoss, MaskedBCE, create_loss
    from cxrkit.train.module import CXRModule, augment_on_device
    from cxrkit.train.run_folder import LOGGERS as RUN_LOGGERS

    assert set(LOSS_NAMES) == set(LOSSES)
    assert set(SAMPLERS) == set(LOADER_SAMPLERS)
    assert set(LOGGERS) == set(RUN_LOGGERS)
    assert set(PRECISIONS) == {"auto", *typing.get_args(_PRECISION_INPUT_STR)}

    where = {on: augment_on_device(AugmentConfig(on=on), "cpu") for on in AUGMENT_ON}
    assert where == {"auto": False, "loader": False, "device": True}

    counts = np.array([3.0, 1.0]), np.array([9.0, 9.0])
    kinds = dict(
        bce=MaskedBCE, focal=FocalLoss, class_balanced=MaskedBCE, asymmetric=AsymmetricLoss
    )
    for name in LOSS_NAMES:
        for pos_weight in POS_WEIGHTS:
            loss = create_loss(LossConfig(name=name, pos_weight=pos_weight), *counts)
            assert type(loss) is kinds[name]
    weighted = create_loss(LossConfig(pos_weight="auto"), *counts)
    assert weighted.pos_weight.tolist() == [3.0, 9.0]

    def optimizers(scheduler: str) -> object:
        fake = SimpleNamespace(
            config=SimpleNamespace(optim=OptimConfig(scheduler=scheduler)),
            parameters=lambda: [torch.nn.Parameter(torch.zeros(1))],
            trainer=SimpleNamespace(estimated_stepping_batches=10, max_epochs=2),
        )
        return CXRModule.configure_optimizers(fake)  # type: ignore[arg-type]

    built = {s: optimizers(s) for s in SCHEDULERS}
    assert isinstance(built["none"], torch.optim.AdamW)
    plateau = built["plateau"]["lr_scheduler"]["scheduler"]  # type: ignore[index]
    cosine = built["cosine"]["lr_scheduler"]["scheduler"]  # type: ignore[index]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert isinstance(cosine, torch.optim.lr_scheduler.LambdaLR)

    for stride in OUTPUT_STRIDES:  # models/ cannot import train/: its own list must agree
        assert isinstance(create_model("resnet10t", 2, output_stride=stride), torch.nn.Module)
    with pytest.raises(UserError, match="model.output_stride must be"):
        create_model("resnet10t", 2, output_stride=4)


# --- numbers --------------------------------------------------------------------------------

BAD_NUMBERS = [
    (
        "data.image_size=7",
        "data.image_size must be an integer >= 32 (the smallest input the backbones accept), got 7",
    ),
    ("data.image_size=31", "data.image_size must be an integer >= 32"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be an integer >= 1, got 0"),
    ("trainer.num_nodes=0", "trainer.num_nodes must be an integer >= 1"),
    ("trainer.patience=-1", "trainer.patience must be an integer >= 0"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches must be a fraction"),
    ("trainer.limit_train_batches=5", "trainer.limit_train_batches must be a fraction"),
    ("trainer.checkpoint_every_n_steps=-5", "trainer.checkpoint_every_n_steps must be an integer"),
    ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps must be an integer >= 0"),
    ("optim.lr=-0.001", "optim.lr must be a learning rate >= 0, got -0.001"),
    ("optim.weight_decay=-1", "optim.weight_decay must be a number >= 0"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs must be a number of epochs >= 0"),
    ("loss.focal_gamma=-0.5", "loss.focal_gamma must be a number >= 0, got -0.5"),
    ("loss.cb_beta=1", "loss.cb_beta must be a number in [0, 1)"),
    ("loss.asl_gamma_neg=-1", "loss.asl_gamma_neg must be a number >= 0"),
    ("loss.asl_clip=1", "loss.asl_clip must be a probability margin in [0, 1)"),
    ("model.drop_rate=1", "model.drop_rate must be a dropout probability in [0, 1)"),
    ("augment.scale=[0.9, 0.5]", "augment.scale must be [low, high] area fractions"),
    ("augment.scale=[0.5, 1.5]", "got [0.5, 1.5]"),
    ("augment.scale=[0, 1]", "augment.scale must be"),
    ("augment.ratio=[0, 1]", "augment.ratio must be [low, high] aspect ratios"),
    ("augment.rotate_deg=-7", "augment.rotate_deg must be a number of degrees >= 0"),
    ("augment.translate=1.5", "augment.translate must be a fraction of the image side in [0, 1]"),
    ("augment.brightness=2", "augment.brightness must be a brightness shift in [0, 1]"),
    ("augment.contrast=1.5", "augment.contrast must be a contrast amplitude in [0, 1]"),
    ("seed=-1", "seed must be an integer in [0, 4294967295]"),
    ("seed=4294967296", "seed must be an integer in [0, 4294967295]"),
    (
        "data.findings=[]",
        "data.findings must be null (every finding with positives) or a "
        "non-empty list of distinct finding names, got []",
    ),
    ("data.findings=[Mass, Mass]", "got [Mass, Mass]"),
]


@pytest.mark.parametrize(("override", "message"), BAD_NUMBERS)
def test_an_impossible_value_is_refused_naming_key_value_and_expectation(
    override: str, message: str
) -> None:
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert str(err.value).startswith(f"config key {override.partition('=')[0]} must be ")


def test_the_bounds_themselves_are_accepted() -> None:
    cfg = load_config(
        None,
        [
            "data.image_size=32",
            "data.batch_size=1",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.patience=0",
            "loss.focal_gamma=0",
            "loss.cb_beta=0",
            "model.drop_rate=0",
            "augment.scale=[1, 1]",
            "augment.translate=1",
            "seed=4294967295",
            "optim.lr=0",
        ],
    )
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.trainer.max_epochs) == (32, 1, 1)
    assert cfg.augment.scale == (1.0, 1.0) and cfg.loss.focal_gamma == 0.0
    assert cfg.seed == 2**32 - 1 and cfg.optim.lr == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=.nan", "config key optim.lr expects float like 0.0001, got nan"),
        ("optim.lr=.inf", "got inf"),
        ("trainer.max_epochs=null", "trainer.max_epochs expects int like 20, got None"),
        ("optim.scheduler=null", "optim.scheduler expects str like 'cosine', got None"),
        ("data.findings=Mass", "data.findings expects [str, ...] or null, got 'Mass'"),
        ("data.pin_memory=maybe", "data.pin_memory expects bool or null, got 'maybe'"),
        ("augment.scale=[a, b]", "augment.scale expects [float, float] like [0.85, 1.0]"),
        ("loss.pos_weight=5", "loss.pos_weight expects str or null, got 5"),
        ("model=3", "config section model must be a mapping, got 3"),
    ],
)
def test_values_of_the_wrong_type_are_refused(override: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_every_rule_is_about_a_real_key_and_the_defaults_pass() -> None:
    def keys(tree: dict, where: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in tree.items():
            out |= keys(v, f"{where}{k}.") if isinstance(v, dict) else {f"{where}{k}"}
        return out

    assert set(RULES) <= keys(config_to_dict(TrainConfig()))
    assert validate_config(TrainConfig()) == TrainConfig()


def test_validate_config_checks_a_config_built_in_python() -> None:
    cfg = TrainConfig()
    cfg.optim.scheduler = "plateu"
    with pytest.raises(UserError, match="did you mean 'plateau'"):
        validate_config(cfg)
    cfg = TrainConfig()
    cfg.data.batch_size = "32"  # type: ignore[assignment]
    with pytest.raises(UserError, match="data.batch_size expects int, got '32'"):
        validate_config(cfg)


# --- the shipped recipes --------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_with_its_values_as_written(path: Path) -> None:
    written = yaml.safe_load(path.read_text())
    loaded = config_to_dict(load_config(path))

    def compare(tree: dict, got: dict, where: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                compare(value, got[key], f"{where}{key}.")
            else:
                assert got[key] == value, f"{where}{key}"

    compare(written, loaded, "")
    # every resolved value, given back as --set pairs, loads to the same config
    assert config_to_dict(load_config(None, _as_overrides(loaded))) == loaded


def _as_overrides(tree: dict, where: str = "") -> list[str]:
    out: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _as_overrides(value, f"{where}{key}.")
        else:
            out.append(f"{where}{key}={json.dumps(value)}")
    return out


def test_exponent_numbers_are_numbers_in_overrides_and_recipes(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-4 as the string '1e-4'; the config reads it as YAML 1.2 does
    assert parse_overrides(["optim.lr=1e-4", "x=[2E+1, 1.5e-3]", "y='1e-4'"]) == {
        "optim": {"lr": 1e-4},
        "x": [20.0, 1.5e-3],
        "y": "1e-4",
    }
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 3e-4\n  weight_decay: 1e-5\n")
    cfg = load_config(recipe, ["loss.cb_beta=9.99e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.loss.cb_beta) == (3e-4, 1e-5, 0.999)


def test_training_auto_precision_is_every_command_s_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """`trainer.precision: auto` picks what `--precision auto` picks for eval/infer on the
    same device, as one of Lightning's names; explicit values pass through."""
    import torch

    from cxrkit.models import devices
    from cxrkit.train.fit import LIGHTNING_PRECISION, lightning_precision

    assert set(LIGHTNING_PRECISION.values()) <= set(PRECISIONS)
    cpu = devices.resolve_precision("auto", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert lightning_precision("auto") == LIGHTNING_PRECISION[cpu]
    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda native=native: native)
        assert lightning_precision("auto") == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, expected in ((True, "bf16-mixed"), (False, "16-mixed")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert lightning_precision("auto") == expected
    assert lightning_precision("16-mixed") == "16-mixed"
