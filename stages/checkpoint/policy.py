"""Checkpoint policies: when a stage (or a whole pipeline) should checkpoint.

The semantics are those of a periodic checkpoint manager: a checkpoint is *due* every N
records and/or every T seconds since the last completed one, or when someone asks for it
(e.g. right before a risky operation). The :class:`CheckpointManager` turns "due" into at most
one outstanding :class:`CheckpointRequest` per stage, which the owner of the stage then
carries out (``begin`` -> ``complete`` / ``fail``) or which is cancelled.

Why the manager does not checkpoint by itself: in a pipeline a checkpoint is a barrier that
travels with the data through several actors, and in a single stage it is a call on the
stage's own state; both need the request/complete protocol, only the single stage can use the
:meth:`CheckpointManager.checkpoint` convenience. Keeping the decision pure (no Ray, no
threads, an injectable clock) makes it testable exactly.

Rules (each one tested):

* one outstanding request per stage: while a request is pending or running, ``record`` and
  ``poll`` create no second one; ``request`` returns a pending one (counts a coalesced
  request), but while one *runs* it queues one manual request behind it (the running one
  began before the call, so it does not cover what came since), outstanding once the
  running one completes, fails or is rolled back;
* ``cancel`` drops a pending request (not one already running: a flush in progress is never
  abandoned half-way; it completes or fails);
* counters: requested, completed, failed, cancelled, coalesced; a failed checkpoint leaves the
  record/time counters as they were, so the trigger fires again;
* retention K is part of the policy and handed to ``CheckpointedStageState``
  (:meth:`CheckpointManager.state_options`), which keeps storage bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from blockstore import BlockStore

if TYPE_CHECKING:
    from stages.checkpoint.background import PendingCheckpoint
    from stages.checkpoint.state import CheckpointedStageState, CheckpointInfo

__all__ = [
    "CheckpointManager",
    "CheckpointPolicy",
    "CheckpointRequest",
    "PolicyCounters",
    "REASON_INTERVAL",
    "REASON_MANUAL",
    "REASON_RECORDS",
]

REASON_RECORDS = "records"
REASON_INTERVAL = "interval"
REASON_MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When to checkpoint, and how many generations to keep.

    Attributes:
        every_records: due once this many records were processed since the last completed
            checkpoint (``None``: no record trigger).
        every_seconds: due once this much time passed since the last completed checkpoint
            (or since tracking started) (``None``: no time trigger).
        retention: generations kept by the stage's state (K >= 1).
    """

    every_records: int | None = None
    every_seconds: float | None = None
    retention: int = 2

    def __post_init__(self) -> None:
        if self.every_records is not None and self.every_records < 1:
            raise ValueError(f"every_records must be >= 1 or None, got {self.every_records}")
        if self.every_seconds is not None and self.every_seconds <= 0:
            raise ValueError(f"every_seconds must be > 0 or None, got {self.every_seconds}")
        if self.retention < 1:
            raise ValueError(f"retention must be >= 1, got {self.retention}")

    def due(self, records_since: int, seconds_since: float) -> str | None:
        """The reason a checkpoint is due (records first), or ``None``."""
        if self.every_records is not None and records_since >= self.every_records:
            return REASON_RECORDS
        if self.every_seconds is not None and seconds_since >= self.every_seconds:
            return REASON_INTERVAL
        return None


@dataclass(frozen=True, slots=True)
class CheckpointRequest:
    """One outstanding checkpoint request.

    Attributes:
        request_id: increasing per manager.
        stage_id: the stage (or pipeline) it is for.
        reason: ``"records"``, ``"interval"`` or ``"manual"``.
        requested_at: clock time of the request.
        note: free text given with a manual request (e.g. "before resize").
        running: True once ``begin`` was called.
    """

    request_id: int
    stage_id: str
    reason: str
    requested_at: float
    note: str | None = None
    running: bool = False


