"""``cxrkit embed``: frozen embeddings of a prepared folder, float16, resumable, refused when
another model or other data would be mixed into a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrkit.cli.parser import main
from cxrkit.data import embeddings as store
from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.embed import backbone_model, embed
from cxrkit.deploy.predictor import Predictor
from cxrkit.models.checkpoint import file_sha256, load_checkpoint

ARGS = ["--backbone", "resnet18", "--no-pretrained", "--image-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def emb(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "emb"
    assert (
        main(["embed", *ARGS, "--precision", "fp32", "--data", str(prepared), "--out", str(out)])
        == 0
    )
    return out


def test_embeddings_are_the_predictors_features_in_float16(emb: Path, prepared: Path) -> None:
    e = store.open_embeddings(emb)
    manifest = load_manifest(prepared)
    assert e.array.dtype == np.float16 and e.array.shape == (len(manifest.table), 512)
    assert list(e.rows["image_id"]) == list(manifest.table["image_id"])
    assert list(e.rows["split"]) == list(manifest.table["split"])
    m = manifest
    loaded = backbone_model("resnet18", m.findings, 64, None, pretrained=False, image_size=64)
    expected = Predictor(loaded, precision="fp32").embed_manifest(m, m.table)
    np.testing.assert_allclose(e.array, expected, rtol=2e-3, atol=2e-3)
    r = e.record
    assert r["model"] == {"backbone": "resnet18", "pretrained": False}
    assert r["dim"] == 512 and r["input_size"] == 64 and r["precision"] == "fp32"
    assert r["normalization"]["letterbox_size"] == 64 and r["manifest"]["sha256"]
    assert r["manifest"]["sha256"] == store.manifest_fingerprint(manifest)
    card = json.loads((emb / store.ENCODER_CARD).read_text())
    assert card["files"][store.ENCODER]["sha256"] == file_sha256(emb / store.ENCODER)
    assert card["backbone"] == "resnet18" and card["input_size"] == 64


def test_a_finished_folder_is_done_and_another_model_is_refused(
    emb: Path, prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["embed", "--data", str(prepared), "--out", str(emb), "--precision", "fp32"]
    assert main([*base, *ARGS]) == 0
    assert "nothing to do" in capsys.readouterr().out
    other = ["--backbone", "resnet10t", "--no-pretrained", "--image-size", "64"]
    assert main([*base, *other]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "model" in err


def test_an_interrupted_run_continues_where_it_stopped(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    kwargs = dict(backbone="resnet18", pretrained=False, image_size=64, precision="fp32")
    first = embed(prepared, out, progress=False, device="cpu", **kwargs)
    full = np.array(store.open_embeddings(out).array)
    # A kill after the first rows: their state says written, the rest not, no "complete".
    state = np.memmap(out / store.STATE, dtype=np.uint8, mode="r+")
    state[10:] = store.TODO
    state.flush()
    array = np.memmap(out / store.ARRAY, dtype=np.float16, mode="r+", shape=full.shape)
    array[10:] = 0
    array.flush()
    record = json.loads((out / store.RECORD).read_text())
    (out / store.RECORD).write_text(json.dumps({**record, "complete": False}))
    with pytest.raises(Exception, match="incomplete"):
        store.open_embeddings(out)
    again = embed(prepared, out, progress=False, device="cpu", **kwargs)
    assert (again.resumed, again.embedded) == (10, first.n - 10)
    np.testing.assert_array_equal(store.open_embeddings(out).array, full)


def test_a_checkpoint_embeds_its_own_features(
    trained: Path, prepared: Path, tmp_path: Path
) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    done = embed(
        prepared,
        tmp_path / "e",
        checkpoint=ckpt,
        splits=("val",),
        precision="fp32",
        device="cpu",
        progress=False,
    )
    e = store.open_embeddings(done.out)
    m = load_manifest(prepared)
    expected = Predictor(load_checkpoint(ckpt), precision="fp32").embed_manifest(m, m.rows("val"))
    np.testing.assert_allclose(e.array, expected, rtol=2e-3, atol=2e-3)
    assert set(e.rows["split"]) == {"val"}
    assert e.record["model"]["sha256"] == file_sha256(ckpt)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--checkpoint", "x.ckpt", "--image-size", "64"], "apply to --backbone"),
        (["--backbone", "resnet18", "--no-pretrained", "--splits", "train,nope"], "nope"),
        (["--backbone", "resnet18", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_options_that_cannot_apply_are_refused_in_one_line(
    extra: list[str],
    message: str,
    prepared: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["embed", "--data", str(prepared), "--out", str(tmp_path / "e"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
