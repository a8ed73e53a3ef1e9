"""The flush-mark table: each stage's ``CHECKPOINT_IN_PROGRESS``, on a path of its own.

Every checkpoint flush of every stage waits for the scheduler's acknowledgement of its
start (:mod:`scheduler.observer`), so the acknowledgement is the one scheduler call whose
latency multiplies with the number of stages. It therefore shares nothing with the
scheduler's other work but the manager's lock, and holds that only for a set insertion:

* **Its own lock.** The marks (sequence numbers, since when, set after a reload) live here,
  guarded by :attr:`FlushMarks` 's own lock, not on the table's entries under the table's
  lock - which registrations, placements, the watcher's pass and the registry's save take,
  some of them for milliseconds per stage. A flush start takes this lock, then the
  manager's (:meth:`~scheduler.manager.PreemptionManager.set_reason`), and nothing else:
  O(1) dictionary work, whatever the number of stages.
* **Its own threads.** The actor serves :meth:`~scheduler.actor.Scheduler.flush_started`
  and ``flush_completed`` in a concurrency group of their own (``scheduler/actor.py``), so an
  acknowledgement never queues behind the default group's calls (a launch waiting for a
  node, a preemption waiting for a flush, a status query).

**Why the mark and the preemption decision stay atomic.** The decision is
:meth:`~scheduler.manager.PreemptionManager.select_victims`, which plans under the
manager's lock; a mark becomes visible to plans by ``set_reason`` under the same lock, and
the acknowledgement is returned only after that. So each mark is either set before a plan
(the plan sees it: the stage is skipped, or waited for) or after it - and then the stage has
not started writing when the plan was made, because it writes nothing before the
acknowledgement. Between a plan and the stop that carries it out, the one place a stage is
killed, :meth:`~scheduler.stopping.Stopper.stop`, holds the stage with
:meth:`FlushMarks.fence` (under this lock: not flushing, then fenced) from its last check
until the kill was sent: a flush start arriving meanwhile is not acknowledged until the
kill is out (:meth:`FlushMarks.started` waits for the fence to lift), so the stage dies
before it writes its first block instead of in the middle of its flush.

Lock order: the table's lock, then this one, then the manager's; never the table's while
holding this one (a flush start never waits for the table).

Clearing: a completion (ordered by the observer's sequence numbers: a completion older than
the newest start never clears it), the stage's death or the end of its incarnation
(:meth:`reset`, :meth:`clear`), its lease's expiry (the watcher), and - for a mark set by
the reconciliation after a restart - the stage's own answer that it is not flushing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.errors import UnknownStageError
from scheduler.manager import PreemptionManager
from scheduler.reasons import NonPreemptibleReason

__all__ = ["FlushMarks", "MarkView"]

_CIP = NonPreemptibleReason.CHECKPOINT_IN_PROGRESS
#: Longest a flush start waits for a fence (a kill being sent) to lift, in seconds.
FENCE_WAIT_S = 5.0


@dataclass(slots=True)
class _Mark:
    lease_id: str = ""
    start_seq: int = 0
    done_seq: int = 0
    since: float | None = None
    from_reload: bool = False
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class MarkView:
    """One stage's flush mark as the watcher and the status see it.

    Attributes:
        stage_id: The stage.
        lease_id: Its lease (the one the watcher checks for expiry).
        since: Wall-clock time the mark was set; ``None`` when the stage is not marked.
        from_reload: Set by the reconciliation after a restart, not by a flush start.
        done_seq: The newest completion's sequence number seen.
    """

    stage_id: str
    lease_id: str
    since: float | None
    from_reload: bool
    done_seq: int


class FlushMarks:
    """The ``CHECKPOINT_IN_PROGRESS`` marks of every known stage, with their own lock.

    Guarantees:
        * :meth:`started` returns ``True`` only once the manager carries the stage's mark
          (every plan made afterwards sees it); its cost does not depend on the number of
          stages.
        * A completion older than the newest start never clears the mark, and a start not
          newer than the newest completion never sets it.
        * While a stage is fenced (:meth:`fence`) no start of it is acknowledged.

    Args:
        manager: Returns the current manager (the table replaces it when it reloads).
    """

    def __init__(self, manager: Callable[[], PreemptionManager]) -> None:
        self._manager = manager
        self._lock = threading.Lock()
        self._unfenced = threading.Condition(self._lock)
        self._marks: dict[str, _Mark] = {}
        self._by_lease: dict[str, str] = {}
        #: Stages whose flush completed since the watcher last looked (it refreshes their
        #: counters soon: a new generation).
        self._completed: set[str] = set()

    # ------------------------------------------------------------------ stages

    def bind(self, stage_id: str, lease_id: str) -> None:
        """Know ``stage_id`` (holding ``lease_id``): its starts can now be marked."""
        with self._lock:
            mark = self._marks.setdefault(stage_id, _Mark())
            if mark.lease_id and self._by_lease.get(mark.lease_id) == stage_id:
                del self._by_lease[mark.lease_id]
            mark.lease_id = lease_id
            if lease_id:
                self._by_lease[lease_id] = stage_id

    def forget(self, stage_id: str) -> None:
        """The stage left the table."""
        with self._lock:
            mark = self._marks.pop(stage_id, None)
            if mark is not None and self._by_lease.get(mark.lease_id) == stage_id:
                del self._by_lease[mark.lease_id]
            self._completed.discard(stage_id)
            self._unfenced.notify_all()

    def reset(self, stage_id: str) -> None:
        """A new incarnation (or none): sequence numbers start over, the mark is cleared
        in the manager too (if the stage is there)."""
        with self._lock:
            mark = self._marks.get(stage_id)
            if mark is not None:
                mark.start_seq = mark.done_seq = 0
                mark.since = None
                mark.from_reload = False
            self._clear_reason(stage_id)

    # ------------------------------------------------------------------ observer calls

    def started(self, stage_id: str, lease_id: str, seq: int) -> bool:
        """A flush of the stage starts: mark it; returning is the acknowledgement.

        Returns:
            ``True`` if the stage is now marked; ``False`` if it is unknown or not live (no
            preemption candidate), or this start is not newer than a completion seen.
        """
        with self._lock:
            sid = self._resolve(stage_id, lease_id)
            if sid is None:
                return False
            mark = self._marks[sid]
            if mark.fenced:
                # Being killed: answer once the kill is out (the stage then dies before its
                # first write), never with a mark - its flush is moot.
                give_up = time.monotonic() + FENCE_WAIT_S
                while mark.fenced and self._marks.get(sid) is mark \
                        and time.monotonic() < give_up:
                    self._unfenced.wait(max(give_up - time.monotonic(), 0.0))
                return False
            if seq and seq <= mark.done_seq:
                return False
            try:
                self._manager().set_reason(sid, _CIP)
            except UnknownStageError:
                return False  # parked (no live incarnation): not a candidate anyway
            mark.start_seq = max(mark.start_seq, seq)
            mark.since = time.time()
            mark.from_reload = False  # a real flush: its completion clears it
            return True

    def completed(self, stage_id: str, lease_id: str, ok: bool, seq: int) -> bool:
        """A flush of the stage ended: clear the mark unless a newer flush has started.

        Returns:
            ``True`` if the mark was cleared by this call.
        """
        with self._lock:
            sid = self._resolve(stage_id, lease_id)
            if sid is None:
                return False
            mark = self._marks[sid]
            mark.done_seq = max(mark.done_seq, seq)
            if seq and seq < mark.start_seq:
                return False
            mark.since = None
            mark.from_reload = False
            self._completed.add(sid)
            cleared = self._clear_reason(sid)
        if not ok:
            self._manager().record_decision("flush", "failed", victims=[sid],
                                            notes={sid: "checkpoint flush failed"})
        return cleared

    # ------------------------------------------------------------------ the scheduler's side

    def mark_after_reload(self, stage_id: str, done_before: int) -> bool:
        """Mark a stage that said it is flushing (asked after a restart).

        ``done_before`` is its completion sequence number when it was asked: a completion
        that arrived meanwhile means the flush is over, so nothing is set.
        """
        with self._lock:
            mark = self._marks.get(stage_id)
            if mark is None or mark.done_seq != done_before:
                return False
            try:
                self._manager().set_reason(stage_id, _CIP)
            except UnknownStageError:
                return False
            mark.since = time.time()
            mark.from_reload = True
            return True

    def clear(self, stage_id: str, *, since: float | None = None) -> bool:
        """Forget the stage's flush (it died, its lease expired, or - for a mark set after
        a reload - it says it is no longer flushing).

        Args:
            stage_id: The stage.
            since: Clear only the mark set at this time (the one the caller judged), not a
                newer flush's; ``None``: whatever is set.

        Returns:
            Whether the manager's mark was cleared by this call.
        """
        with self._lock:
            mark = self._marks.get(stage_id)
            if mark is not None:
                if since is not None and mark.since != since:
                    return False
                mark.since = None
                mark.from_reload = False
            return self._clear_reason(stage_id)

    def fence(self, stage_id: str, deadline: float) -> bool:
        """Wait until the stage is not flushing (or ``deadline``, wall clock), then hold
        off its flush starts until :meth:`unfence` (see the module docstring).

        Returns:
            Whether it is fenced (``False``: still flushing at the deadline, or unknown -
            then nothing is held and the caller kills it anyway, as before).
        """
        with self._lock:
            while True:
                mark = self._marks.get(stage_id)
                if mark is None:
                    return False
                if mark.since is None:
                    mark.fenced = True
                    return True
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._unfenced.wait(min(left, 0.05))

    def unfence(self, stage_id: str) -> None:
        """Let the stage's flush starts through again (its kill was sent)."""
        with self._lock:
            mark = self._marks.get(stage_id)
            if mark is not None:
                mark.fenced = False
            self._unfenced.notify_all()

    # ------------------------------------------------------------------ reads

    def view(self, stage_id: str) -> MarkView | None:
        """The stage's mark, or ``None`` if the stage is not known here."""
        with self._lock:
            mark = self._marks.get(stage_id)
            if mark is None:
                return None
            return MarkView(stage_id, mark.lease_id, mark.since, mark.from_reload,
                            mark.done_seq)

    def flushing(self) -> list[MarkView]:
        """The marked stages (usually few: the watcher checks their leases)."""
        with self._lock:
            return [MarkView(sid, m.lease_id, m.since, m.from_reload, m.done_seq)
                    for sid, m in self._marks.items() if m.since is not None]

    def take_completed(self) -> set[str]:
        """The stages whose flush completed since the last call (and forget them)."""
        with self._lock:
            done, self._completed = self._completed, set()
            return done

    # ------------------------------------------------------------------ internals

    def _resolve(self, stage_id: str, lease_id: str) -> str | None:
        if stage_id in self._marks:
            return stage_id
        return self._by_lease.get(lease_id) if lease_id else None

    def _clear_reason(self, stage_id: str) -> bool:
        """Clear the manager's mark (caller holds the lock); wakes fences waiting."""
        self._unfenced.notify_all()
        try:
            return self._manager().clear_reason(stage_id, _CIP)
        except UnknownStageError:
            return False
