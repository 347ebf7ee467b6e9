"""``cxrkit serve``: a REST API and a web page for one model, on loopback by default.

:func:`create_app` builds the FastAPI app around an :class:`Engine` (a loaded model) within
:class:`ServeSettings`; :func:`run_server` runs it with uvicorn. See ``docs/serve.md``.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "app": ["create_app", "run_server"],
        "engine": ["DISCLAIMER", "Engine"],
        "limits": ["TOKEN_ENV", "ServeSettings", "token_from"],
    },
)
