"""`safe_pickle`: pickled modules read as tensors, nothing of the file run, refusals named."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cxrkit.errors import UserError
from cxrkit.models.safe_pickle import read_weights

FORMATS = {
    "zip": {},
    "legacy": {"_use_new_zipfile_serialization": False},
    "legacy-protocol-1": {"_use_new_zipfile_serialization": False, "pickle_protocol": 1},
}


class Net(nn.Module):
    """A module class outside the allowlist (refused) built of allowlisted children."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)
        self.register_buffer("scratch", torch.ones(2), persistent=False)


def _sequential() -> nn.Sequential:
    """Allowlisted classes only: a bias-less conv (a None parameter), BatchNorm buffers, a
    non-persistent buffer."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)
    )
    model[1].running_mean.uniform_()
    model[4].register_buffer("scratch", torch.ones(3), persistent=False)
    return model


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_pickled_module_reads_as_its_state_dict(tmp_path: Path, fmt: str) -> None:
    model = _sequential()
    path = tmp_path / "m.pt"
    torch.save(model, path, **FORMATS[fmt])
    with pytest.raises(Exception):  # noqa: B017 - the premise: torch's safe loader refuses it
        torch.load(path, weights_only=True)
    read = read_weights(path)
    expected = model.state_dict()
    assert read.container == "torch.nn.modules.container.Sequential"
    assert list(read.state) == list(expected)  # same names and order, scratch and bias skipped
    for key, value in expected.items():
        assert torch.equal(read.state[key], value), key


def test_a_state_dict_file_is_read_with_weights_only(tmp_path: Path) -> None:
    model = _sequential()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    for name in ("sd.pt", "ckpt.pt"):
        read = read_weights(tmp_path / name)
        assert read.container == "state dict"
        assert read.state.keys() == model.state_dict().keys()


class Payload:
    """Unpickling this calls ``fn(arg)``: what a malicious weights file does."""

    def __init__(self, fn: object, arg: str) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.fn, (self.arg,)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("how", ["system", "eval"])
def test_code_in_the_file_is_refused_not_run(tmp_path: Path, fmt: str, how: str) -> None:
    marker = tmp_path / "pwned"
    model = _sequential()
    if how == "system":
        model.payload = Payload(os.system, f"touch {marker}")  # pickled as posix.system
        named = f"{os.system.__module__}.system"
    else:
        model.payload = Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")
        named = "builtins.eval"
    path = tmp_path / "evil.pt"
    torch.save(model, path, **FORMATS[fmt])
    with pytest.raises(UserError) as err:
        read_weights(path)
    message = str(err.value)
    assert f"refused to unpickle {named} from {path}" in message and "\n" not in message
    assert not marker.exists()


def test_a_module_class_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    torch.save(Net(), tmp_path / "net.pt")
    with pytest.raises(UserError) as err:
        read_weights(tmp_path / "net.pt")
    assert str(err.value).startswith(f"refused to unpickle {Net.__module__}.Net from ")


def test_non_torch_truncated_and_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    torch.save(_sequential(), tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("notes.pt", "cut.pt", "empty.pt"):
        with pytest.raises(UserError, match="is not a readable torch weights file") as err:
            read_weights(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        read_weights(tmp_path / "absent.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds a list"):
        read_weights(tmp_path / "list.pt")


def test_reading_imports_neither_torchvision_nor_torchxrayvision(tmp_path: Path) -> None:
    txv = pytest.importorskip("torchxrayvision")
    path = tmp_path / "txv.pt"
    torch.save(txv.models.DenseNet(weights=None), path, _use_new_zipfile_serialization=False)
    code = (
        "import sys; from cxrkit.models.safe_pickle import read_weights; "
        f"w = read_weights({str(path)!r}); "
        "print(w.container, len(w.state), "
        "sorted(m for m in sys.modules if m.startswith(('torchvision', 'torchxrayvision'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["torchxrayvision.models.DenseNet", "727", "[]"]
