"""The ``cxrkit`` command line: :mod:`~cxrkit.cli.parser` (arguments, ``main``),
:mod:`~cxrkit.cli.commands` (one function per sub-command, calling library functions),
:mod:`~cxrkit.cli.evaluate` (``eval`` and ``compare``: arguments and runs),
:mod:`~cxrkit.cli.bench` (``cxrkit bench``) and :mod:`~cxrkit.cli.demo` (``cxrkit demo``).

The top of the import graph: it may import every package, and no package imports it.
"""

from cxrkit.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {"parser": ["build_parser", "main"]})
