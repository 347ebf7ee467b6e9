"""LitData shards (``prepare --format litdata``): the memmap cache's bytes for every slot, the
same training and evaluation, prepare's resume/overwrite rules, and object-store URIs' error
paths (only local folders can be read and written here: there is no network)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_OVERRIDES, one_torch_thread

import cxrkit.data.prepare as prepare_module
from cxrkit.cli.parser import main
from cxrkit.data.batches import CacheBatches, cache_spec
from cxrkit.data.cache import cache_paths
from cxrkit.data.manifest import HEADER_NAME, load_manifest, open_images
from cxrkit.data.prepare import SplitPolicy, prepare
from cxrkit.data.storage import as_location
from cxrkit.data.synth.dataset import generate_dataset
from cxrkit.errors import UserError
from cxrkit.files import MARKER
from cxrkit.train.config import AugmentConfig, load_config
from cxrkit.train.fit import fit
from cxrkit.train.loaders import combine, make_loader

SHARD_BYTES = 64 * 1024  # ~15 phantom images a chunk: reads cross many chunk boundaries
URI = "s3://no-such-bucket/x"
INSTALL = "pip install 'cxrkit[scale]'"
needs_litdata = pytest.mark.skipif(
    importlib.util.find_spec("litdata") is None,
    reason="litdata is not installed (the dev and scale extras install it)",
)


def _prepare_shards(root: Path, out: Path, **kwargs: object) -> object:
    return prepare(
        "nih", root, out, size=64, progress=False, cache_format="litdata",
        shard_bytes=SHARD_BYTES, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def shards(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny phantom prepared as the ``prepared`` fixture is, but as LitData shards."""
    out = tmp_path_factory.mktemp("shards") / "prep"
    _prepare_shards(phantom, out)
    return out


@needs_litdata
def test_shards_hold_the_memmap_cache_bytes_for_every_slot(prepared: Path, shards: Path) -> None:
    memmap, sharded = load_manifest(prepared), load_manifest(shards)
    pd.testing.assert_frame_equal(sharded.table, memmap.table)  # same rows, splits, slots
    header = sharded.header["cache"]
    assert header["format"] == "litdata" and header["location"] == "shards"
    assert (header["n"], header["size"]) == (memmap.header["cache"]["n"], 64)
    assert "format" not in memmap.header["cache"]  # the memmap header is as it always was
    assert len(list((shards / "shards").glob("chunk-*.bin"))) > 5
    assert not (shards / "cache").exists(), "the decode-once memmap is removed"

    slots = np.arange(header["n"])
    want, got = memmap.cache()[slots], sharded.cache()[slots]
    assert got.dtype == np.uint8 and got.shape == want.shape == (header["n"], 64, 64)
    np.testing.assert_array_equal(got, want)
    shuffled = np.random.default_rng(0).permutation(slots)[:40]
    np.testing.assert_array_equal(sharded.cache()[shuffled], want[shuffled])
    np.testing.assert_array_equal(sharded.cache()[7], want[7])

    rows = sharded.rows("train").iloc[[9, 0, 4, 4]]  # rows out of order, one twice
    batches = [
        CacheBatches(
            [cache_spec(m)], np.zeros(4), rows["cache_index"].to_numpy(), m.labels(rows, m.findings)
        )[[0, 1, 2, 3]]
        for m in (memmap, sharded)
    ]
    assert cache_spec(sharded).format == "litdata" and cache_spec(memmap).format == "memmap"
    for a, b in zip(*batches, strict=True):  # images, then labels (NaN = unknown)
        np.testing.assert_array_equal(b.numpy(), a.numpy())


def _batches(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)  # the workers' base seed, hence the augmentation draws
    return list(loader)


