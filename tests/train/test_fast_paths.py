"""The GPU speed switches, checked on the CPU: ``model.compile``, pinned memory, and
``cxrkit bench train``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.cli.parser import main
from cxrkit.data.batches import CacheBatches, CacheSpec
from cxrkit.train.config import load_config
from cxrkit.train.loaders import make_loader
from cxrkit.train.module import CXRModule, new_card

FINDINGS = ["Effusion", "Mass"]


def _module(*overrides: str) -> CXRModule:
    config = load_config(None, ["model.backbone=resnet10t", "model.pretrained=false", *overrides])
    card = new_card(config, FINDINGS, {}, 64)
    return CXRModule(config, card, np.ones(2), np.ones(2))


def test_compile_wraps_the_network_in_place_and_keeps_checkpoint_keys() -> None:
    # Compiling itself happens at the first step (tens of seconds to minutes on a CPU): only
    # the wiring is checked here; docs/training.md says what compile costs and gains.
    eager, compiled = _module(), _module("model.compile=true")
    assert getattr(eager.model, "_compiled_call_impl", None) is None
    assert getattr(compiled.model, "_compiled_call_impl", None) is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefix


def test_pin_memory_follows_the_config_and_defaults_to_cuda() -> None:
    ds = CacheBatches([CacheSpec("unused", 4, 8)], np.zeros(4), np.arange(4), np.zeros((4, 1)))
    assert make_loader(ds, batch_size=2, shuffle=False, pin_memory=True).pin_memory
    assert not make_loader(ds, batch_size=2, shuffle=False, pin_memory=False).pin_memory
    default = make_loader(ds, batch_size=2, shuffle=False).pin_memory
    assert default == torch.cuda.is_available()


def test_bench_train_prints_step_and_loader_figures(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["bench", "train", "--data", str(prepared), "--backbone", "resnet10t"]
    argv += ["--image-size", "32", "--batch-size", "4", "--seconds", "0.2", "--workers", "0"]
    argv += ["--precision", "32-true"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out or "device: cuda" in out
    assert "train step (resnet10t, 32 px, batch 4, 32-true, channels_last, eager):" in out
    assert "training loader (0 worker(s)):" in out and "x the train step's demand" in out
