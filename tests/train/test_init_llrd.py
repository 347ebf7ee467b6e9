"""``model.init`` (start from another model's weights, head rows by finding name) and
``optim.layer_decay`` (layer-wise learning rates)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_OVERRIDES

from cxrkit.cli.parser import main
from cxrkit.models.backbones import create_model
from cxrkit.models.checkpoint import LoadedModel, load_checkpoint, read_checkpoint, update_card
from cxrkit.train.config import load_config
from cxrkit.train.fit import fit
from cxrkit.train.module import CXRModule, new_card
from cxrkit.train.run_folder import read_json
from cxrkit.train.warm_start import apply_init, param_groups


def test_head_rows_are_carried_over_by_finding_name() -> None:
    torch.manual_seed(0)
    init = LoadedModel(create_model("resnet10t", 3), {"findings": ["B", "A", "C"]})
    model = create_model("resnet10t", 3)
    fresh = model.fc.weight.detach().clone()
    record = apply_init(model, init, ["A", "B", "X"])
    assert record["carried_over"] == ["A", "B"] and record["new"] == ["X"]
    assert record["not_trained"] == ["C"]
    torch.testing.assert_close(model.fc.weight[0], init.model.fc.weight[1])
    torch.testing.assert_close(model.fc.weight[1], init.model.fc.weight[0])
    torch.testing.assert_close(model.fc.bias[1], init.model.fc.bias[0])
    torch.testing.assert_close(model.fc.weight[2], fresh[2])
    torch.testing.assert_close(model.conv1[0].weight, init.model.conv1[0].weight)


def test_training_starts_from_the_init_and_keeps_its_normalisation(
    trained: Path, prepared: Path, tmp_path: Path
) -> None:
    init = tmp_path / "xrv.ckpt"
    shutil.copy(trained / "checkpoints" / "best.ckpt", init)
    card = read_checkpoint(init)["model_card"]
    # a torchxrayvision-style normalisation no timm pretrained_cfg gives
    update_card(init, normalization={**card["normalization"], "mean": 0.5, "std": 1 / 2048})
    findings = card["findings"][:2]
    sets = [
        *TINY_OVERRIDES,
        f"model.init={init}",
        "optim.lr=0",
        "trainer.max_epochs=1",
        f"data.findings=[{', '.join(findings)}]",
        "optim.scheduler=none",
    ]
    fit(load_config(None, sets), prepared, tmp_path / "run", progress=False)
    out = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert out.card["normalization"]["mean"] == 0.5
    assert out.card["normalization"]["std"] == pytest.approx(1 / 2048)
    assert out.card["init"]["carried_over"] == findings
    assert read_json(tmp_path / "run" / "run.json")["init"]["carried_over"] == findings
    source = load_checkpoint(init)
    # lr 0: the weights are the init's, head rows picked by name (BN running stats move).
    np.testing.assert_allclose(out.model.fc.weight.detach(), source.model.fc.weight[:2].detach())
    torch.testing.assert_close(out.model.conv1[0].weight, source.model.conv1[0].weight)


def test_another_backbone_is_refused_naming_both(
    trained: Path, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init = trained / "checkpoints" / "best.ckpt"
    sets = [s for s in TINY_OVERRIDES if "backbone" not in s]
    args = ["train", "--config", "demo", "--data", str(prepared), "--out", str(tmp_path / "r")]
    code = main([*args, "--set", *sets, "model.backbone=resnet18", f"model.init={init}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "resnet10t" in err and "resnet18" in err
    assert len(err.splitlines()) == 1


def test_layer_decay_gives_each_vit_block_its_learning_rate() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3)
    lr, decay = 1e-3, 0.5
    groups = param_groups(model, lr, decay)
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    depth = len(model.blocks)  # 12: L = 13
    assert by_param[id(names["patch_embed.proj.weight"])] == pytest.approx(lr * decay**13)
    assert by_param[id(names["cls_token"])] == pytest.approx(lr * decay**13)
    for i in range(depth):
        want = lr * decay ** (depth - i)
        assert by_param[id(names[f"blocks.{i}.attn.qkv.weight"])] == pytest.approx(want)
    assert by_param[id(names["head.weight"])] == lr and by_param[id(names["norm.weight"])] == lr
    assert groups[0]["lr"] == lr  # the head's group first
    assert sum(len(g["params"]) for g in groups) == len(names)


def test_layer_decay_one_leaves_one_group(prepared: Path) -> None:
    for decay, n_groups in ((1.0, 1), (0.8, 6)):  # resnet10t: stem, layer1-4, head
        config = load_config(
            None, [*TINY_OVERRIDES, "optim.scheduler=none", f"optim.layer_decay={decay}"]
        )
        card = new_card(config, ["A", "B"], {}, 64)
        module = CXRModule(config, card, np.ones(2), np.ones(2))
        optimizer = module.configure_optimizers()
        assert len(optimizer.param_groups) == n_groups
        params = sum(len(g["params"]) for g in optimizer.param_groups)
        assert params == len(list(module.parameters()))


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_layer_decay_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(Exception, match="optim.layer_decay"):
        load_config(None, [f"optim.layer_decay={value}"])