@needs_litdata
def test_the_reader_pickles_and_feeds_augmenting_loader_workers(
    prepared: Path, shards: Path
) -> None:
    loaded = []
    for folder in (prepared, shards):
        data = combine([load_manifest(folder)], None)
        plain = data.split("train").batches(data.caches)
        first = plain[[0, 1, 2]][0]  # opened in this process: its copies must not carry it
        assert torch.equal(pickle.loads(pickle.dumps(plain))[[0, 1, 2]][0], first)
        train = data.split("train").batches(data.caches, (AugmentConfig(), 40))
        loader = make_loader(train, batch_size=8, shuffle=True, num_workers=2, seed=5)
        loaded.append(_batches(loader))
    memmap, sharded = loaded
    assert len(memmap) == len(sharded) > 2
    for (xa, ya), (xb, yb) in zip(memmap, sharded, strict=True):
        assert xa.shape[1:] == (1, 40, 40)
        assert torch.equal(xa, xb), "same rows, same augmentation draws, same pixels"
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def _epochs(run: Path) -> list[dict[str, str]]:
    with (run / "epochs.csv").open(newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@needs_litdata
def test_one_epoch_from_shards_gives_the_memmap_validation_auroc(
    prepared: Path, shards: Path, tmp_path: Path
) -> None:
    config = [*TINY_OVERRIDES, "trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=none"]
    results = {}
    with one_torch_thread():
        for name, folder in (("memmap", prepared), ("shards", shards)):
            results[name] = fit(load_config(None, config), folder, tmp_path / name, progress=False)
    score = results["memmap"].best_score
    assert math.isfinite(score)
    assert results["shards"].best_score == pytest.approx(score, abs=1e-6)
    assert _epochs(tmp_path / "shards") == _epochs(tmp_path / "memmap")  # loss, AUROCs
    run = json.loads((tmp_path / "shards" / "run.json").read_text())
    assert run["data"]["datasets"][0]["prepared"] == str(shards.resolve())


@needs_litdata
def test_eval_of_a_checkpoint_on_shards_matches_the_memmap_folder(
    trained: Path, prepared: Path, shards: Path, tmp_path: Path
) -> None:
    figures = {}
    for name, folder in (("memmap", prepared), ("shards", shards)):
        argv = ["eval", "--checkpoint", str(trained / "checkpoints" / "best.ckpt")]
        argv += ["--data", str(folder), "--out", str(tmp_path / name)]
        argv += ["--no-write-card", "--bootstrap", "0", "--no-report"]
        assert main(argv) == 0
        figures[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert figures["shards"]["per_class"] == figures["memmap"]["per_class"]
    assert figures["shards"]["macro"] == figures["memmap"]["macro"]


@pytest.fixture
def offline_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials anyone set up, no instance metadata, local copies under ``tmp_path``."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cxrkit-cache"))
    return tmp_path


@needs_litdata
@pytest.mark.parametrize("credentials", [False, True], ids=["no-credentials", "no-endpoint"])
def test_an_unreachable_uri_is_one_line_and_exit_2_in_seconds(
    credentials: bool,
    offline_s3: Path,
    phantom: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if credentials:  # credentials, but the endpoint refuses connections (nothing goes out)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    commands = [
        ["train", "--config", "demo", "--data", URI, "--out", str(offline_s3 / "run")],
        ["prepare", "nih", "--root", str(phantom), "--out", URI, "--format", "litdata"],
    ]
    for argv in commands:
        started = time.perf_counter()
        assert main(argv) == 2
        assert time.perf_counter() - started < 60
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"cannot reach {URI}" in err and "(tried to " in err, err
        assert "credentials" in err and "network" in err
        assert "local folder" in err
    assert not (offline_s3 / "run").exists(), "nothing written before the data was reachable"


def test_object_store_paths_that_cannot_work_are_refused(phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="only --format litdata writes there"):
        prepare("nih", phantom, URI, size=64, progress=False)
    with pytest.raises(UserError, match=r"s3 or gs URIs .* got ftp://"):
        load_manifest("ftp://host/prep")
    with pytest.raises(UserError, match="names no bucket"):
        load_manifest("s3://")
    with pytest.raises(UserError, match="unknown --format 'litdta'; did you mean 'litdata'"):
        prepare("nih", phantom, tmp_path / "p", size=64, cache_format="litdta")
    # A URI that went through Path() (which folds "//") is still a URI, not a local folder.
    assert as_location(Path(URI)) == URI and as_location(URI + "/") == URI
    assert as_location("prep/s3:/x") == Path("prep/s3:/x")
    with pytest.raises(UserError, match="read from a local disk only"):
        open_images("memmap", f"{URI}/cache/images_64.u8", 10, 64)


