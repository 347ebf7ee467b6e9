"""User-facing errors and name look-ups.

A :class:`UserError` is something the user can fix (a missing file, a bad column, an unknown
name). The CLI prints its message and exits with code 2, without a traceback. Everything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error caused by the user's input; the message says what was expected."""


def did_you_mean(name: str, choices: Iterable[str], *, what: str = "name") -> UserError:
    """Build the error for an unknown ``name``: the closest valid names, then the full list.

    >>> str(did_you_mean("densnet121", ["densenet121", "resnet50"], what="backbone"))
    "unknown backbone 'densnet121'; did you mean 'densenet121'? Valid: densenet121, resnet50"
    """
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    listing = ", ".join(choices) if len(choices) <= 40 else ", ".join(choices[:40]) + ", ..."
    return UserError(f"unknown {what} {name!r}{hint} Valid: {listing}")
