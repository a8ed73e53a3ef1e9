"""The scheduler's side of the flush observer: "do not preempt me, I am flushing".

A :class:`PreemptionCheckpointObserver` is handed to a stage (``StageActor(spec,
observer)``); its ``CheckpointedStageState`` calls it around every checkpoint flush
(see :mod:`stages.checkpoint.observer`). It is a small picklable value - the scheduler actor's name,
namespace and the stage id - so it travels with the stage to any node and into restored
incarnations; the actor handle is resolved lazily in the stage's process and cached.

Why the calls are shaped as they are:

* ``on_flush_start`` **waits for the acknowledgement**, up to ``ack_timeout`` (default 1 s).
  The scheduler's ``flush_started`` sets ``CHECKPOINT_IN_PROGRESS`` and returns; its return
  *is* the acknowledgement, so once it arrives no preemption plan made afterwards can pick
  this stage. If the scheduler is slow or unreachable the flush proceeds anyway after the
  bound (a checkpoint is never held hostage by the scheduler) and the miss is logged. The
  scheduler actor runs with ``max_concurrency > 1`` so an acknowledgement is never queued
  behind a long preemption.
* ``on_flush_complete`` is **fire-and-forget**: the flush is already committed (or failed);
  waiting would only slow the stage. A lost completion leaves the mark set until the
  scheduler sees the actor die or the lease expire - conservative, never unsafe.
* **Sequence numbers order the two calls.** The scheduler actor is threaded, so Ray does
  not guarantee that two calls from one caller execute in submission order: a
  fire-and-forget completion of flush *n* could run after the start of flush *n + 1* and
  clear its mark. Every flush therefore gets a strictly increasing number (wall-clock
  nanoseconds, bumped if needed) and the scheduler ignores a completion older than the
  newest start, and a start not newer than the newest completion.
* **Never raises**: every failure is logged; :func:`stages.checkpoint.observer.flush_guard` would catch
  it anyway, but an observer that raises would spam the stage's log with tracebacks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from blockstore.metrics import record

__all__ = ["DEFAULT_ACK_TIMEOUT", "DEFAULT_SCHEDULER_NAME", "PreemptionCheckpointObserver"]

log = logging.getLogger(__name__)

#: Default bound on the wait for the scheduler's flush-start acknowledgement (seconds).
DEFAULT_ACK_TIMEOUT = 1.0
#: Default name of the scheduler actor.
DEFAULT_SCHEDULER_NAME = "blockpoint-scheduler"


class PreemptionCheckpointObserver:
    """Tells the scheduler actor when a stage's checkpoint flush starts and ends.

    Implements :class:`stages.CheckpointFlushObserver`. Picklable; the handle is looked up
    by name (in ``namespace``) on first use in each process, unless one was given.

    Guarantees:
        * ``on_flush_start`` returns within about ``ack_timeout`` seconds (plus the
          name lookup on first use), acknowledged or not, and never raises.
        * ``on_flush_complete`` never blocks on the scheduler and never raises.
        * Each flush carries a number greater than every earlier flush of this observer
          in this process, so the scheduler can order late calls.

    Args:
        stage_id: The stage whose flushes this observer reports.
        scheduler: The scheduler actor's handle, or its name.
        namespace: Ray namespace of a named scheduler (``None``: the caller's).
        ack_timeout: Bound on the wait for the start acknowledgement, in seconds.
    """

    def __init__(self, stage_id: str, scheduler: Any = DEFAULT_SCHEDULER_NAME, *,
                 namespace: str | None = None, ack_timeout: float = DEFAULT_ACK_TIMEOUT) -> None:
        if not isinstance(stage_id, str) or not stage_id:
            raise ValueError("stage_id must be a non-empty string")
        if ack_timeout <= 0:
            raise ValueError(f"ack_timeout must be positive, got {ack_timeout!r}")
        self.stage_id = stage_id
        self.namespace = namespace
        self.ack_timeout = float(ack_timeout)
        if isinstance(scheduler, str):
            self.scheduler_name: str | None = scheduler
            self._handle: Any = None
        else:
            self.scheduler_name = None
            self._handle = scheduler
        self._lock = threading.Lock()
        self._last_seq = 0
        #: Counters for tests and logs: acknowledged starts, starts that timed out or failed.
        self.acked = 0
        self.missed = 0
        self._mark_started: float | None = None

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        # A handle pickles fine inside Ray; a lock does not, and counters are per process.
        return {"stage_id": self.stage_id, "namespace": self.namespace,
                "ack_timeout": self.ack_timeout, "scheduler_name": self.scheduler_name,
                "handle": self._handle}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.stage_id = state["stage_id"]
        self.namespace = state["namespace"]
        self.ack_timeout = state["ack_timeout"]
        self.scheduler_name = state["scheduler_name"]
        self._handle = state["handle"]
        self._lock = threading.Lock()
        self._last_seq = 0
        self.acked = 0
        self.missed = 0
        self._mark_started = None

    def __repr__(self) -> str:
        target = self.scheduler_name or "<handle>"
        return (f"PreemptionCheckpointObserver(stage_id={self.stage_id!r}, "
                f"scheduler={target!r}, ack_timeout={self.ack_timeout})")

    # ------------------------------------------------------------------ internals

    def _next_seq(self) -> int:
        with self._lock:
            seq = max(time.time_ns(), self._last_seq + 1)
            self._last_seq = seq
            return seq

    def _current_seq(self) -> int:
        with self._lock:
            return self._last_seq

    def _scheduler(self) -> Any:
        handle = self._handle
        if handle is None:
            assert self.scheduler_name is not None
            handle = ray.get_actor(self.scheduler_name, namespace=self.namespace)
            self._handle = handle
        return handle

    def _forget_named_handle(self) -> None:
        # A scheduler that was killed for good and recreated has a new actor; look it up
        # again next time (a handle we were given explicitly is kept).
        if self.scheduler_name is not None:
            self._handle = None

    # ------------------------------------------------------------------ protocol

    def on_flush_start(self, lease_id: str) -> None:
        """Set the stage's ``CHECKPOINT_IN_PROGRESS`` mark; wait (bounded) for the ack."""
        seq = self._next_seq()
        started = self._mark_started = time.monotonic()
        try:
            ref = self._scheduler().flush_started.remote(self.stage_id, lease_id, seq)
            remaining = max(self.ack_timeout - (time.monotonic() - started), 0.001)
            ray.get(ref, timeout=remaining)
            self.acked += 1
            record("flush_ack_seconds", time.monotonic() - started, stage=self.stage_id)
        except Exception as exc:  # noqa: BLE001 - never let the scheduler abort a flush
            self.missed += 1
            record("flush_ack_missed_total", 1, stage=self.stage_id)
            if not isinstance(exc, ray.exceptions.GetTimeoutError):
                self._forget_named_handle()
            log.warning("stage %s: no flush-start acknowledgement from the scheduler within "
                        "%.3f s (%s: %s); flushing anyway", self.stage_id, self.ack_timeout,
                        type(exc).__name__, exc,
                        extra={"stage": self.stage_id, "cause": type(exc).__name__})

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        """Clear the mark (fire-and-forget: the call is sent, its result is not awaited)."""
        seq = self._current_seq()
        held = None if self._mark_started is None else time.monotonic() - self._mark_started
        self._mark_started = None
        try:
            self._scheduler().flush_completed.remote(self.stage_id, lease_id, bool(ok), seq)
        except Exception as exc:  # noqa: BLE001
            self._forget_named_handle()
            log.warning("stage %s: could not tell the scheduler the flush ended (ok=%s): "
                        "%s: %s; its mark stays until the scheduler clears it",
                        self.stage_id, ok, type(exc).__name__, exc)
        if held is not None:  # after the completion is sent: metrics never hold the mark
            record("flush_mark_seconds", held, stage=self.stage_id)
