"""Config loading/overrides, the finding vocabulary and did-you-mean errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrkit.errors import UserError, did_you_mean
from cxrkit.train.config import config_to_dict, load_config, parse_overrides


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
