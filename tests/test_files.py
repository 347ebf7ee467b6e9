"""cxrkit.files: output folders cxrkit may delete, strict JSON, atomic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cxrkit.errors import UserError
from cxrkit.files import (
    MARKER,
    claim_folder,
    folder_kind,
    json_float,
    remove_stale_temps,
    strict_json,
    write_json,
)


def test_claim_folder_marks_new_and_empty_folders(tmp_path: Path) -> None:
    made = claim_folder(tmp_path / "a" / "run", "run")
    assert folder_kind(made) == "run"
    assert json.loads((made / MARKER).read_text())["made_by"] == "cxrkit"
    (tmp_path / "empty").mkdir()
    assert folder_kind(claim_folder(tmp_path / "empty", "bundle")) == "bundle"


def test_overwrite_deletes_only_a_folder_cxrkit_made_of_that_kind(tmp_path: Path) -> None:
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    with pytest.raises(UserError, match=r"thesis is not empty and holds files cxrkit did not"):
        claim_folder(thesis, "run", overwrite=True)
    assert (thesis / "chapter1.tex").read_text() == "years of work"

    run = claim_folder(tmp_path / "run", "run")
    (run / "last.ckpt").write_text("x")
    with pytest.raises(UserError, match="already holds a cxrkit run; .* --overwrite"):
        claim_folder(run, "run")
    with pytest.raises(UserError, match="holds a cxrkit run folder; cxrkit replaces only a"):
        claim_folder(run, "prepared dataset", overwrite=True)  # another kind: kept
    assert (run / "last.ckpt").exists()
    claim_folder(run, "run", overwrite=True)
    assert not (run / "last.ckpt").exists() and folder_kind(run) == "run"


def test_resume_keeps_a_marked_folder_and_legacy_folders_are_recognised(tmp_path: Path) -> None:
    prep = claim_folder(tmp_path / "prep", "prepared dataset")
    (prep / "cache").mkdir()
    assert claim_folder(prep, "prepared dataset", resume=True) == prep
    assert (prep / "cache").is_dir()
    old = tmp_path / "old-bundle"  # written before markers existed
    old.mkdir()
    (old / "model_card.json").write_text(json.dumps({"format": "cxrkit-bundle/1"}))
    assert folder_kind(old) == "bundle"
    claim_folder(old, "bundle", overwrite=True)
    assert not (old / "model_card.json").exists()
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "model_card.json").write_text("{}")  # someone else's model_card.json
    assert folder_kind(fake) is None


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(UserError, match="is a file"):
        claim_folder(tmp_path / "x", "bundle", overwrite=True)


def test_strict_json_turns_non_finite_numbers_into_null(tmp_path: Path) -> None:
    assert json_float(float("nan")) is None and json_float(math.inf) is None
    assert json_float("0.5") == 0.5 and json_float("x") is None
    value = {"a": [1.0, float("nan"), (2, -math.inf)], 3: {"b": math.inf}}
    assert strict_json(value) == {"a": [1.0, None, [2, None]], "3": {"b": None}}
    write_json(tmp_path / "m.json", value)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text)["a"][1] is None
    (tmp_path / ".m.json.abc.tmp").write_text("half")
    assert remove_stale_temps(tmp_path) == [tmp_path / ".m.json.abc.tmp"]


def test_atomic_write_refuses_a_device_or_pipe(tmp_path: Path) -> None:
    """The rename would replace the device itself (``/dev/null`` turned into a file once)."""
    import os

    from cxrkit.files import atomic_write_text

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    assert not fifo.is_file() and fifo.exists()
    assert not list(tmp_path.glob(".*.tmp"))
