"""Shared fixtures: the real sample data folder (skipped when absent) and a tiny phantom
dataset, prepared and trained once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real NIH images, DICOMs, label files); skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny phantom dataset in NIH layout (40 patients, 64 px)."""
    from cxrkit.data.synth.dataset import generate_dataset

    out = tmp_path_factory.mktemp("phantom") / "nih"
    generate_dataset(out, n_patients=40, size=64, seed=1, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny phantom, prepared (cache 64 px)."""
    from cxrkit.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prep"
    prepare("nih", phantom, out, size=64, progress=False)
    return out


GATED_RATE = 0.1  # the tiny phantom has 11 validation images: 5% would need 19


@pytest.fixture(scope="session")
def gated(trained: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny trained checkpoint with an input gate fitted on its own prepared
    folder (``trained``'s own checkpoint stays without one). Read-only: copy it to change it."""
    import shutil

    from cxrkit.deploy.gate_fit import fit_gate

    ckpt = tmp_path_factory.mktemp("gated") / "best.ckpt"
    shutil.copy(trained / "checkpoints" / "best.ckpt", ckpt)
    fit_gate(ckpt, prepared, false_alarm_rate=GATED_RATE, progress=False)
    return ckpt


TINY_OVERRIDES = [
    "model.backbone=resnet10t",
    "model.pretrained=false",
    "data.image_size=48",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.patience=0",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="session")
def trained(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run on the tiny phantom; returns the run folder."""
    from cxrkit.train.config import load_config
    from cxrkit.train.fit import fit

    out = tmp_path_factory.mktemp("run") / "run"
    fit(load_config(None, TINY_OVERRIDES), prepared, out, progress=False)
    return out


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train with one torch thread: a subprocess started with ``OMP_NUM_THREADS=1`` does the
    same arithmetic, and tiny models run far faster than with threads spinning for busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
