"""Tables for result objects: one column list gives both the text ``__repr__`` and the ``_repr_html_``.

    COLUMNS = (Col("layer", "name", "<16"), Col("weights", "size", ">9,d"))
    text_table(COLUMNS, rows, total={"layer": "total", "weights": 1234})
    html_table(COLUMNS, rows)

A column's ``spec`` is an f-string format spec: alignment and width are used by the
text table only, the rest (``",d"``, ``".3f"``) by both. A value without a type in
its spec (a shape, a name) is shown with ``str``. ``find_row`` is the lookup by name
that the reports' ``__getitem__`` share.
"""
from __future__ import annotations

import html
import re

from ._validate import caller, fail

__all__ = ["Col", "text_table", "html_table", "find_row"]

_SPEC = re.compile(r"([<>^]?)(\d*)(.*)")


class Col:
    """One column: ``title``, where its value comes from, and how it is shown.

    ``key``: a row's dict key, or a function of the row. ``spec``: a format spec such
    as ``"<18"`` or ``">9,d"``. ``clip``: shorten a longer text cell to the width
    (ending in ``...``); otherwise a long cell pushes the rest of its line to the right.
    """

    def __init__(self, title, key, spec="", *, clip=False):
        self.title, self.key, self.clip = title, key, clip
        align, width, self.fmt = _SPEC.fullmatch(spec).groups()
        self.align, self.width = align or "<", int(width or 0)

    def value(self, row):
        """This column's value in ``row``."""
        return self.key(row) if callable(self.key) else row[self.key]

    def show(self, v):
        """``v`` as the table shows it, without padding."""
        return str(v) if isinstance(v, str) or not self.fmt else format(v, self.fmt)

    def cell(self, v):
        """``v`` padded (and clipped) to the column's width; blank for ``None``."""
        s = "" if v is None else self.show(v)
        if self.clip and len(s) > self.width:
            s = s[:self.width - 3] + "..."
        return format(s, f"{self.align}{self.width}")


def text_table(columns, rows, *, total=None) -> str:
    """Header, a rule, one line per row; then a rule and the ``total`` row (a dict keyed by column title)."""
    head = " ".join(c.cell(c.title) for c in columns)
    lines = [head, "-" * len(head)]
    lines += [" ".join(c.cell(c.value(r)) for c in columns) for r in rows]
    if total is not None:
        lines += ["-" * len(head), " ".join(c.cell(total.get(c.title)) for c in columns)]
    return "\n".join(lines)


def html_table(columns, rows, *, total=None, caption=None) -> str:
    """The same table in HTML; the ``total`` row's values are header cells, its blanks empty cells."""
    def esc(c, v):
        return html.escape(c.show(v), quote=False)

    out = ["<table>"]
    if caption is not None:
        out.append(f"<caption>{html.escape(caption, quote=False)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(c.title, quote=False)}</th>" for c in columns) + "</tr>")
    out += ["<tr>" + "".join(f"<td>{esc(c, c.value(r))}</td>" for c in columns) + "</tr>" for r in rows]
    if total is not None:
        out.append("<tr>" + "".join("<td></td>" if total.get(c.title) is None else f"<th>{esc(c, total[c.title])}</th>"
                                    for c in columns) + "</tr>")
    out.append("</table>")
    return "".join(out)


def find_row(rows, key, value):
    """The first row whose ``key`` equals ``value``; a KeyError naming the choices if there is none."""
    for r in rows:
        if r[key] == value:
            return r
    fail(key, f"one of {[r[key] for r in rows]}", value, KeyError, where=caller(1))
