"""Progress of long work (checkpoints, restores, gc), told to whoever watches.

Library code never prints (``blockstore/logs.py``); where work is long it calls
:func:`advance` with what it has just done, and a caller who wants to see it wraps the work in
:func:`watch`::

    with blockstore.work.watch(lambda kind, n: bar.update(n)):
        css.checkpoint()

Kinds: ``checkpoint_bytes`` (payload bytes handed to the store), ``restore_bytes`` (payload
bytes read and verified), ``verify_bytes`` (stored bytes of checkpoint generations read and
verified, nothing decoded: ``verify_lease``, ``blockpoint verify``), ``objects_listed``
(objects or lease files listed: gc, scans). The watcher is held in a
context variable, so it follows the caller's thread (and asyncio task) and nothing else: work
on a pool thread is reported by the thread that waits for it. A watcher that raises is logged
once and dropped; the work goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Watcher", "advance", "watch"]

log = logging.getLogger(__name__)

Watcher = Callable[[str, int], None]
_watcher: ContextVar[Watcher | None] = ContextVar("blockpoint_work_watcher", default=None)


@contextmanager
def watch(fn: Watcher) -> Iterator[Watcher]:
    """Call ``fn(kind, n)`` for the work done in this context (this thread or task)."""
    token = _watcher.set(fn)
    try:
        yield fn
    finally:
        _watcher.reset(token)


def advance(kind: str, n: int) -> None:
    """``n`` more units of ``kind`` are done (a no-op unless someone :func:`watch` es)."""
    fn = _watcher.get()
    if fn is None or n <= 0:
        return
    try:
        fn(kind, n)
    except Exception:  # noqa: BLE001 - a progress bar never breaks a checkpoint
        log.exception("progress watcher %r failed; no more progress reported here", fn)
        _watcher.set(None)
