"""Starting from another model's weights (``model.init``) and layer-wise learning-rate decay
(``optim.layer_decay``), the two settings of fine-tuning a pretrained encoder.

``model.init: PATH`` (a checkpoint file or a bundle folder, e.g. one imported from
torchxrayvision) loads every encoder weight of PATH's network, which must be the same backbone,
into the new model, and takes the head's rows by finding name: a finding both models have keeps
its trained row (weight and bias), a new finding gets a fresh row. The input normalisation of
the card is PATH's (torchxrayvision models expect mean 0.5, std 1/2048 on [0, 1] input, which
no timm ``pretrained_cfg`` gives), so the new model sees its inputs as the init did.

``optim.layer_decay: d`` gives each parameter ``lr x d^(L - id)``: ``id`` is the index + 1 of
the block it sits in (a name with ``blocks.N.``, ``layers.N.``, ``layer.N.``, ``layerN.``,
``resblocks.N.`` or ``stages.N.``), 0 for everything before the first block (patch / token
embeddings, the stem) and ``L`` (= number of blocks + 1) for everything after the last (final
norm, head): the head trains at ``lr``, the first block at ``lr x d^(L-1)``, the stem at
``lr x d^L``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrkit.errors import UserError
from cxrkit.models.checkpoint import LoadedModel, file_sha256, load_model

BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|layer|resblocks|stages)\.?(\d+)\.")


def head_prefix(model: nn.Module) -> str:
    """The state-dict prefix (``fc.``, ``head.``, ``classifier.``) of the model's classifier,
    the module ``get_classifier()`` returns."""
    head = model.get_classifier()  # type: ignore[operator]
    for name, module in model.named_modules():
        if module is head and name:
            return name + "."
    raise UserError(f"{type(model).__name__}: cannot find its classifier among its modules")


def load_init(path: str | Path, backbone: str) -> LoadedModel:
    """The model at ``path``; a UserError when its backbone is not ``backbone``."""
    loaded = load_model(path)
    found = loaded.card.get("backbone")
    if found != backbone:
        raise UserError(
            f"model.init {path} is a {found!r} model but model.backbone is {backbone!r}: set "
            f"model.backbone={found} to fine-tune it, or drop model.init"
        )
    return loaded


def apply_init(model: nn.Module, init: LoadedModel, findings: list[str]) -> dict[str, Any]:
    """Copy ``init``'s encoder into ``model`` (every key and shape must match) and its head
    rows by finding name; returns what was carried over (for the card and run.json)."""
    prefix = head_prefix(model)
    source, target = init.model.state_dict(), model.state_dict()
    body = {k: v for k, v in source.items() if not k.startswith(head_prefix(init.model))}
    missing = [k for k in target if not k.startswith(prefix) and k not in body]
    wrong = [k for k, v in body.items() if k not in target or target[k].shape != v.shape]
    if missing or wrong:
        raise UserError(
            f"model.init {init.source}: its encoder does not fit the new model "
            f"(missing {missing[:3]}, unexpected or reshaped {wrong[:3]})"
        )
    state = {**target, **body}
    old = init.findings
    carried = [f for f in findings if f in old]
    init_head = {k[len(head_prefix(init.model)) :]: v for k, v in source.items() if k not in body}
    for key in ("weight", "bias"):
        if key in init_head and prefix + key in state:
            rows = state[prefix + key].clone()
            for j, f in enumerate(findings):
                if f in old:
                    rows[j] = init_head[key][old.index(f)]
            state[prefix + key] = rows
    model.load_state_dict(state)
    source_path = Path(init.source) if init.source is not None else None
    return {
        "source": str(source_path.resolve()) if source_path else None,
        "sha256": file_sha256(source_path) if source_path and source_path.is_file() else None,
        "backbone": init.card.get("backbone"),
        "carried_over": carried,
        "new": [f for f in findings if f not in old],
        "not_trained": [f for f in old if f not in findings],
    }


def init_normalization(init: LoadedModel) -> dict[str, Any]:
    """The ``mean``, ``std`` and ``input`` description of ``init``'s card."""
    norm = init.card["normalization"]
    keep = ("mean", "std", "input")
    return {k: (float(norm[k]) if k != "input" else norm[k]) for k in keep if k in norm}


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """``({parameter name: layer id}, L)`` as the module docstring defines them."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    blocks = {n: int(m.group(1)) for n in names if (m := BLOCK.search(n))}
    order = sorted(set(blocks.values()))
    rank = {b: i + 1 for i, b in enumerate(order)}  # 1..number of blocks
    last = len(order) + 1
    ids: dict[str, int] = {}
    seen = False
    for n in names:
        if n in blocks:
            ids[n], seen = rank[blocks[n]], True
        else:
            ids[n] = last if seen else 0
    return ids, last


def param_groups(model: nn.Module, lr: float, decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: one per layer id at ``lr x decay^(L - id)``, the head's group
    (``lr`` itself) first, so the first group's lr is ``optim.lr`` as without decay. With
    ``decay`` 1.0, one group of every parameter."""
    params = dict(model.named_parameters())
    if decay == 1.0:
        return [{"params": [p for p in params.values() if p.requires_grad], "lr": lr}]
    ids, last = layer_ids(model)
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, layer in ids.items():
        groups.setdefault(layer, []).append(params[name])
    return [
        {"params": groups[i], "lr": lr * decay ** (last - i), "layer_id": i}
        for i in sorted(groups, reverse=True)
    ]
