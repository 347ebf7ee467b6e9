"""The package layout's rules (docs/architecture.md), checked on the source and in fresh processes.

* no import cycle between cxrkit modules, counting imports inside functions too;
* each stage package imports only the packages below it (the table in the docs);
* no module imports a private (``_name``) of another module, nor a name re-exported by a
  package ``__init__`` (code inside cxrkit imports from the defining module);
* predicting an image loads no training code; evaluating predictions loads neither torch nor
  timm.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cxrkit"

# What each top-level part of cxrkit may import (besides itself and the foundation modules).
FOUNDATION = {"cxrkit", "cxrkit.errors", "cxrkit.files", "cxrkit.lazy"}
ALLOWED = {
    "io": set(),
    "data": {"io"},
    "models": set(),
    "evaluate": {"data", "deploy", "models"},  # deploy/models: evaluate_checkpoint only
    "train": {"data", "models", "evaluate"},
    "deploy": {"io", "data", "models", "evaluate", "explain"},  # explain: serve's heatmaps
    "explain": {"io", "data", "models", "deploy"},
    "bench": {"io", "data", "models", "train", "deploy"},
    "cli": {"io", "data", "models", "train", "evaluate", "explain", "deploy", "bench"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {name for name, p in MODULES.items() if p.name == "__init__.py"}


def imports(name: str) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every cxrkit import in module ``name``,
    at any depth (function-level imports count)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:
                    found.append((full, None, node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return [f for f in found if f[0] == "cxrkit" or f[0].startswith("cxrkit.")]


GRAPH = {name: sorted({target for target, _, _ in imports(name)}) for name in MODULES}


def part(name: str) -> str:
    """``cxrkit.deploy.serve.app`` -> ``deploy``; foundation modules -> their own name."""
    return name if name in FOUNDATION else name.split(".")[1]


def test_every_module_is_in_a_stage_package_or_the_foundation() -> None:
    stray = [n for n in MODULES if n not in FOUNDATION and part(n) not in ALLOWED]
    assert stray == [], f"modules outside the documented packages: {stray}"


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in GRAPH.get(node, []):
            if target not in MODULES:
                continue
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for module in MODULES:
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_walker_sees_function_level_and_package_imports() -> None:
    """The cycle check is only as good as the graph: it must see the lazy imports too."""
    assert "cxrkit.deploy.predictor" in GRAPH["cxrkit.evaluate.runs"]  # inside a function
    assert "cxrkit.io.dicom" in GRAPH["cxrkit.io.images"]  # inside a function
    assert "cxrkit.data.datasets.nih" in GRAPH["cxrkit.data.datasets"]  # package __init__


def test_packages_import_only_the_layers_they_may() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name not in FOUNDATION
        for target in targets
        if target not in FOUNDATION
        and part(target) != part(name)
        and part(target) not in ALLOWED[part(name)]
    ]
    foundation = [
        f"{name} imports {t}" for name in FOUNDATION for t in GRAPH[name] if t not in FOUNDATION
    ]
    assert wrong + foundation == []


def test_no_private_names_or_package_reexports_are_imported_inside_cxrkit() -> None:
    bad = []
    for name in MODULES:
        for target, imported, line in imports(name):
            where = f"{MODULES[name].relative_to(SRC)}:{line}"
            if imported and imported.startswith("_") and imported != "__version__":
                bad.append(f"{where} imports private {target}.{imported}")
            if imported and target in PACKAGES and target != "cxrkit" and target != name:
                if not name.startswith(target + "."):  # a package's own __init__ aside
                    bad.append(f"{where} imports {imported} from package {target}")
    assert bad == []


def test_package_exports_resolve_and_never_shadow_a_submodule() -> None:
    """``from cxrkit.train import X`` must give the same object whatever was imported before:
    an exported name equal to a submodule's name would turn into the module once that
    submodule is imported."""
    import importlib

    for package in sorted(PACKAGES - {"cxrkit"}):
        module = importlib.import_module(package)
        submodules = {n.rpartition(".")[2] for n in MODULES if n.rpartition(".")[0] == package}
        exported = set(getattr(module, "__all__", []))
        assert exported & submodules == set(), package
        for name in exported:
            value = getattr(module, name)
            assert not isinstance(value, type(module)), f"{package}.{name} is a module"


def run_isolated(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_predicting_an_image_loads_no_training_code(trained: Path, phantom: Path) -> None:
    image = next(phantom.rglob("*.png"))
    seen = run_isolated(
        f"""
import json, sys
from cxrkit.deploy.batch import predict_paths
from cxrkit.deploy.predictor import Predictor
predictor = Predictor.from_checkpoint({str(trained / "checkpoints" / "best.ckpt")!r})
rows = list(predict_paths(predictor, [{str(image)!r}]))
loaded = sorted(m for m in sys.modules
                if m.split(".")[0] in ("lightning", "pytorch_lightning")
                or m.startswith(("cxrkit.train", "cxrkit.cli", "cxrkit.bench")))
print(json.dumps({{"rows": len(rows), "error": rows[0].error,
                   "finite": bool((rows[0].probs >= 0).all()), "loaded": loaded}}))
"""
    )
    assert seen == {"rows": 1, "error": None, "finite": True, "loaded": []}


def test_evaluating_predictions_imports_neither_torch_nor_timm(
    prepared: Path, tmp_path: Path
) -> None:
    from sklearn.metrics import roc_auc_score

    from cxrkit.data.manifest import load_manifest

    manifest = load_manifest(prepared)
    table = manifest.table
    rng = np.random.default_rng(0)
    preds = table[["image_id"]].copy()
    for finding in manifest.findings:
        preds[f"prob_{finding}"] = np.clip(
            table[finding].fillna(0).to_numpy() * 0.4 + rng.uniform(0, 0.6, len(table)), 0, 1
        )
    csv = tmp_path / "theirs.csv"
    preds.to_csv(csv, index=False)
    seen = run_isolated(
        f"""
import json, sys
from cxrkit.evaluate.runs import EvalOptions, evaluate_predictions
result = evaluate_predictions({str(csv)!r}, {str(prepared)!r}, {str(tmp_path / "ev")!r},
                              options=EvalOptions(n_boot=20, report=False, calibration="none"))
heavy = sorted(m for m in ("torch", "timm", "lightning") if m in sys.modules)
print(json.dumps({{"per_class": result.metrics["per_class"], "heavy": heavy}}))
"""
    )
    assert seen["heavy"] == []
    test = table["split"] == "test"
    finding = next(f for f in manifest.findings if table.loc[test, f].nunique() == 2)
    labelled = test & table[finding].notna()
    want = roc_auc_score(table.loc[labelled, finding], preds.loc[labelled, f"prob_{finding}"])
    assert seen["per_class"][finding]["auroc"] == pytest.approx(want, abs=1e-12)
