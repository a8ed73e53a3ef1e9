"""Placement: where a new incarnation of a stage goes, and launching it there.

Restore, launch and move are all one operation, :meth:`Placement.place`: kill any old
incarnation, pick a node, start the actor there from its spec with a hard
``NodeAffinitySchedulingStrategy``, wait until it answers (it has taken over its lease with
a higher epoch and restored its newest valid checkpoint), then update the table. The spec is
any :class:`~stages.actors.hooks.Relaunchable`: a pipeline stage's ``StageSpec`` or a
``@checkpointed`` actor's ``ActorRecipe`` (``stages/actors/recipe.py``) - each knows how to start
its own kind of actor (``spec.launch``); everything else here is the same for both.

Why the choices are as they are:

* **Node choice**: live, not draining, not excluded, enough free resources, most free CPU;
  the node the stage last ran on is avoided when another has room (an actor that "just
  died" on a node Ray still lists as alive is often the first sign the node is dying).
* **Reservations**: Ray's free-resource view lags behind actor creation, so resources of
  launches still in flight are counted as used until the launch is over; otherwise two
  concurrent restores would pick the same last free slot.
* **Detached actors**: stages the scheduler creates outlive a restart of the scheduler.
* **Restore allowance**: drains reserve time for the restore that follows a move: at
  least ``_RESTORE_ALLOWANCE_S``, growing to twice the slowest recent restore.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from scheduler import ray_adapter
from scheduler.errors import NoNodeAvailableError, RestoreError
from scheduler.observer import PreemptionCheckpointObserver
from scheduler.reasons import NonPreemptibleReason
from scheduler.results import RestoreResult, StageStatus
from scheduler.table import StageTable, field_of
from stages.actors.actor import resource_amounts
from stages.actors.hooks import Relaunchable
from stages.actors.placement import pick_node

__all__ = ["Placement"]

log = logging.getLogger(__name__)

_RESTORING = NonPreemptibleReason.RESTORING
#: Minimum seconds allowed for a restore (launch + lease takeover + reading the checkpoint);
#: the allowance grows to twice the slowest restore seen recently.
_RESTORE_ALLOWANCE_S = 3.0
#: Seconds to keep looking for a node with room before a restore gives up (and is retried).
_PICK_RETRY_S = 3.0
#: ... and while other launches are in flight, until they end (at most this long).
_PICK_IN_FLIGHT_S = 60.0


class Placement:
    """Picks nodes for stages and launches their new incarnations.

    Guarantees:
        * A placed stage runs on a live, non-draining node not in ``exclude``.
        * While a stage is being placed it carries ``RESTORING`` (never a preemption
          victim); its flush mark is cleared (the old incarnation is gone).
        * A failed placement leaves the stage ``LOST`` with ``retry_at`` set, is logged
          and persisted, and raises :class:`~scheduler.errors.RestoreError` (or
          :class:`~scheduler.errors.NoNodeAvailableError`). Its entry then names the
          incarnation that placement launched (none if it launched nothing): the next
          placement kills that one before it launches another, so a launch that answered
          too late never leaves two incarnations behind.

    Args:
        table: The scheduler's stage table.
        name: The scheduler actor's name (given to the new incarnations' observers).
        namespace: Its namespace (the new incarnations are created there).
        ack_timeout: Given to the new incarnations' observers.
        retry_interval: Seconds before a failed placement is retried.
        stop: Set when the scheduler shuts down (ends waits for room).
    """

    def __init__(self, table: StageTable, *, name: str, namespace: str | None,
                 ack_timeout: float, retry_interval: float, stop: threading.Event) -> None:
        self._table = table
        self._name = name
        self._namespace = namespace
        self._ack_timeout = ack_timeout
        self._retry_interval = retry_interval
        self._stop = stop
        # Stage id -> (node id, resources) of launches in flight (see pick_node).
        self._reservations: dict[str, tuple[str, dict[str, float]]] = {}
        self._restore_s = 0.0  # decaying maximum of observed restore times

    def restore_allowance(self) -> float:
        """Seconds to reserve for a restore when planning a move."""
        return max(_RESTORE_ALLOWANCE_S, 2.0 * self._restore_s)

    def place(self, sid: str, *, exclude: frozenset[str], node_id: str | None, kind: str,
              reason: str, timeout: float) -> RestoreResult:
        """Launch a new incarnation of ``sid`` (its entry is already ``RESTORING``)."""
        table = self._table
        t0 = time.time()
        with table.lock:
            entry = table.entries[sid]
            spec = entry.spec
            old_handle = entry.handle
            from_node = entry.node_id
            table.ensure_in_manager_locked(
                entry, priority=int(field_of(spec, "priority", 0) or 0),
                resources=resource_amounts(field_of(spec, "resources", {}) or {},
                                           scheduling=False))
            table.manager.set_reason(sid, _RESTORING)
            table.marks.bind(sid, entry.lease_id)
            table.marks.reset(sid)  # the old incarnation's flush, if any, is over
        handle = None
        try:
            if old_handle is not None:
                ray_adapter.kill_actor(old_handle)
            avoid = frozenset({from_node}) if from_node else frozenset()
            target = node_id or self.pick_node(sid, spec, exclude, avoid)
            try:
                handle = self._launch(spec, target)
                info = ray.get(handle.info.remote(), timeout=timeout)
            finally:
                self._unreserve(sid)
            with table.lock:
                if table.entries.get(sid) is not entry:
                    ray_adapter.kill_actor(handle)
                    raise RestoreError(sid, "unregistered while being restored")
                entry.handle = handle
                entry.actor_id = ray_adapter.actor_id_of(handle)
                entry.node_id = info.get("node_id") or target
                entry.epoch = int(info.get("epoch") or 0)
                entry.lease_id = str(info.get("lease_id") or entry.lease_id)
                entry.status = StageStatus.RUNNING
                entry.last_error = ""
                entry.info_ref = None
                table.marks.reset(sid)
                table.marks.bind(sid, entry.lease_id)
                table.manager.update(sid, node_id=entry.node_id, lease_id=entry.lease_id or sid)
                gen = info.get("generation")
                if gen is not None:
                    table.note_generation_locked(sid, int(gen), None)
                table.reset_work_locked(sid)
        except Exception as exc:
            with table.lock:
                entry.status = StageStatus.LOST
                # The incarnation launched here, if any, is now the stage's: one that did
                # not answer in time may still come up (the next placement kills it), and
                # one that was ended on purpose before it answered (``ray.kill``) is judged
                # by the watcher like any other. The old one was killed above.
                entry.handle = handle
                entry.actor_id = None if handle is None else ray_adapter.actor_id_of(handle)
                entry.last_error = f"{type(exc).__name__}: {exc}"
                entry.retry_at = time.time() + self._retry_interval
                table.park_locked(entry)
            table.manager.record_decision(kind, "failed", reason=reason, victims=[sid],
                                          notes={sid: entry.last_error})
            table.save()
            if isinstance(exc, (NoNodeAvailableError, RestoreError)):
                raise
            raise RestoreError(sid, entry.last_error) from exc
        table.manager.clear_reason(sid, _RESTORING)
        elapsed = time.time() - t0
        with table.lock:
            self._restore_s = max(elapsed, 0.8 * self._restore_s)
        result = RestoreResult(stage_id=sid, node_id=entry.node_id or target, from_node=from_node,
                               epoch=entry.epoch, generation=info.get("generation"),
                               actor_id=entry.actor_id or "", seconds=time.time() - t0)
        table.manager.record_decision(
            kind, "done", reason=reason, victims=[sid],
            notes={sid: f"node {result.node_id[:12]} (from {str(from_node)[:12]}), epoch "
                        f"{result.epoch}, generation {result.generation}, {result.seconds:.2f} s"})
        table.save()
        return result

    def pick_node(self, sid: str, spec: Any, exclude: frozenset[str],
                  avoid: frozenset[str] = frozenset()) -> str:
        """The live, non-draining, non-excluded node with room and the most free CPU.

        Nodes in ``avoid`` are taken only when no other node has room. The choice is
        reserved for ``sid`` until its launch is over. If no node has room, looks again
        for a few seconds (resources of stopped actors come back with a delay), and for as
        long as other launches are in flight (at most a minute): until one answers, its
        actor is counted both by Ray and by its reservation here.

        Raises:
            NoNodeAvailableError: no node has room.
        """
        need = spec.ray_resources()
        give_up = time.time() + _PICK_RETRY_S
        hard_stop = time.time() + _PICK_IN_FLIGHT_S
        while True:
            nodes = ray_adapter.list_nodes()
            with self._table.lock:
                reserved: dict[str, dict[str, float]] = {}
                for node_id, amounts in self._reservations.values():
                    slot = reserved.setdefault(node_id, {})
                    for k, v in amounts.items():
                        slot[k] = slot.get(k, 0.0) + v
                best = pick_node(nodes, need, exclude=exclude, avoid=avoid, reserved=reserved)
                if best is not None:
                    self._reservations[sid] = (best, need)
                    return best
                # Another launch in flight is counted twice until its info() answers (our
                # reservation and Ray's view of the placed actor): wait for it to end.
                in_flight = any(other != sid for other in self._reservations)
            now = time.time()
            if now >= give_up and not (in_flight and now < hard_stop):
                raise NoNodeAvailableError(sid, exclude, f"needs {need}")
            self._stop.wait(0.25)

    def _unreserve(self, sid: str) -> None:
        with self._table.lock:
            self._reservations.pop(sid, None)

    def _launch(self, spec: Relaunchable, node_id: str) -> Any:
        observer = PreemptionCheckpointObserver(
            spec.stage_id, self._name, namespace=self._namespace, ack_timeout=self._ack_timeout)
        return spec.launch(node_id, namespace=self._namespace, observer=observer)
