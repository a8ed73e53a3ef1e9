"""Stopping stages: preemptions, and the one checkpoint-then-stop mechanism they share.

:meth:`Stopper.stop` is the only place a stage is stopped on purpose; preemption
(:meth:`Stopper.preempt`) and drains (:mod:`scheduler.drains`) both use it.

Why it works as it does:

* **Checkpoint, then stop, when time allows.** A victim whose last checkpoint took ``d``
  seconds is asked to ``shutdown(checkpoint=True)`` if the deadline leaves ``2 d + 0.5 s``
  (a drain, which has already budgeted the time, always asks). A stage aligned with a
  pipeline's barriers answers without a new checkpoint (``skipped``): it resumes from its
  last barrier.
* **Kill as the fallback, never mid-flush before the deadline.** A victim that cannot be
  asked, whose checkpoint fails, or that has not finished by the deadline is killed; its
  work since its last checkpoint is replayed. Before killing, the scheduler waits (until
  the deadline) for any flush the stage itself is running, and holds off the
  acknowledgement of a new one until the kill is sent (``scheduler/marks.py``: the wait
  and the kill are atomic with the stage's marks).
* **Concurrently.** All victims are asked at once and collected with ``ray.wait``, so the
  deadline bounds the whole preemption, not each victim.
* **Deadlines on the wall clock, durations on a monotonic one.** A request's deadline is a
  wall-clock time (it crosses processes, like the manager's clock), but how long a
  preemption waited (``waited_s``, ``preemption_wait_seconds``) is measured with
  :func:`time.monotonic`: a wall-clock step (NTP, a VM resumed) during the wait would make
  it negative or hours long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import ray

from blockstore.metrics import record
from scheduler import ray_adapter
from scheduler.decisions import reason_tag
from scheduler.plans import Outcome, PreemptionRequest
from scheduler.results import PreemptionResult, StageOutcome, StageStatus
from scheduler.table import StageTable

__all__ = ["DEFAULT_CHECKPOINT_S", "Stopper"]

#: Seconds assumed for a checkpoint whose duration was never measured.
DEFAULT_CHECKPOINT_S = 1.0


class Stopper:
    """Stops stages by checkpoint-then-stop with a kill fallback, and carries out preemptions.

    Guarantees:
        * :meth:`stop` returns by the deadline (plus the time to kill), one outcome per
          victim that was registered.
        * A stage flushing on its own is never killed before the deadline.
        * :meth:`preempt` acts only on a READY plan (or, with ``best_effort``, on the
          victims of an unsatisfiable one); victims are parked as ``PREEMPTED``.

    Args:
        table: The scheduler's stage table.
        marks_known: Set once flush marks are trustworthy (after a restart: once the stages
            were asked whether they are flushing); preemptions wait for it.
    """

    def __init__(self, table: StageTable, marks_known: threading.Event) -> None:
        self._table = table
        self._marks_known = marks_known

    def checkpoint_estimate(self, sid: str) -> float:
        """Seconds the stage's last checkpoint took (a default if never measured)."""
        with self._table.lock:
            entry = self._table.entries.get(sid)
            return entry.checkpoint_s if entry and entry.checkpoint_s else DEFAULT_CHECKPOINT_S

    def wait_not_flushing(self, sid: str, deadline: float) -> None:
        """Block until ``sid`` is not flushing, or until ``deadline``."""
        manager = self._table.manager
        if sid in manager:
            manager.wait_for_flush([sid], deadline)

    def stop(self, victims: Iterable[str], deadline: float, *,
             ask: Literal["if_time", "always"] = "if_time") -> list[StageOutcome]:
        """Checkpoint-and-stop or kill each victim, concurrently, by ``deadline``.

        Args:
            victims: Stage ids, in the order the outcomes are returned.
            deadline: Wall-clock time by which every victim is stopped.
            ask: ``"if_time"``: ask for a checkpoint only if the deadline leaves twice the
                stage's last checkpoint time plus 0.5 s; ``"always"``: always ask.
        """
        table = self._table
        self._marks_known.wait(timeout=max(deadline - time.time(), 0.0))
        pending: dict[Any, tuple[str, Any]] = {}
        results: dict[str, StageOutcome] = {}
        order = list(victims)
        for sid in order:
            with table.lock:
                entry = table.entries.get(sid)
                handle = None if entry is None else entry.handle
            if handle is None:
                results[sid] = StageOutcome(sid, "gone", table.generation(sid), "no actor handle")
                continue
            est = self.checkpoint_estimate(sid)
            left = deadline - time.time()
            if ask == "always" or left >= 2 * est + 0.5:
                try:
                    pending[handle.shutdown.remote(checkpoint=True)] = (sid, handle)
                    continue
                except Exception as exc:  # noqa: BLE001
                    detail = f"could not ask for a checkpoint ({exc})"
            else:
                detail = (f"{left:.1f} s left, a checkpoint takes ~{est:.1f} s: "
                          "killed, work since the last checkpoint will be replayed")
            self._kill(sid, handle, deadline)
            results[sid] = StageOutcome(sid, "killed", table.generation(sid), detail)
        while pending:
            left = deadline - time.time()
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=max(left, 0.0))
            for ref in done:
                sid, handle = pending.pop(ref)
                try:
                    info = ray.get(ref)
                except Exception as exc:  # noqa: BLE001
                    self._kill(sid, handle, deadline)
                    results[sid] = StageOutcome(
                        sid, "killed", table.generation(sid),
                        f"checkpoint failed ({type(exc).__name__}: {exc}); replay from the last one")
                    continue
                results[sid] = self._stopped(sid, info)
                ray_adapter.kill_actor(handle)
            if time.time() >= deadline:
                for sid, handle in pending.values():
                    ray_adapter.kill_actor(handle)
                    results[sid] = StageOutcome(
                        sid, "killed", table.generation(sid),
                        "checkpoint not finished by the deadline; replay from the last one")
                pending.clear()
        return [results[sid] for sid in order if sid in results]

    def preempt(self, request: PreemptionRequest | Mapping[str, Any],
                best_effort: bool = False) -> PreemptionResult:
        """Plan, wait for needed flushes (until the deadline), re-plan, then stop the victims.

        Victims are parked (their resources count as freed) and kept as ``PREEMPTED``,
        restorable on request. See :meth:`scheduler.actor.Scheduler.preempt`.
        """
        table = self._table
        req = request if isinstance(request, PreemptionRequest) \
            else PreemptionRequest.from_dict(request)
        t0 = time.time()
        started = time.monotonic()  # the wait's duration: immune to wall-clock steps
        # After a restart, a stage flushing across it is only known once it was asked:
        # until then any stage may be mid-flush, so nothing is stopped.
        manager = table.manager
        if not self._marks_known.wait(timeout=max(req.deadline - t0, 0.0)):
            final = manager.record_decision(
                "preempt", "wait (not acted on)", reason=req.reason,
                notes={"-": "the deadline passed before the flush marks were reconciled "
                            "after a restart: nothing stopped"})
            return PreemptionResult(seq=final.seq, outcome="wait", victims=(),
                                    outcomes=(), waited_s=time.monotonic() - started,
                                    freed={})
        plan = manager.select_victims(req)
        while plan.outcome is Outcome.WAIT:
            manager.wait_for_flush(plan.wait_for, req.deadline)
            plan = manager.replan(plan)
            if time.time() >= req.deadline and plan.outcome is Outcome.WAIT:
                break
        waited = time.monotonic() - started
        record("preemption_wait_seconds", waited, reason=reason_tag(req.reason))
        act = plan.outcome is Outcome.READY or (best_effort and plan.victims)
        victims = plan.victims if act else ()
        with table.lock:
            for sid in victims:
                if sid in table.entries:
                    table.entries[sid].status = StageStatus.PREEMPTED
        outcomes = self.stop(victims, req.deadline)
        with table.lock:
            for sid in victims:
                entry = table.entries.get(sid)
                if entry is not None:
                    table.park_locked(entry)
        notes = {o.stage_id: f"{o.action}: {o.detail}" for o in outcomes}
        if not act:
            notes["-"] = f"plan {plan.outcome.value}: nothing stopped"
        final = manager.record_decision(
            "preempt", plan.outcome.value if act else f"{plan.outcome.value} (not acted on)",
            reason=req.reason, victims=victims, notes=notes)
        table.save()
        return PreemptionResult(seq=final.seq, outcome=plan.outcome.value, victims=tuple(victims),
                                outcomes=tuple(outcomes), waited_s=waited,
                                freed=dict(plan.freed) if act else {})

    def _stopped(self, sid: str, info: Mapping[str, Any] | None) -> StageOutcome:
        self._table.note_checkpoint_info(sid, info)
        gen = None if not info else int(info["generation"])
        if info and not info.get("skipped"):
            return StageOutcome(sid, "checkpointed", gen,
                                f"checkpoint generation {gen} committed, stopped")
        return StageOutcome(sid, "stopped", gen,
                            "pipeline-aligned stage: no out-of-band checkpoint; it resumes "
                            f"from its last barrier generation {gen}")

    def _kill(self, sid: str, handle: Any, deadline: float) -> None:
        """Kill a victim once it is not flushing (or at the deadline).

        The wait and the kill are one step for the stage's flush marks: from the moment it
        is seen not flushing until the kill was sent it is fenced
        (:meth:`~scheduler.marks.FlushMarks.fence`), so a flush start arriving in between
        is not acknowledged before the kill is out - the stage dies before its first
        write, never in the middle of its flush.
        """
        marks = self._table.marks
        fenced = marks.fence(sid, deadline)
        try:
            ray_adapter.kill_actor(handle)
        finally:
            if fenced:
                marks.unfence(sid)
