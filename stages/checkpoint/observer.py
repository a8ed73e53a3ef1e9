"""The flush observer: how a checkpoint tells the scheduler "do not preempt me now".

The protocol lives here, in the lower layer that calls it (``stages``); the scheduler
implements it. :func:`flush_guard` is the one context manager ``checkpoint()`` wraps its whole
flush in, so the pairing of the two calls is written once:

* ``on_flush_start(lease_id)`` is called exactly once, on entry, i.e. before anything is
  serialized or written. It may block for a bounded time until the scheduler acknowledges,
  which is what makes the protection real rather than best-effort.
* ``on_flush_complete(lease_id, ok)`` is called exactly once on every exit path: normal exit
  (``ok=True``), any exception, ``KeyboardInterrupt``, ``GeneratorExit`` (a generator closed
  while suspended inside the guard) and ``asyncio.CancelledError`` (``ok=False`` for all).
* An observer that raises (scheduler unreachable, timeout) is logged and ignored: it never
  aborts nor corrupts the flush, and ``complete`` is still called after a failed ``start``
  (the mark may have been set before the failure surfaced).

A stage that dies inside the guard never calls ``complete``; the scheduler clears the mark
when it sees the actor or node die, or the lease expire (`scheduler/watcher.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

__all__ = ["CheckpointFlushObserver", "flush_guard"]

log = logging.getLogger(__name__)


@runtime_checkable
class CheckpointFlushObserver(Protocol):
    """Told when a checkpoint flush of a lease starts and ends (implemented by the scheduler)."""

    def on_flush_start(self, lease_id: str) -> None:
        """A flush of ``lease_id`` begins; may block (bounded) until acknowledged."""

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        """The flush of ``lease_id`` ended; ``ok`` is True only if the generation committed."""


@contextmanager
def flush_guard(observer: CheckpointFlushObserver | None, lease_id: str) -> Iterator[None]:
    """Bracket a flush with exactly one ``on_flush_start`` and one ``on_flush_complete``.

    ``observer=None`` makes this a no-op. Observer exceptions are logged, never raised; the
    body's exceptions (including ``BaseException`` such as ``KeyboardInterrupt``) propagate
    unchanged after ``on_flush_complete(lease_id, False)``.
    """
    if observer is None:
        yield
        return
    try:
        observer.on_flush_start(lease_id)
    except Exception:
        log.exception("flush observer on_flush_start(%s) failed; flushing anyway", lease_id)
    ok = False
    try:
        yield
        ok = True
    finally:
        try:
            observer.on_flush_complete(lease_id, ok)
        except Exception:
            log.exception("flush observer on_flush_complete(%s, %s) failed", lease_id, ok)
