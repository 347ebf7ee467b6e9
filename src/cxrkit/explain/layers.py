"""Which layer a CAM method hooks: chosen per backbone family and sized to the input.

A CAM heatmap has the target layer's resolution, so the layer decides how precisely the map
can point. The default is the family's last feature map before pooling (:data:`CAM_LAYERS`,
the usual Grad-CAM choice), unless its grid at the model's input size has fewer than
:data:`MIN_CAM_GRID` cells per side, as ResNet's last stage has at 128 px (4 x 4). Seven is
the grid ResNet's last stage has at 224 px, the setting Grad-CAM was published with, so at
224 px and above the choice is the usual one. For smaller inputs the deepest earlier timm
stage (``feature_info``, stride 8 or more) whose grid has that many cells is hooked, together
with the next finer stage, and their maps are fused (ResNet ``layer3`` 8 x 8 and ``layer2``
16 x 16 at 128 px): the deeper map knows which structure, the finer one where, and small
findings (the phantom's nodules) need the latter. pytorch-grad-cam fuses several target layers
the same way (the mean of the per-layer maps, each scaled to [0, 1]). On the demo model
(128 px) the pointing game went from 0.35 (``layer4``) to 0.69 (``layer3``) to 0.80 (fused) on
a held-out phantom (docs/benchmarks.md). If no stage reaches seven cells, the stride-8 stage
alone is used. Any modules can be named instead (``cxrkit cam --layer``).

Vision Transformers (any model with ``patch_embed``, ``blocks`` and ``num_prefix_tokens``,
e.g. timm's ``vit_*`` and ``deit_*``) hook the input of the last block's attention,
``blocks[-1].norm1``, with their tokens ``(B, N, C)`` reshaped to ``(B, C, H, W)``. Foundation
encoders (:mod:`cxrkit.models.encoders`: DINOv2, SigLIP, CLIP, open_clip towers) name the same
layer of their own tower (``cam_target``, the last block's first layer norm) and how many
class/register tokens to drop (``num_prefix_tokens``; SigLIP has none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cxrkit.errors import UserError, did_you_mean

#: the last spatial feature map before pooling, per backbone family (name prefix)
CAM_LAYERS: dict[str, str] = {
    "densenet": "features.norm5",
    "resnet": "layer4",
    "resnext": "layer4",
    "convnext": "stages.3",
    "efficientnet": "bn2",
    "mobilenetv3": "blocks",
    "regnet": "s4",
}
#: the default layer's grid must have at least this many cells per side (see the docstring)
MIN_CAM_GRID = 7

Reshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CamLayer:
    """The hooked layer: its name in ``model.named_modules()``, the module whose output is
    hooked (a ``Sequential`` stage's last child), its grid ``(H, W)`` at the input size, and
    the ``reshape_transform`` its output needs (None for CNNs)."""

    name: str
    module: nn.Module
    grid: tuple[int, int]
    reshape: Reshape | None = None


def vit_reshape(num_prefix_tokens: int, grid: tuple[int, int]) -> Reshape:
    """A ``reshape_transform``: tokens ``(B, P + N, C)`` -> ``(B, C, H, W)``.

    The ``P`` class/distillation/register tokens are dropped; the ``N`` patch tokens are laid
    out on ``grid`` ``(H, W)`` when ``H * W == N``, else on a square ``sqrt(N)`` grid.
    """

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, num_prefix_tokens:, :]
        n = patches.shape[1]
        h, w = grid if grid[0] * grid[1] == n else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise UserError(f"cannot lay {n} ViT patch tokens out on a grid for CAM")
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


def cam_layers(
    model: nn.Module, backbone: str, input_size: int, names: Sequence[str] | None = None
) -> list[CamLayer]:
    """The layers to hook on ``model`` for ``(N, 1, input_size, input_size)`` inputs, deepest
    first: ``names`` when given (any module names, e.g. ``["layer2", "layer3"]``), else the
    default of the module docstring (one layer, or two fused for small inputs)."""
    modules = dict(model.named_modules())
    reshape = None
    if isinstance(getattr(model, "cam_target", None), str):  # a foundation encoder
        grid = model.patch_grid(input_size)  # type: ignore[operator]
        reshape = vit_reshape(int(model.num_prefix_tokens), grid)  # type: ignore[arg-type]
        candidates = [str(model.cam_target)]
    elif all(hasattr(model, a) for a in ("patch_embed", "blocks", "num_prefix_tokens")):
        patch_grid = tuple(getattr(model.patch_embed, "grid_size", (0, 0)))
        reshape = vit_reshape(int(model.num_prefix_tokens), patch_grid)  # type: ignore[arg-type]
        candidates = [f"blocks.{len(model.blocks) - 1}.norm1"]  # type: ignore[arg-type]
    else:
        candidates = _cnn_candidates(model, backbone, input_size)
    if names:
        for name in names:
            if not name or name not in modules:
                raise did_you_mean(name, [n for n in modules if n], what="CAM layer")
        candidates = list(dict.fromkeys(names))
    grids = _grids(model, [_hooked(modules[n]) for n in candidates], input_size, reshape)
    layers = []
    for n, grid in zip(candidates, grids, strict=True):
        if grid is None:
            raise UserError(f"CAM layer {n!r} has no spatial (N, C, H, W) output to draw a map")
        layers.append(CamLayer(n, _hooked(modules[n]), grid, reshape))
    if names:
        return layers
    fine = [i for i, layer in enumerate(layers) if min(layer.grid) >= MIN_CAM_GRID]
    if not fine:
        return layers[-1:]
    first = fine[0]
    return layers[first : first + 2] if first > 0 else layers[:1]


def describe_layers(layers: Sequence[CamLayer]) -> str:
    """``layer3 (8 x 8) + layer2 (16 x 16)``: the hooked layers and their grids."""
    return " + ".join(f"{layer.name} ({layer.grid[0]} x {layer.grid[1]})" for layer in layers)


def _cnn_candidates(model: nn.Module, backbone: str, input_size: int) -> list[str]:
    """The family's last layer, then timm's earlier stages at stride >= 8, deepest first."""
    last = next((n for f, n in CAM_LAYERS.items() if backbone.startswith(f)), None)
    if last is None:
        last = _last_spatial_module(model, input_size)
    info = [f for f in getattr(model, "feature_info", []) if isinstance(f, dict)]
    deepest = max((int(f["reduction"]) for f in info), default=0)
    earlier = [str(f["module"]) for f in info if 8 <= int(f["reduction"]) < deepest]
    return [last, *reversed(earlier)]


def _hooked(module: nn.Module) -> nn.Module:
    """The module whose output is hooked: a ``Sequential`` stage's last child."""
    return module[-1] if isinstance(module, nn.Sequential) and len(module) else module


def _probe(model: nn.Module, modules: Sequence[nn.Module], input_size: int) -> dict[int, object]:
    """Each module's first output on one zero image ``(1, 1, S, S)`` by its index in
    ``modules``, in the order the forward pass reached them (eval mode, restored after)."""
    outputs: dict[int, object] = {}

    def hook(k: int) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: object, out: object) -> None:
            outputs.setdefault(k, out)

        return record

    hooks = [m.register_forward_hook(hook(k)) for k, m in enumerate(modules)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(1, 1, input_size, input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return outputs


def _grids(
    model: nn.Module, modules: Sequence[nn.Module], input_size: int, reshape: Reshape | None
) -> list[tuple[int, int] | None]:
    """The ``(H, W)`` grid of each module's output, None where it is not a 4-D map."""
    outputs = _probe(model, modules, input_size)
    grids: list[tuple[int, int] | None] = []
    for out in (outputs.get(k) for k in range(len(modules))):
        if isinstance(out, torch.Tensor) and reshape is not None:
            out = reshape(out)
        spatial = isinstance(out, torch.Tensor) and out.ndim == 4
        grids.append((int(out.shape[-2]), int(out.shape[-1])) if spatial else None)
    return grids


def _last_spatial_module(model: nn.Module, input_size: int) -> str:
    """The name of the last leaf module the forward pass reached with a 4-D output larger
    than 1 x 1."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    outputs = _probe(model, [m for _, m in leaves], input_size)
    spatial = [
        leaves[k][0]
        for k, out in outputs.items()
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1
    ]
    if not spatial:
        raise UserError("could not find a spatial layer for Grad-CAM in this backbone")
    return spatial[-1]
