"""Drains: move every stage off a node before its deadline, just in time.

A drain is requested through :meth:`Drains.drain_node` (a user, ``blockpoint``) or noticed
in Ray's draining-node table by the watcher (a spot notice, ``ray drain-node``, the
autoscaler), and each node's drain is handled once.

Why just in time: Ray 2.60 kills nothing at a drain deadline and only stops placing actors
on the node, so the stages keep running (and doing useful work) until ``deadline - budget``,
where the budget is twice the slowest stage's last checkpoint time plus the restore
allowance (:meth:`scheduler.placement.Placement.restore_allowance`). Then each stage carries
``RESTORING`` (no preemption may pick a stage being moved), is checkpointed and stopped
(:meth:`scheduler.stopping.Stopper.stop`, always asking for the checkpoint) and is placed on
another node.

The checkpoint comes first: it is given until ``deadline - restore allowance`` when that
leaves it twice its last duration plus 0.5 s, else until the deadline itself (at least that
long from now). A restore runs on another node and may end after the deadline; a checkpoint
cut short is work lost to replay. (It once got 0.5 s whenever the deadline was closer than
the allowance - a short spot notice, or an allowance grown by a slow restore - and a stage
whose checkpoint took longer was killed instead of checkpointed.) The allowance is taken
once per evacuation, so the moves use the budget they were planned with. Moves of one drain run concurrently in the shared pool; each evacuation runs
in a thread of its own, since it waits for those moves and would otherwise starve the pool.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from scheduler import ray_adapter
from scheduler.errors import DrainRejectedError
from scheduler.placement import Placement
from scheduler.reasons import NonPreemptibleReason
from scheduler.results import DrainResult, RestoreResult, StageStatus
from scheduler.stopping import DEFAULT_CHECKPOINT_S, Stopper
from scheduler.table import StageTable

__all__ = ["Drains"]

_RESTORING = NonPreemptibleReason.RESTORING


class Drains:
    """Evacuates draining nodes.

    Guarantees:
        * A node is evacuated at most once at a time; a second request for it waits for
          the running one and returns its result.
        * Every stage on the node is either moved (checkpointed first when it could be)
          or reported in :attr:`DrainResult.failed`.

    Args:
        table: The scheduler's stage table.
        placement: Places the moved stages.
        stopper: Checkpoints and stops them.
        pool: Runs the moves.
        stop: Set when the scheduler shuts down (ends the wait for the move time).
    """

    def __init__(self, table: StageTable, placement: Placement, stopper: Stopper, *,
                 pool: ThreadPoolExecutor, stop: threading.Event) -> None:
        self._table = table
        self._placement = placement
        self._stopper = stopper
        self._pool = pool
        self._stop = stop
        self._evacuating: dict[str, threading.Event] = {}
        self._results: dict[str, DrainResult] = {}

    def drain_node(self, node_id: str, deadline: float, ray_drain: bool = True,
                   reason: str = "", wait: bool = True) -> DrainResult | None:
        """Move every stage off ``node_id`` before ``deadline``; see the module docstring.

        With ``ray_drain`` Ray is first asked to drain the node, so nothing new is placed
        there; a rejection is recorded and the stages are moved anyway.

        Returns:
            The result, or ``None`` if ``wait`` is false (the move runs in the background).
        """
        accepted: bool | None = None
        if ray_drain:
            try:
                ray_adapter.drain_node(node_id, deadline=deadline,
                                       message=reason or "blockpoint scheduler drain")
                accepted = True
            except DrainRejectedError as exc:
                accepted = False
                self._table.manager.record_decision("drain", "ray rejected", reason=reason,
                                                    notes={node_id: exc.reason})
        with self._table.lock:
            self._table.drains_seen.add(node_id)
        if not wait:
            self.spawn(node_id, deadline, reason or "drain requested", accepted)
            return None
        return self._evacuate(node_id, deadline, reason or "drain requested", accepted)

    def result(self, node_id: str) -> DrainResult | None:
        """The result of the last completed drain of ``node_id``, if any."""
        with self._table.lock:
            return self._results.get(node_id)

    def notice(self, draining: dict[str, float | None], now: float) -> None:
        """Start evacuating nodes Ray reports draining (node id -> deadline or ``None``)
        that carry stages and were not handled before."""
        table = self._table
        for node_id, dl in draining.items():
            with table.lock:
                if node_id in table.drains_seen:
                    continue
                table.drains_seen.add(node_id)
                has_stages = any(e.node_id == node_id for e in table.entries.values())
            if has_stages:
                deadline = dl if dl else now + 2 * self._placement.restore_allowance()
                self.spawn(node_id, deadline, "Ray reports the node draining", None)

    def spawn(self, node_id: str, deadline: float, reason: str, accepted: bool | None) -> None:
        """Evacuate in a thread of its own (see the module docstring)."""
        threading.Thread(target=self._evacuate, args=(node_id, deadline, reason, accepted),
                         name=f"evacuate-{node_id[:8]}", daemon=True).start()

    def _evacuate(self, node_id: str, deadline: float, reason: str,
                  accepted: bool | None) -> DrainResult:
        with self._table.lock:
            running = self._evacuating.get(node_id)
            if running is None:
                done = threading.Event()
                self._evacuating[node_id] = done
        if running is not None:
            running.wait()
            with self._table.lock:
                return self._results[node_id]
        try:
            return self._evacuate_now(node_id, deadline, reason, accepted)
        finally:
            with self._table.lock:
                self._evacuating.pop(node_id, None)
            done.set()

    def _evacuate_now(self, node_id: str, deadline: float, reason: str,
                      accepted: bool | None) -> DrainResult:
        table = self._table
        with table.lock:
            sids = sorted(sid for sid, e in table.entries.items()
                          if e.node_id == node_id and e.status == StageStatus.RUNNING)
            allowance = self._placement.restore_allowance()
            budget = max(((table.entries[s].checkpoint_s or DEFAULT_CHECKPOINT_S) * 2
                          for s in sids), default=0.0) + allowance
        table.manager.record_decision(
            "drain", "started", reason=reason, victims=sids,
            notes={node_id: f"deadline in {deadline - time.time():.1f} s, "
                            f"moving at deadline - {budget:.1f} s"})
        start_at = deadline - budget
        while not self._stop.is_set() and time.time() < start_at:
            self._stop.wait(min(start_at - time.time(), 0.2))
        with table.lock:
            for sid in sids:
                entry = table.entries.get(sid)
                if entry is not None and entry.status == StageStatus.RUNNING:
                    entry.status = StageStatus.MOVING
                    if sid in table.manager:
                        table.manager.set_reason(sid, _RESTORING)
        futures = {sid: self._pool.submit(self._move, sid, node_id, deadline, allowance, reason)
                   for sid in sids}
        moved: list[RestoreResult] = []
        checkpointed: list[str] = []
        failed: list[tuple[str, str]] = []
        for sid, fut in futures.items():
            try:
                result, did_checkpoint = fut.result()
                moved.append(result)
                if did_checkpoint:
                    checkpointed.append(sid)
            except Exception as exc:  # noqa: BLE001
                failed.append((sid, f"{type(exc).__name__}: {exc}"))
        result = DrainResult(node_id=node_id, deadline=deadline, ray_accepted=accepted,
                             moved=tuple(moved), checkpointed=tuple(checkpointed),
                             failed=tuple(failed), finished_at=time.time())
        with table.lock:
            self._results[node_id] = result
        late = result.finished_at - deadline
        table.manager.record_decision(
            "drain", "done" if not failed else "partial", reason=reason,
            victims=[m.stage_id for m in moved],
            notes={node_id: f"{len(moved)} moved ({len(checkpointed)} checkpointed), "
                            f"{len(failed)} failed, finished "
                            f"{abs(late):.1f} s {'after' if late > 0 else 'before'} the deadline",
                   **{sid: err for sid, err in failed}})
        table.save()
        return result

    def _move(self, sid: str, node_id: str, deadline: float, allowance: float,
              reason: str) -> tuple[RestoreResult, bool]:
        # Leave the restore allowance for the new incarnation if the checkpoint still fits;
        # else the checkpoint gets the time (see the module docstring).
        now = time.time()
        need = 2 * self._stopper.checkpoint_estimate(sid) + 0.5
        ckpt_deadline = deadline - allowance
        if ckpt_deadline - now < need:
            ckpt_deadline = max(deadline, now + need)
        outcomes = self._stopper.stop([sid], ckpt_deadline, ask="always")
        did_checkpoint = bool(outcomes) and outcomes[0].action == "checkpointed"
        with self._table.lock:
            self._table.entries[sid].status = StageStatus.RESTORING
        result = self._placement.place(sid, exclude=frozenset({node_id}), node_id=None,
                                       kind="move", reason=reason, timeout=120.0)
        return result, did_checkpoint
