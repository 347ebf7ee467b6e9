"""Backbones: logits, CAM layers, output stride in the card, name and download errors."""

from __future__ import annotations

import pytest
import torch

from cxrkit.errors import UserError
from cxrkit.explain.layers import cam_layers
from cxrkit.models import backbones as models
from cxrkit.models import checkpoint
from cxrkit.models.backbones import create_model
from cxrkit.models.inputs import input_normalization


@pytest.mark.parametrize(
    "backbone",
    ["resnet10t", "densenet121", "efficientnet_b0", "convnext_atto", "mobilenetv3_small_050"],
)
def test_backbones_give_logits_and_a_spatial_cam_layer(backbone: str) -> None:
    model = create_model(backbone, 3).eval()
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 3)
    seen: list[torch.Tensor] = []
    layer = cam_layers(model, backbone, 64)[0].module
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    model(torch.zeros(1, 1, 64, 64))
    handle.remove()
    assert seen and seen[0].ndim == 4 and seen[0].shape[-1] > 1
    mean, std = input_normalization(model)
    assert 0.3 < mean < 0.6 and 0.1 < std < 0.6


def test_output_stride_refines_the_cam_layer_and_travels_in_the_card() -> None:
    def cam_grid(model: torch.nn.Module) -> tuple[int, int]:
        return cam_layers(model, "resnet10t", 128, ["layer4"])[0].grid

    plain = create_model("resnet10t", 3)
    assert cam_grid(plain) == (4, 4)
    assert cam_grid(create_model("resnet10t", 3, output_stride=16)) == (8, 8)
    card = {"backbone": "resnet10t", "findings": ["a", "b", "c"], "output_stride": 8}
    rebuilt = checkpoint._build(card, plain.state_dict(), "test")
    assert cam_grid(rebuilt) == (16, 16)
    with pytest.raises(UserError, match="does not support model.output_stride=8"):
        create_model("densenet121", 3, output_stride=8)
    with pytest.raises(UserError, match="must be 32, 16 or 8"):
        create_model("resnet10t", 3, output_stride=4)


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(UserError, match="did you mean 'densenet121'"):
        create_model("densenet12l", 2)


def test_pretrained_without_network_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UserError, match="model.pretrained=false"):
        create_model("resnet10t", 2, pretrained=True)
