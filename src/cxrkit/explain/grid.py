"""Where the cells of a CNN feature map sit on the input image, and how to upsample a map there.

A class-activation map lives on the target layer's ``g x g`` grid. Resizing it to the input
with the usual half-pixel convention assumes cell ``i`` is centred at ``a * (i + 0.5) - 0.5``
(``a = S / g``), but a network's padding, pooling and dilation put the receptive field's centre
elsewhere: ResNet-10t's cell ``i`` is centred about ``32 i + 12`` at output stride 32 (3.5 px
up-left of the convention) and ``8 i + 8`` at output stride 8 (4.5 px down-right, more than
half a cell). :func:`cell_centres` measures the actual centres with a gradient
probe, and :func:`place_grid` upsamples the map so each cell lands where its receptive field
is, bicubically (bilinear upsampling pins the peak to a cell centre).
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class CellCentres:
    """Cell ``(i, j)`` of the grid is centred at input pixel ``(a * i + b_y, a * j + b_x)``."""

    a: float
    b_y: float
    b_x: float


def _centroid(weights: torch.Tensor) -> float:
    """Index-weighted mean of a 1-D non-negative tensor."""
    return float((weights * torch.arange(len(weights), dtype=weights.dtype)).sum() / weights.sum())


def cell_centres(model: nn.Module, layer: nn.Module, size: int) -> CellCentres | None:
    """Measure where ``layer``'s cells sit on a ``(1, 1, size, size)`` input.

    The pitch is ``a = size / g``; the offset ``b`` is the centroid of ``|d cell / d input|``
    minus ``a * i``, averaged over the central cells on the diagonal (paths that see the whole
    image, such as squeeze-excitation, pull every centroid toward the image centre; for cells
    placed symmetrically about the centre the pulls cancel). ``None`` (use the convention) when
    the grid is under 3 cells, no gradient reaches the input, or the offset found is more than
    a cell away from the convention's."""
    probe, layer = _uniform_copy(model, layer)  # a throwaway copy: no hooks or modes to undo
    probe.eval()
    seen: list[torch.Tensor] = []
    layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.full((1, 1, size, size), 0.5, requires_grad=True)
    probe(x)
    grid = seen[-1].shape[-1] if seen and seen[-1].ndim == 4 else 0
    if grid < 3:
        return None
    a = size / grid
    offsets: list[tuple[float, float]] = []
    for i in sorted({(grid - 1) // 2, grid // 2}):
        seen.clear()
        x.grad = None
        probe(x)
        seen[-1][0, :, i, i].abs().sum().backward()
        g = x.grad[0, 0].abs().double()
        if not float(g.sum()) > 0:
            return None
        offsets.append((_centroid(g.sum(1)) - a * i, _centroid(g.sum(0)) - a * i))
    b_y, b_x = (float(np.mean(v)) for v in zip(*offsets, strict=True))
    convention = a / 2 - 0.5
    if max(abs(b_y - convention), abs(b_x - convention)) > a:
        return None
    return CellCentres(a=a, b_y=b_y, b_x=b_x)


def _uniform_copy(model: nn.Module, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """A copy of ``model`` (and its ``layer``) whose weights are all ``1 / fan_in``, biases 0
    and normalisations identities: its gradients trace the architecture's receptive fields
    (padding, strides, dilation), not what the trained weights happen to favour."""
    name = next(n for n, m in model.named_modules() if m is layer)
    copy = deepcopy(model)
    with torch.no_grad():
        for param_name, param in copy.named_parameters():
            if param.ndim > 1:
                param.fill_(1.0 / param[0].numel())
            else:  # a normalisation's scale (its 1-D ``weight``) 1, every bias and shift 0
                param.fill_(1.0 if param_name.endswith("weight") else 0.0)
        for buf_name, buf in copy.named_buffers():
            if buf_name.endswith("running_mean"):
                buf.zero_()
            elif buf_name.endswith("running_var"):
                buf.fill_(1.0)
    return copy, copy.get_submodule(name)


def place_grid(
    heatmap: np.ndarray, out_size: int, in_size: int, centres: CellCentres | None
) -> np.ndarray:
    """``(g, g)`` map over an ``in_size`` input -> ``(out_size, out_size)``, bicubic, each cell
    at its measured centre (scaled by ``out_size / in_size``); with ``centres=None``, the
    half-pixel convention. Values outside the grid's hull repeat the border."""
    heat = heatmap.astype(np.float32)
    if centres is None:
        return cv2.resize(heat, (out_size, out_size), interpolation=cv2.INTER_CUBIC)
    k = out_size / in_size
    scale = centres.a * k
    # pixel centres: input pixel u lands on output pixel u * k + (k - 1) / 2
    shift = (k - 1) / 2
    m = np.float32([[scale, 0, centres.b_x * k + shift], [0, scale, centres.b_y * k + shift]])
    return cv2.warpAffine(
        heat, m, (out_size, out_size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
