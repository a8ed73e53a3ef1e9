"""Asynchronous checkpoints: a consistent snapshot now, the flush in the background.

:meth:`~stages.checkpoint.state.CheckpointedStageState.checkpoint_async` stalls the caller only for
the snapshot - the state serialized to memory, with every out-of-band buffer (numpy arrays)
*copied* into buffers this module owns - and hands the commit (the same protocol and code as
a synchronous checkpoint, ``stages/checkpoint/state.py``) to a flush thread. Why it is shaped so:

* **A copy, not a promise.** After ``checkpoint_async`` returns, the caller may change the
  state in any way, arrays in place included: the flush writes the snapshot, never the live
  objects. The copy runs at memory speed into buffers reused from the previous snapshot
  (:class:`SnapshotBuffers`), so a stage checkpointing the same arrays again allocates
  nothing; a large buffer is copied by two threads at once (``numpy.copyto`` releases the
  GIL). Small objects are serialized in-band, which is already a copy.
* **No-copy mode** (``checkpoint_async(copy=False)``), for states too large to copy in
  the time allowed: the stall is serialization alone and the flush reads the live buffers,
  so the caller must not mutate them in place until ``wait()`` returned.
* **At most one flush in flight per state object.** A second request - sync or async - first
  waits for the one in flight (it does not coalesce: every request is a generation).
* **Fail-closed, never silent.** A background failure is raised by :meth:`PendingCheckpoint.wait`
  and, if nobody waited for it, by the next ``checkpoint``/``checkpoint_async``/``wait`` of
  the same object, as the same ``CheckpointFailed``.
* **The flush observer spans the background flush**: the flush thread runs the whole commit
  inside :func:`~stages.checkpoint.observer.flush_guard`, so a scheduler sees
  ``CHECKPOINT_IN_PROGRESS`` until the header is durable. A stage killed before the flush
  thread started has written nothing; killed during it, the previous generation restores.
* **Own threads.** Flushes run in a small pool of their own, not the encode/CRC pool they
  submit work to (a flush waiting on that pool from inside it could starve it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from .codec import Payload

if TYPE_CHECKING:
    from .reports import CheckpointInfo

__all__ = ["PendingCheckpoint", "SnapshotBuffers", "copy_into", "flush_executor"]

#: Flush threads per process: one per state object flushing at the same time.
FLUSH_THREADS = 8

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def flush_executor() -> ThreadPoolExecutor:
    """The process's pool of background flush threads (created on first use)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(FLUSH_THREADS, thread_name_prefix="bp-flush")
        return _executor


#: Segments at least this large are copied by :data:`COPY_THREADS` threads at once.
PARALLEL_COPY_MIN = 16 << 20
#: Threads that copy one large segment (the caller's and ``COPY_THREADS - 1`` helpers):
#: ``numpy.copyto`` releases the GIL, so the parts copy at the same time.
COPY_THREADS = 2

_copy_pool: ThreadPoolExecutor | None = None


def _copy_executor() -> ThreadPoolExecutor:
    global _copy_pool
    with _executor_lock:
        if _copy_pool is None:
            _copy_pool = ThreadPoolExecutor(max(1, COPY_THREADS - 1),
                                            thread_name_prefix="bp-copy")
        return _copy_pool


def copy_into(dst: memoryview, src: memoryview) -> None:
    """``dst[:] = src`` (same length, bytes); large copies split across threads."""
    n = src.nbytes
    if n < PARALLEL_COPY_MIN or COPY_THREADS < 2:
        dst[:] = src
        return
    d = np.frombuffer(dst, dtype=np.uint8)
    s = np.frombuffer(src, dtype=np.uint8)
    part = (n // COPY_THREADS) & ~4095           # page-aligned parts; the caller takes the last
    bounds = [(i * part, (i + 1) * part) for i in range(COPY_THREADS - 1)]
    futures = [_copy_executor().submit(np.copyto, d[a:b], s[a:b]) for a, b in bounds]
    start = bounds[-1][1]
    np.copyto(d[start:], s[start:])
    for f in futures:
        f.result()


class SnapshotBuffers:
    """Owned copies of a payload's segments, reused from one snapshot to the next.

    Not thread-safe; a state object uses its buffers only while no flush of it is in flight.
    """

    def __init__(self) -> None:
        self._buffers: list[bytearray] = []

    def copy(self, payload: Payload) -> Payload:
        """A payload whose segments are copies of ``payload``'s (same bytes, same order)."""
        out: list[memoryview] = []
        old = self._buffers
        fresh: list[bytearray] = []
        for i, seg in enumerate(payload.segments):
            n = seg.nbytes
            buf = old[i] if i < len(old) and len(old[i]) >= n else bytearray(n)
            view = memoryview(buf)[:n]
            copy_into(view, seg.cast("B"))
            fresh.append(buf)
            out.append(view)
        self._buffers = fresh
        return Payload(out, payload.length)


class PendingCheckpoint:
    """A checkpoint whose flush runs in the background; :meth:`wait` for its result.

    Callbacks added with :meth:`add_done_callback` run in the flush thread *before* the
    result is visible to :meth:`wait`, so a waiter sees their effects (e.g. a policy's
    counters already updated).
    """

    def __init__(self, step: int) -> None:
        self.step = step
        #: Seconds the caller was stalled (the snapshot).
        self.stall_s = 0.0
        #: Whether a failure of this flush has been raised to a caller.
        self.reported = False
        self._future: Future[CheckpointInfo] | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[PendingCheckpoint], None]] = []
        self._outcome: tuple[CheckpointInfo | None, BaseException | None] | None = None

    def start(self, flush: Callable[[], CheckpointInfo], stall_s: float) -> None:
        """Run ``flush`` in a flush thread (called once, by the state object)."""
        self.stall_s = stall_s

        def run() -> CheckpointInfo:
            try:
                info = flush()
            except BaseException as exc:
                self._settled(None, exc)
                raise
            self._settled(info, None)
            return info
        self._future = flush_executor().submit(run)

    def _settled(self, info: CheckpointInfo | None, exc: BaseException | None) -> None:
        with self._lock:
            self._outcome = (info, exc)
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    @property
    def outcome(self) -> tuple[CheckpointInfo | None, BaseException | None]:
        """``(info, None)`` or ``(None, error)`` once the flush ended (for callbacks)."""
        if self._outcome is None:
            raise RuntimeError("the flush has not ended")
        return self._outcome

    def add_done_callback(self, fn: Callable[[PendingCheckpoint], None]) -> None:
        """Call ``fn(self)`` once the flush ended: at once if it has, else in the flush
        thread before :meth:`wait` returns. ``fn`` must not raise."""
        with self._lock:
            if self._outcome is None:
                self._callbacks.append(fn)
                return
        fn(self)

    def done(self) -> bool:
        """True once the flush ended (committed or failed)."""
        return self._future is not None and self._future.done()

    def wait(self, timeout: float | None = None) -> CheckpointInfo:
        """The committed generation's info, once durable.

        Raises:
            CheckpointFailed: the background flush failed (the state of that request is
                NOT saved); also ``TimeoutError`` if ``timeout`` passes first.
        """
        exc = self.failure(timeout)
        if exc is not None:
            self.reported = True
            raise exc
        assert self._future is not None
        return self._future.result()

    def failure(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the flush to end; its exception (without raising it), or None."""
        if self._future is None:
            raise RuntimeError("this checkpoint was never started")
        return self._future.exception(timeout)
