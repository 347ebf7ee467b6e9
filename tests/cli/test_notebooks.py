"""The tutorial notebooks in ``notebooks/``: stored without outputs (fast check), and executed in
order with nbclient into a temporary work folder (slow: ``make test-all``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = [
    ROOT / "notebooks" / name
    for name in ("01_explore.ipynb", "02_train.ipynb", "03_eval_cam.ipynb")
]
CELL_TIMEOUT_S = 300


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path: Path) -> None:
    """No outputs or execution counts in git (keeps the files small and diffs readable), and
    the first cell says what the notebook shows and that this is research software."""
    nb = json.loads(path.read_text())
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    assert "not a medical device" in "".join(first["source"])
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"cell {i} has output"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def _kernel_spec_dir(tmp_path: Path) -> Path:
    """A ``python3`` kernel spec running this interpreter (the venv with cxrkit), so the test does
    not depend on which ``python3`` kernel, if any, is registered for the user."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3 (cxrkit test)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return tmp_path / "jupyter"


@pytest.mark.slow
def test_notebooks_execute_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    work = tmp_path / "work"
    monkeypatch.setenv("CXRKIT_NB_WORKDIR", str(work))
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec_dir(tmp_path)))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    executed = tmp_path / "executed"
    executed.mkdir()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            kernel_name="python3",
            timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(ROOT)}},  # cwd = repository root
        )
        try:
            client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
        finally:
            nbformat.write(nb, executed / path.name)  # for a look after a failure
        errors = [
            out
            for cell in nb.cells
            if cell.cell_type == "code"
            for out in cell.outputs
            if out.output_type == "error"
        ]
        assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
        images = [
            out
            for cell in nb.cells
            if cell.cell_type == "code"
            for out in cell.outputs
            if "image/png" in out.get("data", {})
        ]
        assert images, f"{path.name} displayed no figure"

    for rel in (
        "prepared/manifest.json",
        "run/checkpoints/best.ckpt",
        "run/logs/metrics.csv",
        "eval/metrics.json",
        "eval/per_class.csv",
        "eval/report.html",
    ):
        assert (work / rel).is_file(), rel
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["bootstrap"]["n"] == 200
    assert metrics["subgroups"]["by"] == ["sex"]
    overlays = sorted((work / "cam").glob("*.png"))
    assert len(overlays) >= 2, overlays
