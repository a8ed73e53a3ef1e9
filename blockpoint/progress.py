"""Progress bars for the CLI's long work, on standard error, only where a person watches.

A bar is shown when standard error is a terminal, the command was not asked for ``--json``
and ``BLOCKPOINT_PROGRESS`` is not ``0``; otherwise every call is a no-op, so output piped to
a file or parsed as JSON never carries a bar. The library itself never prints: it reports
its work to a watcher (:mod:`blockstore.work`: checkpoints, restores, ``verify_lease``, gc),
and a command turns those reports into a bar (tqdm: rate, ETA and terminal width handled
for us).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .table import printable

__all__ = ["Bar", "bar", "wanted"]


def wanted(as_json: bool = False) -> bool:
    """True when a bar would be seen: a terminal on stderr, no ``--json``, not switched off."""
    if as_json or os.environ.get("BLOCKPOINT_PROGRESS", "1") == "0":
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Bar:
    """What a command updates; a no-op when no bar is shown."""

    def __init__(self, impl: Any | None) -> None:
        self._impl = impl

    def update(self, n: float) -> None:
        if self._impl is not None and n:
            self._impl.update(n)

    def note(self, text: str) -> None:
        """Show ``text`` beside the bar (e.g. the lease being read)."""
        if self._impl is not None:
            self._impl.set_postfix_str(printable(text)[:40], refresh=False)


@contextmanager
def bar(total: float | None, desc: str, *, unit: str = "B", as_json: bool = False) -> Iterator[Bar]:
    """A bar of ``total`` ``unit`` (bytes scale to KiB/MiB) for the ``with`` block."""
    if not wanted(as_json):
        yield Bar(None)
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B",
              unit_divisor=1024 if unit == "B" else 1000, file=sys.stderr, leave=False,
              dynamic_ncols=True) as impl:
        yield Bar(impl)
