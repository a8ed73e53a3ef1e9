"""The demo's stream, held at its staged acts so each act lands while the stream runs.

The demo stages a node loss and a preemption at fractions of the stream. Staging one takes
time the stream does not wait for: a process kill is a Ray task that may first need a worker
process started on the victim's node, and a short stream on a fast machine can end before
it lands (the act then happens after the run and shows nothing). :class:`HeldSource` wraps
the generated source and, at each act's hold position, reads nothing *yet* until the act
is done - the followed-source protocol of :class:`~stages.pipeline.source.Source`
(``exhausted`` / ``wait_for_more``): the driver commits what it read and asks again, so
the commits the act waits for still happen. The records and positions are the inner
source's, so the output and the reference are unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from stages.pipeline.source import GeneratedSource

__all__ = ["HeldSource"]


class HeldSource:
    """``inner`` held at ``holds[i]`` (positions, ascending) until :meth:`release` was
    called ``i + 1`` times; :meth:`release_all` lifts every hold (the acts ended or failed)."""

    def __init__(self, inner: GeneratedSource, holds: list[int]) -> None:
        self.inner = inner
        self.holds = sorted(min(max(0, h), inner.n) for h in holds)
        self._released = 0
        self._cond = threading.Condition()

    def release(self) -> None:
        """The next act is done: lift the lowest hold still in place."""
        with self._cond:
            self._released += 1
            self._cond.notify_all()

    def release_all(self) -> None:
        with self._cond:
            self._released = len(self.holds)
            self._cond.notify_all()

    def _limit(self) -> int:
        with self._cond:
            return (self.holds[self._released] if self._released < len(self.holds)
                    else self.inner.n)

    def initial_position(self) -> int:
        return self.inner.initial_position()

    def read(self, position: Any, max_n: int) -> tuple[list[dict[str, Any]], int]:
        start = int(position)
        return self.inner.read(start, max(0, min(int(max_n), self._limit() - start)))

    def exhausted(self, position: Any) -> bool:
        """True only at the end of the inner stream; a held position has more later."""
        return int(position) >= self.inner.n

    def wait_for_more(self) -> None:
        with self._cond:
            self._cond.wait(0.2)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.inner)
