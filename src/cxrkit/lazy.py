"""Package ``__init__`` files that name their public API without importing it up front.

Each stage package (``cxrkit.data``, ``cxrkit.deploy``, ...) lists its API as
``{submodule: [names]}`` and calls :func:`attach`. ``from cxrkit.deploy import Predictor``
then imports ``cxrkit.deploy.predictor`` alone, on first use: importing one module of a
package never drags in its heavy siblings (``serve``'s FastAPI, ``report``'s matplotlib,
torch for the torch-free evaluation). The pattern is SPEC 1 of the Scientific Python
ecosystem (``lazy_loader``), as scikit-image and SciPy use it.

Code inside cxrkit imports each name from the module that defines it; the package names are
for users, notebooks and the docs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def attach(
    package: str, exports: dict[str, list[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` exporting, from each submodule
    ``module`` of ``exports``, the names listed for it (loaded on first access, then cached
    in the package's namespace)."""
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(where) | set(vars(sys.modules[package])))

    return __getattr__, __dir__, sorted(where)
