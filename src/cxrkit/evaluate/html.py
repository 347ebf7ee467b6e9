"""HTML building blocks of ``report.html`` (:mod:`cxrkit.evaluate.report`): tables, numbers
with their intervals, notes and embedded figures. Every function returns an HTML string; text
passed as ``html`` or as a table cell must already be escaped."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from cxrkit.evaluate.plots import finite

NA = '<span class="na">n/a</span>'


def note(html: str) -> str:
    """A grey explanatory paragraph."""
    return f'<p class="note">{html}</p>'


def table(heads: list[str], rows: list[list], marks: Sequence = (), text_cols: int = 1) -> str:
    """An HTML table; ``marks`` are row CSS classes, the first ``text_cols`` columns are text
    (left-aligned), the rest numbers (right-aligned)."""

    def tr(cells: list[str], tag: str, mark: str = "") -> str:
        cls = [' class="t"' if i < text_cols else "" for i in range(len(cells))]
        tds = "".join(f"<{tag}{c}>{cell}</{tag}>" for c, cell in zip(cls, cells, strict=True))
        return f'<tr class="{mark}">{tds}</tr>' if mark else f"<tr>{tds}</tr>"

    body = "".join(tr(r, "td", m) for r, m in zip(rows, [*marks, *[""] * len(rows)], strict=False))
    head = tr(heads, "th")
    return f'<div class="scroll"><table><thead>{head}</thead><tbody>{body}</tbody></table></div>'


def figure(uri: str | None, caption: str) -> str:
    """An embedded PNG with its caption, or a note when there was nothing to plot."""
    if uri is None:
        return note("Not plotted: no class has both positive and negative labels.")
    text = escape(caption)
    return f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def num(value: Any, ci: Any = None) -> str:
    """A number to 3 decimals ("n/a" for None/NaN) with an optional CI below it."""
    if not finite(value):
        return NA
    text = f"{value:.3f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(finite(v) for v in ci):
        text += f'<span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>'
    return text


def integer(value: Any) -> str:
    """A count with thousands separators, "n/a" when it is not a finite number."""
    return f"{int(value):,}" if finite(value) else NA
