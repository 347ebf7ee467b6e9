"""`infer`: sources, worker decoding, resume, DICOM tags, bf16 and TTA."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrkit.cli.parser import main
from cxrkit.data.manifest import load_manifest
from cxrkit.deploy.batch import _Decode, decoded_batches, predict_paths, write_predictions
from cxrkit.deploy.predictor import Predictor
from cxrkit.deploy.sources import resolve_sources
from cxrkit.errors import UserError


@pytest.fixture(scope="module")
def predictor(trained: Path) -> Predictor:
    return Predictor.from_checkpoint(trained / "checkpoints" / "best.ckpt", batch_size=4)


@pytest.fixture()
def images(prepared: Path) -> list[Path]:
    return [Path(p) for p in load_manifest(prepared).rows("test")["path"].iloc[:6]]


def test_sources_folder_glob_txt_csv(images: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for p in images[:3]:
        shutil.copy(p, folder / p.name)
    assert [p.name for p in resolve_sources(tmp_path / "imgs")] == sorted(
        p.name for p in images[:3]
    )
    assert len(resolve_sources(str(tmp_path / "imgs" / "**" / "*.png"))) == 3
    (tmp_path / "list.txt").write_text("\n".join(f"imgs/sub/{p.name}" for p in images[:2]))
    assert resolve_sources(tmp_path / "list.txt") == [folder / p.name for p in images[:2]]
    pd.DataFrame({"Path": [str(p) for p in images[:4]]}).to_csv(tmp_path / "l.csv", index=False)
    assert resolve_sources(tmp_path / "l.csv") == images[:4]
    with pytest.raises(UserError, match="matches no file"):
        resolve_sources(str(tmp_path / "*.dcm"))
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="no path column"):
        resolve_sources(tmp_path / "bad.csv")


def test_worker_decoding_gives_the_same_rows_in_order(
    predictor: Predictor, images: list[Path]
) -> None:
    here = list(predict_paths(predictor, images))
    workers = list(predict_paths(predictor, images, workers=2))
    assert [p.path for p in workers] == [str(p) for p in images]
    np.testing.assert_allclose(
        np.stack([p.probs for p in workers]), np.stack([p.probs for p in here]), atol=1e-6
    )


def test_thread_decoding_keeps_order_errors_and_batches(
    predictor: Predictor, images: list[Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [*images[:3], broken, *images[3:]]
    dataset = _Decode(paths, predictor.letterbox_size, None, ())
    batches = list(decoded_batches(dataset, 3, workers=0))
    assert [len(b) for b in batches] == [3, 3, 1]
    items = [it for b in batches for it in b]
    assert [it.index for it in items] == list(range(len(paths)))
    assert items[3].pixels is None and items[3].error
    for it in items[:3]:
        np.testing.assert_array_equal(it.pixels, dataset[it.index].pixels)
    assert list(decoded_batches(_Decode([], 64, None, ()), 3, workers=0)) == []


class _RecordPriority(_Decode):
    """Records the CPU priority of the thread that decodes each item."""

    seen: list[int]

    def __getitem__(self, i: int):  # noqa: ANN204 - as the parent
        self.seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return super().__getitem__(i)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_decoding_threads_yield_the_cores_to_the_model(images: list[Path]) -> None:
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    dataset = _RecordPriority(images, 64, None, ())
    dataset.seen = []
    items = [it for b in decoded_batches(dataset, 2, workers=0) for it in b]
    assert len(images) > 2 and [it.index for it in items] == list(range(len(images)))
    assert dataset.seen == [19] * len(images)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before


def test_resume_neither_redoes_nor_duplicates(
    predictor: Predictor, images: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "p.csv"
    write_predictions(predictor, images[:2], out, progress=False)
    with pytest.raises(UserError, match="--resume"):
        write_predictions(predictor, images, out, progress=False)
    summary = write_predictions(predictor, images, out, resume=True, progress=False)
    assert (summary.ok, summary.skipped) == (4, 2)
    table = pd.read_csv(out)
    assert table["path"].tolist() == [str(p) for p in images]
    full = tmp_path / "full.csv"
    write_predictions(predictor, images, full, progress=False)
    pd.testing.assert_frame_equal(table, pd.read_csv(full))


def test_dicom_tags_only_when_asked(
    predictor: Predictor, shared_data: Path, tmp_path: Path
) -> None:
    dcm = shared_data / "formats" / "dicom" / "siim_pneumothorax_sample.dcm"
    out = tmp_path / "p.csv"
    write_predictions(predictor, [dcm], out, progress=False)
    assert not any("Patient" in c for c in pd.read_csv(out).columns)
    write_predictions(
        predictor, [dcm], out, overwrite=True, dicom_tags=("PatientID", "Modality"), progress=False
    )
    row = pd.read_csv(out, dtype=str).iloc[0]
    assert row["status"] == "ok" and row["Modality"] == "CR" and isinstance(row["PatientID"], str)


def test_bf16_and_tta_stay_close_to_fp32(trained: Path, images: list[Path]) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    probs = {}
    for name, kwargs in {
        "fp32": {"precision": "fp32"},
        "bf16": {"precision": "bf16"},
        "tta": {"precision": "fp32", "tta": True},
    }.items():
        p = Predictor.from_checkpoint(ckpt, **kwargs)
        probs[name] = np.stack([x.probs for x in predict_paths(p, images)])
    assert np.abs(probs["bf16"] - probs["fp32"]).max() < 0.01
    assert not np.allclose(probs["tta"], probs["fp32"])
    assert np.abs(probs["tta"] - probs["fp32"]).max() < 0.25


def test_an_output_never_replaces_an_input_or_a_foreign_file(
    predictor: Predictor, images: list[Path], tmp_path: Path
) -> None:
    victim = tmp_path / images[0].name
    shutil.copy(images[0], victim)
    before = victim.read_bytes()
    with pytest.raises(UserError, match="is one of the input images"):
        write_predictions(predictor, [victim], victim, overwrite=True, progress=False)
    notes = tmp_path / "notes.csv"
    notes.write_text("patient,comment\n1,keep me\n")
    with pytest.raises(UserError, match="is not a cxrkit predictions CSV"):
        write_predictions(predictor, images[:2], notes, overwrite=True, progress=False)
    assert victim.read_bytes() == before
    assert notes.read_text() == "patient,comment\n1,keep me\n"
    out = tmp_path / "preds.csv"
    write_predictions(predictor, images[:2], out, progress=False)
    write_predictions(predictor, images[:3], out, overwrite=True, progress=False)  # its own CSV
    assert len(pd.read_csv(out)) == 3


def test_resume_after_a_kill_mid_row_and_retry_errors(
    predictor: Predictor, images: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    paths = [*images[:4], bad]
    out = tmp_path / "preds.csv"
    write_predictions(predictor, paths, out, progress=False)
    full = pd.read_csv(out)
    assert (full["status"] != "ok").sum() == 1
    text = out.read_text()
    out.write_text(text[: text.rindex(str(images[3]))] + str(images[3]) + ",images/x,o")  # kill
    summary = write_predictions(predictor, paths, out, resume=True, progress=False)
    resumed = pd.read_csv(out)
    # the cut row and the one after it were redone, nothing else
    assert (summary.ok, summary.failed, summary.skipped) == (1, 1, 3)
    assert sorted(resumed["path"]) == sorted(map(str, paths))  # every image exactly once
    pd.testing.assert_frame_equal(
        resumed.sort_values("path").reset_index(drop=True),
        full.sort_values("path").reset_index(drop=True),
    )
    bad.write_bytes(images[0].read_bytes())  # the broken file is fixed
    summary = write_predictions(
        predictor, paths, out, resume=True, retry_errors=True, progress=False
    )
    assert summary.ok == 1 and summary.failed == 0
    assert (pd.read_csv(out)["status"] == "ok").all() and len(pd.read_csv(out)) == 5


def test_resume_refuses_another_model_or_other_options(
    trained: Path, images: list[Path], tmp_path: Path
) -> None:
    import json

    ckpt = trained / "checkpoints" / "best.ckpt"
    out = tmp_path / "preds.csv"
    write_predictions(Predictor.from_checkpoint(ckpt), images[:2], out, progress=False)
    record = json.loads((tmp_path / "preds.csv.json").read_text())
    assert record["tta"] is False and len(record["model_sha256"]) == 64
    with pytest.raises(UserError, match=r"would mix two runs \(tta: False then, True now\)"):
        write_predictions(
            Predictor.from_checkpoint(ckpt, tta=True), images, out, resume=True, progress=False
        )
    other = tmp_path / "other.ckpt"
    shutil.copy(ckpt, other)
    with other.open("ab") as fh:  # another file: another model as far as anyone can tell
        fh.write(b"\0")
    with pytest.raises(UserError, match="model_sha256"):
        write_predictions(Predictor.from_checkpoint(other), images, out, resume=True,
                          progress=False)  # fmt: skip
    assert len(pd.read_csv(out)) == 2  # nothing appended
    (tmp_path / "preds.csv.json").unlink()
    with pytest.raises(UserError, match="cannot be checked"):
        write_predictions(Predictor.from_checkpoint(ckpt), images, out, resume=True,
                          progress=False)  # fmt: skip


def _source_with_a_photo(images: list[Path], folder: Path) -> Path:
    """Four phantom films and one colour picture (a hue gradient) in ``folder``."""
    import cv2

    folder.mkdir()
    for p in images[:4]:
        shutil.copy(p, folder / p.name)
    hue = np.tile(np.linspace(0, 179, 256, dtype=np.uint8), (256, 1))
    hsv = np.dstack([hue, np.full_like(hue, 200), np.full_like(hue, 200)])
    cv2.imwrite(str(folder / "photo.png"), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))
    return folder


def test_gate_columns_and_refuse_ood(
    gated: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _source_with_a_photo(images, tmp_path / "src")
    out = tmp_path / "preds.csv"
    assert main(["infer", "--checkpoint", str(gated), "--source", str(src), "--out", str(out)]) == 0
    assert "no input gate" not in capsys.readouterr().err
    table = pd.read_csv(out).set_index("image_id")
    assert list(table.columns[-2:]) == ["ood_score", "in_distribution"]
    assert (table["status"] == "ok").all()  # flagged, but predicted without --refuse-ood
    assert table.loc["photo.png", "in_distribution"] == 0
    assert table.loc["photo.png", "ood_score"] == np.inf
    films = table.drop(index="photo.png")
    assert np.isfinite(films["ood_score"]).all() and films["in_distribution"].isin([0, 1]).all()
    refused = tmp_path / "refused.csv"
    args = ["infer", "--checkpoint", str(gated), "--source", str(src), "--out", str(refused)]
    assert main([*args, "--refuse-ood"]) == 3  # the partial-failure exit code
    table = pd.read_csv(refused).set_index("image_id")
    status = table.loc["photo.png", "status"]
    assert status.startswith("error: outside the training distribution (colour photograph")
    assert table.loc["photo.png", [c for c in table if c.startswith("prob_")]].isna().all()
    assert table.loc["photo.png", "in_distribution"] == 0  # the gate's cells are kept
    record = json.loads((tmp_path / "refused.csv.json").read_text())
    assert record["refuse_ood"] is True and record["input_gate"]["false_alarm_rate"] == 0.1


def test_a_model_without_gate_still_predicts_and_says_so(
    trained: Path, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = trained / "checkpoints" / "best.ckpt"
    out = tmp_path / "preds.csv"
    args = ["infer", "--checkpoint", str(ckpt), "--source", str(images[0].parent), "--out"]
    assert main([*args, str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("no input gate: fit one with `cxrkit gate --checkpoint ... --data ...`") == 1
    table = pd.read_csv(out)
    assert table["ood_score"].isna().all() and table["in_distribution"].isna().all()
    assert main([*args, str(tmp_path / "refused.csv"), "--refuse-ood"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--refuse-ood needs an input gate" in err


@pytest.mark.parametrize(
    "cores,cpu,cuda", [(1, 0, 0), (2, 0, 1), (4, 2, 3), (16, 4, 15), (64, 4, 16)]
)
def test_default_decoding_workers_follow_the_device(
    monkeypatch: pytest.MonkeyPatch, cores: int, cpu: int, cuda: int
) -> None:
    """The CPU keeps its cores for the model; a GPU gets every core but the main loop's."""
    import torch

    from cxrkit.deploy import backends

    monkeypatch.setattr(backends, "usable_cores", lambda: cores)
    assert backends.default_workers(torch.device("cpu")) == cpu
    assert backends.default_workers(torch.device("cuda", 0)) == cuda


@pytest.mark.parametrize("cores,processes,total", [(64, 4, 60), (64, 2, 32), (8, 4, 4), (4, 8, 0)])
def test_gpu_decoding_workers_are_a_total_that_every_gpu_process_shares(
    monkeypatch: pytest.MonkeyPatch, cores: int, processes: int, total: int
) -> None:
    """With N GPU processes on one machine the default is N times each one's share (its cores
    less its main loop, at most 16): 4 GPUs on 64 cores get 15 decoders each, where one cap
    of 16 divided by 4 gave them 4. The CPU default stays the one total."""
    import torch

    from cxrkit.deploy import backends

    monkeypatch.setattr(backends, "usable_cores", lambda: cores)
    assert backends.default_workers(torch.device("cuda", 0), processes) == total
    assert backends.default_workers(torch.device("cpu"), processes) == min(4, max(0, cores - 2))
