"""``cxrkit serve``: a REST API and a web page for one model, on loopback by default.

:func:`create_app` builds the FastAPI app around an :class:`Engine` (a loaded model) within
:class:`ServeSettings`; :func:`run_server` runs it with uvicorn. See ``docs/serve.md``.
"""

from cxrkit.serve.app import create_app, run_server
from cxrkit.serve.engine import DISCLAIMER, Engine
from cxrkit.serve.limits import TOKEN_ENV, ServeSettings, token_from

__all__ = [
    "DISCLAIMER",
    "TOKEN_ENV",
    "Engine",
    "ServeSettings",
    "create_app",
    "run_server",
    "token_from",
]
