"""Where CAM grid cells sit on the input (gradient probe) and how the map is placed there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrkit.explain.grid import CellCentres, cell_centres, place_grid
from cxrkit.explain.layers import cam_layers
from cxrkit.models.backbones import create_model


def _conv_net(kernel: int, padding: int) -> tuple[nn.Module, nn.Module]:
    """A 3x3 stride-2 convolution (padding 1: cell i centred on input pixel 2 i), then a
    ``kernel`` stride-2 one: 3x3 padding 1 centres cell j on 4 j; 2x2 without padding on
    4 j + 1. The half-pixel convention says 4 j + 1.5 for both."""
    layer = nn.Conv2d(4, 4, kernel, stride=2, padding=padding)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        layer,
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    return net, layer


@pytest.mark.parametrize(("kernel", "padding", "offset"), [(3, 1, 0.0), (2, 0, 1.0)])
def test_probe_finds_the_receptive_field_centre(kernel: int, padding: int, offset: float) -> None:
    net, layer = _conv_net(kernel, padding)
    centres = cell_centres(net, layer, 32)
    assert centres is not None and centres.a == 4
    assert centres.b_y == pytest.approx(offset, abs=0.05)
    assert centres.b_x == pytest.approx(offset, abs=0.05)


def test_probe_ignores_trained_weights_and_leaves_the_model_alone() -> None:
    net, layer = _conv_net(3, 1)
    with torch.no_grad():
        net[0].weight.normal_()
    before = [p.clone() for p in net.parameters()]
    first = cell_centres(net, layer, 32)
    assert all(torch.equal(b, a) for b, a in zip(before, net.parameters(), strict=True))
    assert all(p.grad is None for p in net.parameters()) and net.training
    with torch.no_grad():
        net[0].weight.normal_()
    assert cell_centres(net, layer, 32) == first


def test_resnet50_cells_sit_half_a_cell_off_the_convention() -> None:
    model = create_model("resnet50", 3)
    centres = cell_centres(model, cam_layers(model, "resnet50", 224)[0].module, 224)
    assert centres is not None and centres.a == 32
    assert centres.b_y == pytest.approx(-1.6, abs=0.5)  # convention: 15.5


def test_place_grid_puts_a_cell_at_its_centre() -> None:
    grid = np.zeros((4, 4), np.float32)
    grid[1, 2] = 1.0
    centres = CellCentres(a=8.0, b_y=0.0, b_x=0.0)
    square = place_grid(grid, 64, 32, centres)  # input 32 px -> output 64 px, k = 2
    assert square.shape == (64, 64)
    # cell (1, 2) -> input (8, 16) -> output (8 * 2 + 0.5, 16 * 2 + 0.5)
    assert np.unravel_index(np.argmax(square), square.shape) == (16, 32)
    default = place_grid(grid, 64, 32, None)  # half-pixel convention: cell centre at 24, 40
    peak = np.unravel_index(np.argmax(default), default.shape)
    assert abs(peak[0] - 23.5) <= 0.5 and abs(peak[1] - 39.5) <= 0.5


def test_bicubic_peak_moves_between_cell_centres() -> None:
    grid = np.zeros((8, 8), np.float32)
    grid[4, 4], grid[4, 5] = 1.0, 0.9  # evidence between two cells
    square = place_grid(grid, 128, 128, None)
    _, col = np.unravel_index(np.argmax(square), square.shape)
    assert 4 * 16 + 8 < col < 5 * 16 + 8  # strictly between the two centres (72 and 88)