def test_without_litdata_every_path_says_how_to_install_it(
    phantom: Path,
    shards: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "litdata", None)  # `import litdata` raises ImportError
    monkeypatch.setenv("CXRKIT_CACHE", str(tmp_path / "cxrkit-cache"))
    with pytest.raises(UserError, match=r"--format litdata .* pip install 'cxrkit\[scale\]'"):
        _prepare_shards(phantom, tmp_path / "p")
    assert not (tmp_path / "p").exists(), "refused before the folder is claimed"
    argv = ["prepare", "nih", "--root", str(phantom), "--out", str(tmp_path / "q")]
    assert main([*argv, "--format", "litdata"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and INSTALL in err
    with pytest.raises(UserError, match=r"reading the LitData shards .* pip install"):
        load_manifest(shards).cache()
    with pytest.raises(UserError, match=r"pip install 'cxrkit\[scale\]'"):
        load_manifest(URI)


@needs_litdata
def test_prepare_resumes_and_overwrites_as_the_memmap_path_does(
    phantom: Path,
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "prep"
    n = load_manifest(prepared).header["cache"]["n"]

    def killed(*args: object, **kwargs: object) -> None:
        (out / "shards").mkdir()
        (out / "shards" / "chunk-0-0.bin").write_bytes(b"half a chunk")
        raise KeyboardInterrupt  # as if stopped while writing the shards

    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "write_shards", killed)
        with pytest.raises(KeyboardInterrupt):
            _prepare_shards(phantom, out)
    assert (out / MARKER).is_file() and not (out / HEADER_NAME).exists()
    assert all(f.is_file() for f in cache_paths(out / "cache", 64))

    builds = []
    real_build = prepare_module.build_cache

    def spy(*args: object, **kwargs: object) -> object:
        builds.append(real_build(*args, **kwargs))
        return builds[-1]

    monkeypatch.setattr(prepare_module, "build_cache", spy)
    m = _prepare_shards(phantom, out)  # resumes: nothing decoded twice, the shards rewritten
    assert builds[-1].resumed == n
    slots = np.arange(n)
    np.testing.assert_array_equal(m.cache()[slots], load_manifest(prepared).cache()[slots])

    with pytest.raises(UserError, match="already holds a cxrkit prepared dataset.*--overwrite"):
        _prepare_shards(phantom, out)
    argv = ["prepare", "nih", "--root", str(phantom), "--out", str(out), "--size", "64"]
    assert main([*argv, "--format", "litdata", "--overwrite", "--workers", "1"]) == 0
    assert "images: LitData shards in" in capsys.readouterr().out
    assert builds[-1].resumed == 0, "--overwrite starts over"
    np.testing.assert_array_equal(load_manifest(out).cache()[slots], m.cache()[slots])

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write"):
        _prepare_shards(phantom, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_older_manifests_load_and_an_unknown_format_is_named(
    prepared: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    header = json.loads((copy / HEADER_NAME).read_text())
    assert "format" not in header["cache"]  # as every manifest before shards
    assert cache_spec(load_manifest(copy)).format == "memmap"
    header["cache"]["format"] = "zarr"
    (copy / HEADER_NAME).write_text(json.dumps(header))
    with pytest.raises(UserError, match="unknown image cache format 'zarr'"):
        load_manifest(copy).cache()


@needs_litdata
@pytest.mark.slow
def test_two_process_ddp_from_shards_validates_like_one_process_on_the_memmap(
    tmp_path: Path,
) -> None:
    """As tests/train/test_ddp.py, with the DDP run reading shards in loader workers."""
    root = tmp_path / "data"
    generate_dataset(root / "nih", n_patients=60, size=64, seed=3, progress=False)
    split = SplitPolicy(0.3)
    prepare("nih", root / "nih", root / "memmap", size=64, split=split, progress=False)
    _prepare_shards(root / "nih", root / "shards", split=split)
    common = [
        "model.backbone=convnext_atto", "model.pretrained=false", "data.image_size=32",
        "data.batch_size=10", "data.findings=null", "optim.lr=0", "trainer.max_epochs=1",
        "trainer.limit_train_batches=0.25", "trainer.accelerator=cpu",
        "trainer.precision=32-true", "trainer.patience=0",
    ]  # fmt: skip
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("SLURM")}
    env["OMP_NUM_THREADS"] = "1"
    aurocs = []
    for data, extra in (
        ("memmap", ["trainer.devices=1", "data.num_workers=0"]),
        ("shards", ["trainer.devices=2", "trainer.strategy=ddp", "data.num_workers=1"]),
    ):
        out = tmp_path / data / "run"
        cmd = [sys.executable, "-m", "cxrkit.cli", "train", "--config", "demo"]
        cmd += ["--data", str(root / data), "--out", str(out), "--set", *common, *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=500)
        assert done.returncode == 0, done.stderr[-4000:]
        logged = pd.read_csv(out / "logs" / "metrics.csv")["val_macro_auroc"].dropna()
        aurocs.append(float(logged.iloc[0]))
    assert aurocs[1] == pytest.approx(aurocs[0], abs=1e-6)