@dataclass(frozen=True, slots=True)
class PolicyCounters:
    """Counters of one stage, as a snapshot."""

    stage_id: str
    requested: int
    completed: int
    failed: int
    cancelled: int
    coalesced: int
    records_since: int
    seconds_since: float
    last_generation: int | None
    last_step: int | None
    last_error: str | None


class _Track:
    __slots__ = ("policy", "requested", "completed", "failed", "cancelled", "coalesced",
                 "records_since", "since", "outstanding", "queued", "last_generation",
                 "last_step", "last_error")

    def __init__(self, policy: CheckpointPolicy, now: float) -> None:
        self.policy = policy
        self.requested = self.completed = self.failed = self.cancelled = self.coalesced = 0
        self.records_since = 0
        self.since = now
        self.outstanding: CheckpointRequest | None = None
        #: a manual request made while ``outstanding`` ran: outstanding once that one ends
        self.queued: CheckpointRequest | None = None
        self.last_generation: int | None = None
        self.last_step: int | None = None
        self.last_error: str | None = None


class CheckpointManager:
    """Decides when each stage checkpoints; keeps one outstanding request per stage.

    Thread-safe. Stages are tracked from their first mention.

    Args:
        policy: the default policy of every stage.
        store: where the stages' leases live (for :meth:`load_latest`, :meth:`list_checkpoints`).
        clock: monotonic seconds (injectable for tests).
        policies: per-stage policies overriding ``policy``.
    """

    def __init__(self, policy: CheckpointPolicy | None = None, *, store: BlockStore | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 policies: Mapping[str, CheckpointPolicy] | None = None) -> None:
        self.default_policy = policy or CheckpointPolicy()
        self.store = store
        self._clock = clock
        self._overrides = dict(policies or {})
        self._tracks: dict[str, _Track] = {}
        self._next_id = 1
        self._lock = threading.Lock()

    # -- tracking --------------------------------------------------------------------------
    def _track(self, stage_id: str) -> _Track:
        t = self._tracks.get(stage_id)
        if t is None:
            t = _Track(self._overrides.get(stage_id, self.default_policy), self._clock())
            self._tracks[stage_id] = t
        return t

    def policy_for(self, stage_id: str) -> CheckpointPolicy:
        """The policy in force for ``stage_id``."""
        with self._lock:
            return self._track(stage_id).policy

    def set_policy(self, stage_id: str, policy: CheckpointPolicy) -> None:
        """Replace the policy of one stage (counters are kept)."""
        with self._lock:
            self._overrides[stage_id] = policy
            self._track(stage_id).policy = policy

    def stages(self) -> list[str]:
        """Every tracked stage id, sorted."""
        with self._lock:
            return sorted(self._tracks)

    def state_options(self, stage_id: str) -> dict[str, Any]:
        """Options for ``CheckpointedStageState`` that this policy implies (retention)."""
        return {"retention": self.policy_for(stage_id).retention}

    # -- triggers --------------------------------------------------------------------------
    def _new_request(self, t: _Track, stage_id: str, reason: str, note: str | None, *,
                     queue: bool = False) -> CheckpointRequest:
        """A new request, counted: outstanding, or (``queue``) queued behind the running one."""
        req = CheckpointRequest(self._next_id, stage_id, reason, self._clock(), note)
        self._next_id += 1
        t.requested += 1
        if queue:
            t.queued = req
        else:
            t.outstanding = req
        return req

    def _maybe_due(self, t: _Track, stage_id: str) -> CheckpointRequest | None:
        if t.outstanding is not None:
            return None
        reason = t.policy.due(t.records_since, self._clock() - t.since)
        return None if reason is None else self._new_request(t, stage_id, reason, None)

    def record(self, stage_id: str, n: int = 1) -> CheckpointRequest | None:
        """Count ``n`` processed records; return a *new* request if that made one due."""
        if n < 0:
            raise ValueError(f"record count must be >= 0, got {n}")
        with self._lock:
            t = self._track(stage_id)
            t.records_since += n
            return self._maybe_due(t, stage_id)

    def poll(self, stage_id: str) -> CheckpointRequest | None:
        """Check the time trigger; return a *new* request if one became due."""
        with self._lock:
            return self._maybe_due(self._track(stage_id), stage_id)

    def request(self, stage_id: str, note: str | None = None) -> CheckpointRequest:
        """Ask for a checkpoint now (manual), one that covers everything counted so far.
        Returns the outstanding request if it has not begun (counted as coalesced), else a
        new one; while a checkpoint runs (it began before this call, so it does not cover
        what came since) the new one is queued and becomes outstanding when the running one
        completes, fails or is rolled back (a second request meanwhile joins it)."""
        with self._lock:
            t = self._track(stage_id)
            if t.outstanding is not None and t.outstanding.running:
                if t.queued is not None:
                    t.coalesced += 1
                    return t.queued
                return self._new_request(t, stage_id, REASON_MANUAL, note, queue=True)
            if t.outstanding is not None:
                t.coalesced += 1
                return t.outstanding
            return self._new_request(t, stage_id, REASON_MANUAL, note)

    @staticmethod
    def _unqueue(t: _Track) -> None:
        """The running request ended: a request queued behind it is outstanding now."""
        t.outstanding, t.queued = t.queued, None

    def pending(self, stage_id: str) -> CheckpointRequest | None:
        """The outstanding request (pending or running), or ``None``."""
        with self._lock:
            return self._track(stage_id).outstanding

    def queued(self, stage_id: str) -> CheckpointRequest | None:
        """A manual request waiting for the running one to end (:meth:`request`), or ``None``."""
        with self._lock:
            return self._track(stage_id).queued

    def cancel(self, stage_id: str) -> CheckpointRequest | None:
        """Drop the pending request; return it, or ``None`` if there was none or it is
        already running (a running checkpoint is never abandoned)."""
        with self._lock:
            t = self._track(stage_id)
            if t.queued is not None:  # waiting behind a running one: not begun
                req, t.queued = t.queued, None
                t.cancelled += 1
                return req
            req = t.outstanding
            if req is None or req.running:
                return None
            t.outstanding = None
            t.cancelled += 1
            return req

    # -- carrying a request out ------------------------------------------------------------
    def begin(self, stage_id: str) -> CheckpointRequest:
        """Mark the outstanding request running (creating a manual one if none); return it.

        Raises ``RuntimeError`` if one is already running.
        """
        with self._lock:
            t = self._track(stage_id)
            req = t.outstanding
            if req is not None and req.running:
                raise RuntimeError(f"a checkpoint of {stage_id!r} is already running "
                                   f"(request {req.request_id})")
            if req is None:
                req = self._new_request(t, stage_id, REASON_MANUAL, None)
            req = replace(req, running=True)
            t.outstanding = req
            return req

    def complete(self, stage_id: str, info: CheckpointInfo | Mapping[str, Any] | None = None,
                 *, since: float | None = None) -> None:
        """The running (or pending) request succeeded: counters and timers restart (the
        time trigger from ``since``, a clock reading, if given: e.g. when the records after
        the checkpoint began before it completed)."""
        with self._lock:
            t = self._track(stage_id)
            self._unqueue(t)
            t.completed += 1
            t.records_since = 0
            t.since = self._clock() if since is None else since
            t.last_error = None
            if info is not None:
                get = info.get if isinstance(info, Mapping) else lambda k: getattr(info, k)
                t.last_generation = get("generation")
                t.last_step = get("step")

    def restart(self, stage_id: str) -> None:
        """Forget the records and time counted, and a request they made due (the caller went
        back to its last checkpoint: it counts again from there); a manual request stays."""
        with self._lock:
            t = self._track(stage_id)
            if t.outstanding is not None and (t.outstanding.running
                                              or t.outstanding.reason != REASON_MANUAL):
                t.outstanding = None
            if t.outstanding is None:
                self._unqueue(t)
            t.records_since = 0
            t.since = self._clock()

    def fail(self, stage_id: str, error: BaseException | str) -> None:
        """The request failed: counted; triggers stay armed (records/time are not reset)."""
        with self._lock:
            t = self._track(stage_id)
            self._unqueue(t)
            t.failed += 1
            t.last_error = str(error) or type(error).__name__

    def _begin_if_due(self, stage_id: str, force: bool) -> bool:
        """Start the outstanding request (or a new one, if due or ``force``); False if none."""
        with self._lock:
            t = self._track(stage_id)
            if t.outstanding is None and not force and self._maybe_due(t, stage_id) is None:
                return False
        self.begin(stage_id)
        return True

    def checkpoint(self, stage_id: str, css: CheckpointedStageState[Any], *, step: int = 0,
                   meta: Mapping[str, Any] | None = None, force: bool = False
                   ) -> CheckpointInfo | None:
        """Carry out the outstanding request on a local state (or any checkpoint if ``force``).

        Returns the new ``CheckpointInfo``, or ``None`` when nothing was due. A failure is
        counted and re-raised (``CheckpointFailed``: fail-closed).
        """
        if not self._begin_if_due(stage_id, force):
            return None
        try:
            info = css.checkpoint(step=step, meta=meta)
        except BaseException as exc:
            self.fail(stage_id, exc)
            raise
        self.complete(stage_id, info)
        return info

    def checkpoint_async(self, stage_id: str, css: CheckpointedStageState[Any], *,
                         step: int = 0, meta: Mapping[str, Any] | None = None,
                         force: bool = False) -> PendingCheckpoint | None:
        """Like :meth:`checkpoint`, with :meth:`CheckpointedStageState.checkpoint_async`.

        Returns at once after the snapshot (``None`` when nothing was due). The request stays
        outstanding - running - until the background flush ends; then it is completed or
        counted as failed (and the failure is raised by ``wait()`` on the result, or by the
        state's next checkpoint: fail-closed).
        """
        if not self._begin_if_due(stage_id, force):
            return None
        try:
            pending = css.checkpoint_async(step=step, meta=meta)
        except BaseException as exc:
            self.fail(stage_id, exc)
            raise

        def settled(done: PendingCheckpoint) -> None:
            info, exc = done.outcome
            if exc is None:
                self.complete(stage_id, info)
            else:
                self.fail(stage_id, exc)
        pending.add_done_callback(settled)
        return pending

    def counters(self, stage_id: str) -> PolicyCounters:
        """A snapshot of one stage's counters."""
        with self._lock:
            t = self._track(stage_id)
            return PolicyCounters(stage_id, t.requested, t.completed, t.failed, t.cancelled,
                                  t.coalesced, t.records_since, self._clock() - t.since,
                                  t.last_generation, t.last_step, t.last_error)

    # -- reading back ------------------------------------------------------------------------
    def _store(self) -> BlockStore:
        if self.store is None:
            raise ValueError("this CheckpointManager has no store")
        return self.store

    def load_latest(self, stage_id: str, **options: Any) -> CheckpointedStageState[Any] | None:
        """The newest verifying checkpoint of ``stage_id`` restored read-only, or ``None`` if
        the stage has no lease or no committed generation. Corruption raises."""
        from stages.errors import NoCheckpointError
        from stages.checkpoint.state import CheckpointedStageState

        store = self._store()
        if store.find(stage_id) is None:
            return None
        try:
            return CheckpointedStageState.restore(store.open_reader(stage_id), **options)
        except NoCheckpointError:
            return None

    def list_checkpoints(self, stage_id: str, **options: Any) -> list[CheckpointInfo]:
        """Committed generations of ``stage_id``, newest first (empty if none)."""
        css = self.load_latest(stage_id, **options)
        return [] if css is None else list(css.generations())
