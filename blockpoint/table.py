"""Readable tables for the CLI (and ``--json`` for machines)."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = ["human_bytes", "local_time", "print_rows", "printable"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def local_time(t: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A wall-clock time (seconds since the epoch) as local time; ``?`` for anything no clock
    gives (missing, not a number, NaN, negative, out of range): the values come from headers
    and logs that an older version, a damaged record or anyone who can write the store made,
    and one bad value must not fail the whole table."""
    try:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                or t < 0:
            raise ValueError(t)
        return time.strftime(fmt, time.localtime(t))
    except (ValueError, OverflowError, OSError):
        return "?"


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``), for a terminal.

    The store refuses such names (``LeaseNameError``), but a record written by an older
    version, by hand or by anyone who can write a shared store could still hold one; printed
    raw it would forge table rows or drive the operator's terminal (escape sequences).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
               as_json: bool = False, out: TextIO | None = None, empty: str = "(none)") -> None:
    """Print ``rows`` as an aligned table of ``columns``, or as a JSON list."""
    out = out or sys.stdout
    if as_json:
        json.dump([_finite(dict(r)) for r in rows], out, indent=2, default=str)
        out.write("\n")
        return
    if not rows:
        out.write(empty + "\n")
        return
    # Every cell escaped: names and error texts come from the store, which anyone who can
    # write it controls (--json escapes them by itself).
    cells = [["" if r.get(c) is None else printable(str(r.get(c))) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float made ``None``: ``--json`` output stays
    strict JSON (``json.dump`` would write ``NaN``, which JSON parsers refuse), even for a
    forged or damaged header's fields."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
