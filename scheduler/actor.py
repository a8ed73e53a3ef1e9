"""The scheduler actor: preemption, flush marks, restore elsewhere, drains, a durable registry.

One named, detached Ray actor per namespace (:func:`get_or_create`) wraps the
:class:`~scheduler.manager.PreemptionManager` (the policy, pure Python) and carries its
decisions out with Ray: it stops and kills stage actors, recreates them on other nodes from
their :class:`~stages.actor.StageSpec`, drains nodes, and persists its registry in the block
store (:mod:`scheduler.registry`) so that a restart of the actor loses nothing.

Why the design is as it is:

* **Threaded actor** (``max_concurrency`` > 1). A flush-start acknowledgement must never
  wait behind a preemption that is itself waiting for that flush, so every method may run
  concurrently; the manager has its own lock and the actor's bookkeeping another (taken
  first, never while holding the manager's).
* **A watcher thread** polls Ray every ``poll_interval`` (0.5 s): node liveness
  (``ray.nodes``), each stage actor's state (the GCS actor table), draining nodes, lease
  expiry of stages marked as flushing, and each stage's work counters (its ``info()``, which
  answers even during a flush). A dead actor or node clears the stage's
  ``CHECKPOINT_IN_PROGRESS`` mark and - with auto-restore on - restores the stage elsewhere;
  a failed restore is retried every ``retry_interval``.
* **Restore = relaunch from the spec.** The new incarnation takes over the stage's lease by
  force (epoch bump, so a zombie of the old one can no longer write) and restores the newest
  checkpoint that verifies; the scheduler only picks the node (live, not draining, not
  excluded, enough free resources, most free CPU) and pins the actor there with a hard
  ``NodeAffinitySchedulingStrategy``. Actors the scheduler creates are *detached*, so they
  do not die with the scheduler when it restarts.
* **Preempt = checkpoint, then stop, when time allows.** A victim whose last checkpoint
  took ``d`` seconds is asked to checkpoint and shut down if the deadline leaves
  ``2 d + 0.5 s``; otherwise, or if the checkpoint does not finish by the deadline, it is
  killed and its work since its last checkpoint will be replayed. A stage flushing on its
  own is waited for (never killed mid-flush) until the deadline.
* **Drains move stages just in time.** Ray 2.60 kills nothing at a drain deadline and only
  stops placing actors on the node, so the scheduler, for a drain requested through
  :meth:`Scheduler.drain_node` or noticed in Ray's draining-node table, lets the stages run
  until ``deadline - budget`` (budget: twice the stage's last checkpoint time plus a restore
  allowance), then checkpoints each one and restores it on another node.
* **Retries across a restart.** The actor has ``max_task_retries`` so observer and
  registration calls in flight when it dies are delivered to its next incarnation (they
  are idempotent and ordered by sequence numbers / epochs). Methods that *act* (``launch``,
  ``checkpoint``, ``preempt``, ``restore``, ``drain_node``) are never retried: re-running a
  preemption would pick extra victims; the caller sees the failure and decides.
* **What is persisted.** Registry changes (register, restore, preempt, drain, checkpoints)
  save a document with the manager's snapshot, each stage's pickled spec and actor handle,
  status and epoch. Flush marks are transient and are *not* saved at flush start (that
  would put an fsync in the acknowledgement path): after a restart they are cleared, and
  the next flush sets them again. This is the one window where a stage flushing during a
  scheduler restart is not protected.
"""

from __future__ import annotations

import base64
import enum
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.cloudpickle as cloudpickle

from blockstore import BlockStore, open_store
from scheduler import ray_adapter
from scheduler.errors import (
    DrainRejectedError,
    NoNodeAvailableError,
    RestoreError,
    SchedulerUnavailableError,
    StaleCheckpointError,
    UnknownStageError,
)
from scheduler.manager import (
    CheckpointInfo,
    Outcome,
    PreemptionManager,
    PreemptionRequest,
)
from scheduler.observer import DEFAULT_SCHEDULER_NAME, PreemptionCheckpointObserver
from scheduler.reasons import NonPreemptibleReason
from scheduler.registry import RegistryStore

__all__ = [
    "DrainResult",
    "PreemptionResult",
    "RestoreResult",
    "Scheduler",
    "StageOutcome",
    "StageStatus",
    "get_or_create",
    "get_scheduler",
]

log = logging.getLogger(__name__)

_CIP = NonPreemptibleReason.CHECKPOINT_IN_PROGRESS
_RESTORING = NonPreemptibleReason.RESTORING
_PINNED = NonPreemptibleReason.PINNED
_DOC_FORMAT = "blockpoint.scheduler.state"
_DOC_VERSION = 1
#: Decisions saved with the registry, so the log survives a restart of the actor.
PERSISTED_DECISIONS = 200
#: Seconds assumed for a checkpoint whose duration was never measured.
_DEFAULT_CHECKPOINT_S = 1.0
#: Minimum seconds allowed for a restore (launch + lease takeover + reading the checkpoint);
#: the allowance grows to twice the slowest restore seen recently.
_RESTORE_ALLOWANCE_S = 3.0
#: Memory (bytes) the scheduler actor reserves, so that its node preference is honoured.
_SCHEDULER_MEMORY = 16 * 1024 * 1024
#: Seconds to keep looking for a node with room before a restore gives up (and is retried).
_PICK_RETRY_S = 3.0


class StageStatus(str, enum.Enum):
    """Where a stage is in its life, as the scheduler sees it (values are persisted)."""

    #: An incarnation is (believed to be) up.
    RUNNING = "running"
    #: Its actor or node died; a restore is pending (automatic, or on request).
    LOST = "lost"
    #: A new incarnation is being launched.
    RESTORING = "restoring"
    #: Being checkpointed off a draining node.
    MOVING = "moving"
    #: Stopped by a preemption; restored only on request.
    PREEMPTED = "preempted"
    #: Stopped on purpose (kept only in the decision log).
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """What a preemption did to one victim.

    Attributes:
        stage_id: The victim.
        action: ``"checkpointed"`` (checkpointed, then stopped), ``"stopped"`` (stopped
            cleanly without a new checkpoint: a pipeline-aligned stage, whose state is
            saved only at barriers, so it resumes from its last barrier), ``"killed"``
            (stopped without a new checkpoint; work since its last one is replayed) or
            ``"gone"`` (it was already dead).
        generation: The checkpoint generation it stopped at (``None`` if unknown).
        detail: Why, in words.
    """

    stage_id: str
    action: str
    generation: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"stage_id": self.stage_id, "action": self.action,
                "generation": self.generation, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class PreemptionResult:
    """The result of :meth:`Scheduler.preempt`.

    Attributes:
        seq: Sequence number of the final plan's entry in the decision log.
        outcome: The final plan's outcome (``"ready"``, ``"unsatisfiable"``) - ``"wait"``
            never remains: waiting happened inside the call.
        victims: The stages stopped, in victim order.
        outcomes: Per victim, what was done.
        waited_s: Seconds spent waiting for flushing stages.
        freed: Resources held by the victims.
    """

    seq: int
    outcome: str
    victims: tuple[str, ...]
    outcomes: tuple[StageOutcome, ...]
    waited_s: float
    freed: Mapping[str, float] = field(default_factory=dict)

    def outcome_of(self, stage_id: str) -> StageOutcome | None:
        """The outcome for ``stage_id``, or ``None`` if it was not a victim."""
        for out in self.outcomes:
            if out.stage_id == stage_id:
                return out
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"seq": self.seq, "outcome": self.outcome, "victims": list(self.victims),
                "outcomes": [o.to_dict() for o in self.outcomes], "waited_s": self.waited_s,
                "freed": dict(self.freed)}


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """Where a restored stage went.

    Attributes:
        stage_id: The stage.
        node_id: The node it now runs on.
        from_node: The node it ran on before (``None`` if unknown).
        epoch: The new incarnation's lease epoch (higher than any before).
        generation: The checkpoint generation it restored (``None``: started fresh).
        actor_id: The new actor's id.
        seconds: Time from the start of the restore to the new incarnation answering.
    """

    stage_id: str
    node_id: str
    from_node: str | None
    epoch: int
    generation: int | None
    actor_id: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"stage_id": self.stage_id, "node_id": self.node_id, "from_node": self.from_node,
                "epoch": self.epoch, "generation": self.generation, "actor_id": self.actor_id,
                "seconds": self.seconds}


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What a drain did.

    Attributes:
        node_id: The drained node.
        deadline: Its deadline (wall-clock seconds).
        ray_accepted: Whether Ray accepted the drain (``None``: not asked).
        moved: Stages restored elsewhere.
        checkpointed: Stages that checkpointed before moving (the others were killed and
            replay from their previous checkpoint).
        failed: ``(stage_id, error)`` of stages that could not be moved.
        finished_at: Wall-clock time the last stage was restored.
    """

    node_id: str
    deadline: float
    ray_accepted: bool | None
    moved: tuple[RestoreResult, ...]
    checkpointed: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    finished_at: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"node_id": self.node_id, "deadline": self.deadline,
                "ray_accepted": self.ray_accepted, "moved": [m.to_dict() for m in self.moved],
                "checkpointed": list(self.checkpointed), "failed": [list(f) for f in self.failed],
                "finished_at": self.finished_at}


# --------------------------------------------------------------------------- state


class _Entry:
    """The actor's bookkeeping for one stage (the manager keeps the policy view)."""

    __slots__ = ("stage_id", "handle", "actor_id", "spec", "status", "epoch", "node_id",
                 "lease_id", "flush_start_seq", "flush_done_seq", "flush_since",
                 "checkpoint_s", "checkpoint_size", "info_ref", "info_at", "retry_at",
                 "record", "last_error")

    def __init__(self, stage_id: str) -> None:
        self.stage_id = stage_id
        self.handle: Any = None
        self.actor_id: str | None = None
        self.spec: Any = None
        self.status: StageStatus = StageStatus.RUNNING
        self.epoch = 0
        self.node_id: str | None = None
        self.lease_id = ""
        self.flush_start_seq = 0
        self.flush_done_seq = 0
        self.flush_since: float | None = None
        self.checkpoint_s: float | None = None
        self.checkpoint_size = 0
        self.info_ref: Any = None
        self.info_at = 0.0
        self.retry_at = 0.0
        # Manager fields kept for stages not in the manager (preempted ones).
        self.record: dict[str, Any] | None = None
        self.last_error = ""

    def reset_flush(self) -> None:
        self.flush_start_seq = 0
        self.flush_done_seq = 0
        self.flush_since = None

    def to_doc(self) -> dict[str, Any]:
        def blob(obj: Any) -> str | None:
            if obj is None:
                return None
            try:
                return base64.b64encode(cloudpickle.dumps(obj)).decode("ascii")
            except Exception as exc:  # noqa: BLE001 - an unpicklable spec is not fatal
                log.warning("stage %s: cannot persist %s: %s", self.stage_id,
                            type(obj).__name__, exc)
                return None
        return {"status": self.status.value, "epoch": self.epoch, "node_id": self.node_id,
                "lease_id": self.lease_id, "actor_id": self.actor_id,
                "checkpoint_s": self.checkpoint_s, "checkpoint_size": self.checkpoint_size,
                "record": self.record, "handle": blob(self.handle), "spec": blob(self.spec)}

    @classmethod
    def from_doc(cls, stage_id: str, doc: Mapping[str, Any]) -> _Entry:
        def unblob(text: str | None, what: str) -> Any:
            if not text:
                return None
            try:
                return cloudpickle.loads(base64.b64decode(text))
            except Exception as exc:  # noqa: BLE001
                log.warning("stage %s: cannot reload its %s: %s", stage_id, what, exc)
                return None
        e = cls(stage_id)
        try:
            e.status = StageStatus(doc.get("status", StageStatus.RUNNING.value))
        except ValueError:
            e.status = StageStatus.LOST
        e.epoch = int(doc.get("epoch") or 0)
        e.node_id = doc.get("node_id")
        e.lease_id = str(doc.get("lease_id") or "")
        e.actor_id = doc.get("actor_id")
        e.checkpoint_s = doc.get("checkpoint_s")
        e.checkpoint_size = int(doc.get("checkpoint_size") or 0)
        e.record = doc.get("record")
        e.handle = unblob(doc.get("handle"), "actor handle")
        e.spec = unblob(doc.get("spec"), "spec")
        return e


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _cpu_need(spec: Any) -> dict[str, float]:
    """Ray resource amounts a spec's actor needs, keyed as in ``NodeView.free``."""
    need: dict[str, float] = {}
    resources = dict(_field(spec, "resources", {}) or {})
    for key, value in resources.items():
        if key == "num_cpus":
            need["CPU"] = float(value)
        elif key == "num_gpus":
            need["GPU"] = float(value)
        elif key == "memory":
            need["memory"] = float(value)
        elif key == "resources" and isinstance(value, Mapping):
            need.update({k: float(v) for k, v in value.items()})
        else:
            need[key] = float(value)
    if "num_cpus" not in resources:
        need.setdefault("CPU", 1.0)
    return {k: v for k, v in need.items() if v > 0}


# --------------------------------------------------------------------------- actor


class Scheduler:
    """The scheduler actor's class (use :func:`get_or_create` to run it as an actor).

    Guarantees:
        * A flush-start call returns only after the stage's ``CHECKPOINT_IN_PROGRESS``
          mark is set; no plan made after that picks the stage until the matching
          completion (or the stage's death, or its lease's expiry) clears it.
        * :meth:`preempt` never stops a stage while the scheduler knows it is flushing;
          it waits for the flush until the deadline.
        * :meth:`restore` places the new incarnation on a live, non-draining node not in
          ``exclude_nodes``; the incarnation takes over the lease with a higher epoch.
        * Every registry change is persisted before the call that made it returns; a
          restarted actor reloads it.
        * Every preemption, restore, drain, loss and registration is in the decision log.

    Args:
        store_url: Block store holding the registry lease (and, by default, the stages').
        name: The actor's name (also used by observers to find it).
        namespace: Its Ray namespace (default: the actor's own).
        poll_interval: Seconds between watcher passes.
        auto_restore: Restore stages whose actor or node died.
        retry_interval: Seconds between attempts to restore a lost stage.
        ack_timeout: Given to the observers of stages the scheduler launches.
        max_decisions: Capacity of the decision log.
    """

    def __init__(self, store_url: str, *, name: str = DEFAULT_SCHEDULER_NAME,
                 namespace: str | None = None, poll_interval: float = 0.5,
                 auto_restore: bool = True, retry_interval: float = 2.0,
                 ack_timeout: float = 1.0, max_decisions: int = 1000) -> None:
        ray_adapter.check_ray_version()
        self._store_url = store_url
        self._name = name
        self._namespace = namespace
        if ray.is_initialized() and namespace is None:
            self._namespace = ray.get_runtime_context().namespace
        self._poll_interval = float(poll_interval)
        self._auto_restore = bool(auto_restore)
        self._retry_interval = float(retry_interval)
        self._ack_timeout = float(ack_timeout)
        self._lock = threading.RLock()
        self._persist_lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._stores: dict[str, BlockStore] = {}
        # Stage id -> (node id, resources) of launches in flight (see _pick_node).
        self._reservations: dict[str, tuple[str, dict[str, float]]] = {}
        self._evacuating: dict[str, threading.Event] = {}
        self._drains_seen: set[str] = set()
        self._drain_results: dict[str, DrainResult] = {}
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="scheduler-work")
        self._stop = threading.Event()
        self._dirty = False
        self._started_at = time.time()
        self._remote_stage_cls: Any = None
        self._restore_s = 0.0  # decaying maximum of observed restore times
        self._registry = RegistryStore(self._store(store_url),
                                       f"_blockpoint/scheduler/{self._namespace or 'default'}/{name}")
        record = self._registry.open()
        self._manager = PreemptionManager(max_decisions=max_decisions)
        self._reloaded_generation: int | None = None
        self._earlier_decisions: list[dict[str, Any]] = []
        if record is not None:
            self._reload(record.document)
            self._reloaded_generation = record.generation
        self._manager.record_decision(
            "start", "reloaded" if record is not None else "fresh",
            reason=f"scheduler {name} started",
            victims=sorted(self._entries),
            notes={"registry": f"generation {record.generation}" if record else "empty"})
        self._watcher = threading.Thread(target=self._watch, name="scheduler-watcher",
                                         daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------------ basics

    def ping(self) -> dict[str, Any]:
        """Liveness probe: name, namespace, pid, start time, registry generation reloaded."""
        import os
        return {"name": self._name, "namespace": self._namespace, "pid": os.getpid(),
                "started_at": self._started_at, "reloaded_generation": self._reloaded_generation,
                "stages": len(self._entries)}

    def set_auto_restore(self, enabled: bool) -> None:
        """Turn automatic restore of lost stages on or off."""
        self._auto_restore = bool(enabled)

    def shutdown(self) -> None:
        """Stop the watcher, persist, release the registry lease (the actor stays up)."""
        self._stop.set()
        self._persist()
        self._registry.close()

    def _store(self, url: str) -> BlockStore:
        with self._lock:
            st = self._stores.get(url)
            if st is None or st.closed:
                st = open_store(url)
                self._stores[url] = st
            return st

    # ------------------------------------------------------------------ registration

    def register(self, registration: Any, spec: Any = None) -> dict[str, Any]:
        """Register a stage incarnation (or update it: a newer epoch replaces an older one).

        Accepts a ``stages.actor.StageRegistration`` (what a stage sends from its
        ``__init__``) or a mapping with the same fields (``stage_id``, ``actor``,
        ``node_id``, ``priority``, ``lease_id``, ``epoch``, ``resources``, ``generation``).
        A registration with an epoch older than the known one (a late or zombie
        incarnation) is ignored. ``spec`` (or ``registration.spec`` if present) is kept so
        the stage can be recreated elsewhere.

        Returns:
            The stage's status entry (see :meth:`status`).
        """
        sid = str(_field(registration, "stage_id"))
        handle = _field(registration, "actor")
        epoch = int(_field(registration, "epoch", 0) or 0)
        node_id = _field(registration, "node_id")
        lease_id = str(_field(registration, "lease_id", "") or "")
        priority = int(_field(registration, "priority", 0) or 0)
        resources = self._resource_view(_field(registration, "resources", {}) or {})
        generation = _field(registration, "generation")
        spec = spec if spec is not None else _field(registration, "spec")
        with self._lock:
            entry = self._entries.get(sid)
            if entry is not None and epoch < entry.epoch:
                self._manager.record_decision(
                    "register", "ignored", victims=[sid],
                    notes={sid: f"epoch {epoch} older than the known {entry.epoch}"})
                return self._entry_status(entry)
            new = entry is None
            if new:
                entry = _Entry(sid)
                self._entries[sid] = entry
            assert entry is not None
            if handle is not None:
                entry.handle = handle
                entry.actor_id = ray_adapter.actor_id_of(handle)
            if spec is not None:
                entry.spec = spec
            if epoch != entry.epoch:
                entry.reset_flush()
            entry.epoch = epoch
            entry.node_id = node_id or entry.node_id
            entry.lease_id = lease_id or entry.lease_id
            if entry.status in (StageStatus.LOST, StageStatus.PREEMPTED, StageStatus.STOPPED):
                entry.status = StageStatus.RUNNING
            self._ensure_in_manager(entry, priority=priority, resources=resources)
            self._manager.update(sid, node_id=entry.node_id or "unknown",
                                 lease_id=entry.lease_id or sid, priority=priority,
                                 resources=resources)
            if generation is not None:
                self._note_generation(sid, int(generation), None)
            self._manager.record_decision(
                "register", "new" if new else "updated", victims=[sid],
                notes={sid: f"node {str(entry.node_id)[:12]} epoch {epoch} "
                            f"lease {entry.lease_id[:12]}"})
            status = self._entry_status(entry)
        self._persist()
        return status

    def register_spec(self, spec: Any) -> None:
        """Attach (or replace) the spec a registered stage is recreated from."""
        sid = str(_field(spec, "stage_id"))
        with self._lock:
            entry = self._get(sid)
            entry.spec = spec
        self._persist()

    def adopt(self, handle: Any, spec: Any = None, timeout: float = 60.0) -> dict[str, Any]:
        """Register a running stage actor by asking it for its registration.

        For stages launched without ``spec.scheduler``; waits until the actor has finished
        constructing (restored) or ``timeout``.
        """
        reg = ray.get(handle.registration.remote(), timeout=timeout)
        return self.register(reg, spec=spec)

    @ray.method(max_task_retries=0)  # acts: never re-run after a restart
    def launch(self, spec: Any, node_id: str | None = None, timeout: float = 120.0) -> RestoreResult:
        """Start a stage from its spec on ``node_id`` (default: the node with most free CPU).

        The actor is detached (it survives a scheduler restart), gets this scheduler's
        flush observer, and is registered with its spec before this returns.
        """
        sid = str(_field(spec, "stage_id"))
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None:
                entry = _Entry(sid)
                self._entries[sid] = entry
            entry.spec = spec
            entry.status = StageStatus.RESTORING
        return self._place(sid, exclude=frozenset(), node_id=node_id, kind="launch",
                           reason="launch", timeout=timeout)

    def unregister(self, stage_id: str, kill: bool = False) -> None:
        """Forget a stage (optionally killing its actor)."""
        with self._lock:
            entry = self._get(stage_id)
            del self._entries[stage_id]
            if stage_id in self._manager:
                self._manager.unregister(stage_id)
            handle = entry.handle
        if kill and handle is not None:
            self._kill(handle)
        self._manager.record_decision("unregister", "done", victims=[stage_id],
                                      notes={stage_id: "killed" if kill else "forgotten"})
        self._persist()

    def pin(self, stage_id: str) -> bool:
        """Mark a stage ``PINNED`` (never preempted until :meth:`unpin`)."""
        changed = self._manager.set_reason(stage_id, _PINNED)
        self._persist()
        return changed

    def unpin(self, stage_id: str) -> bool:
        """Clear a stage's ``PINNED`` mark."""
        changed = self._manager.clear_reason(stage_id, _PINNED)
        self._persist()
        return changed

    # ------------------------------------------------------------------ observer side

    def flush_started(self, stage_id: str, lease_id: str, seq: int = 0) -> bool:
        """Set ``CHECKPOINT_IN_PROGRESS`` for the stage; returning is the acknowledgement.

        Returns:
            ``True`` if the stage is now marked, ``False`` if it is unknown (or this start
            is older than a completion already seen).
        """
        with self._lock:
            entry = self._entries.get(stage_id) or self._by_lease(lease_id)
            if entry is None or entry.stage_id not in self._manager:
                return False
            if seq and seq <= entry.flush_done_seq:
                return False
            entry.flush_start_seq = max(entry.flush_start_seq, seq)
            entry.flush_since = time.time()
            self._manager.set_reason(entry.stage_id, _CIP)
            return True

    def flush_completed(self, stage_id: str, lease_id: str, ok: bool, seq: int = 0) -> bool:
        """Clear ``CHECKPOINT_IN_PROGRESS`` unless a newer flush of the stage has started.

        Returns:
            ``True`` if the mark was cleared by this call.
        """
        with self._lock:
            entry = self._entries.get(stage_id) or self._by_lease(lease_id)
            if entry is None:
                return False
            entry.flush_done_seq = max(entry.flush_done_seq, seq)
            if seq and seq < entry.flush_start_seq:
                return False
            entry.flush_since = None
            if entry.stage_id not in self._manager:
                return False
            cleared = self._manager.clear_reason(entry.stage_id, _CIP)
            if not ok:
                self._manager.record_decision("flush", "failed", victims=[entry.stage_id],
                                              notes={entry.stage_id: "checkpoint flush failed"})
            entry.info_at = 0.0  # refresh its counters soon (a new generation)
            return cleared

    def record_checkpoint(self, stage_id: str, generation: int, size_bytes: int = 0,
                          at: float | None = None, duration_s: float | None = None) -> bool:
        """Record a committed checkpoint (resets the stage's work since the last one).

        Returns:
            ``False`` if the generation is not newer than the recorded one (ignored).
        """
        with self._lock:
            entry = self._get(stage_id)
            if duration_s is not None:
                entry.checkpoint_s = float(duration_s)
            if size_bytes:
                entry.checkpoint_size = int(size_bytes)
            ok = self._note_generation(stage_id, generation, at, size_bytes)
        self._dirty = True
        return ok

    def record_work(self, stage_id: str, records: int = 0, seconds: float = 0.0) -> None:
        """Add work done since the stage's last checkpoint."""
        self._manager.record_work(stage_id, records, seconds)

    @ray.method(max_task_retries=0)  # acts: never re-run after a restart
    def checkpoint(self, stage_id: str, step: int = 0, meta: dict[str, Any] | None = None,
                   timeout: float = 120.0) -> dict[str, Any]:
        """Ask a stage to checkpoint now; record and return its ``CheckpointInfo`` dict."""
        with self._lock:
            entry = self._get(stage_id)
            handle = entry.handle
        if handle is None:
            raise UnknownStageError(stage_id)
        info = ray.get(handle.checkpoint.remote(step, meta), timeout=timeout)
        self._note_info_checkpoint(stage_id, info)
        self._persist()
        return info

    # ------------------------------------------------------------------ preemption

    @ray.method(max_task_retries=0)  # acts: never re-run after a restart
    def preempt(self, request: PreemptionRequest | Mapping[str, Any],
                best_effort: bool = False) -> PreemptionResult:
        """Carry out a preemption request.

        Plans with the manager; while the plan says WAIT (needed stages are flushing), waits
        for the flushes to end (until the deadline) and re-plans. Then stops the victims:
        checkpoint-and-stop when the deadline allows, else kill (see the module docstring).
        Victims are unregistered from the manager (their resources count as freed) and
        kept in the registry as ``preempted``, restorable with :meth:`restore`.

        Args:
            request: A :class:`PreemptionRequest` or its ``to_dict()`` form.
            best_effort: Also act on an UNSATISFIABLE plan's victims (default: act on
                READY plans only; an unsatisfiable plan stops nothing).
        """
        req = request if isinstance(request, PreemptionRequest) \
            else PreemptionRequest.from_dict(request)
        t0 = time.time()
        plan = self._manager.select_victims(req)
        while plan.outcome is Outcome.WAIT:
            self._manager.wait_for_flush(plan.wait_for, req.deadline)
            plan = self._manager.replan(plan)
            if time.time() >= req.deadline and plan.outcome is Outcome.WAIT:
                break
        waited = time.time() - t0
        act = plan.outcome is Outcome.READY or (best_effort and plan.victims)
        victims = plan.victims if act else ()
        with self._lock:
            for sid in victims:
                if sid in self._entries:
                    self._entries[sid].status = StageStatus.PREEMPTED
        outcomes = self._stop_all(victims, req.deadline, reason=req.reason)
        with self._lock:
            for sid in victims:
                entry = self._entries.get(sid)
                if entry is not None:
                    self._park(entry)
        notes = {o.stage_id: f"{o.action}: {o.detail}" for o in outcomes}
        if not act:
            notes["-"] = f"plan {plan.outcome.value}: nothing stopped"
        final = self._manager.record_decision(
            "preempt", plan.outcome.value if act else f"{plan.outcome.value} (not acted on)",
            reason=req.reason, victims=victims, notes=notes)
        self._persist()
        return PreemptionResult(seq=final.seq, outcome=plan.outcome.value, victims=tuple(victims),
                                outcomes=tuple(outcomes), waited_s=waited,
                                freed=dict(plan.freed) if act else {})

    def _stop_all(self, victims: Iterable[str], deadline: float, *,
                  reason: str) -> list[StageOutcome]:
        """Checkpoint-and-stop or kill each victim, concurrently; by ``deadline``."""
        pending: dict[Any, tuple[str, Any]] = {}
        results: dict[str, StageOutcome] = {}
        order = list(victims)
        for sid in order:
            with self._lock:
                entry = self._entries.get(sid)
                handle = None if entry is None else entry.handle
                est = (entry.checkpoint_s if entry and entry.checkpoint_s else _DEFAULT_CHECKPOINT_S)
            if handle is None:
                results[sid] = StageOutcome(sid, "gone", self._generation(sid), "no actor handle")
                continue
            left = deadline - time.time()
            if left >= 2 * est + 0.5:
                try:
                    ref = handle.shutdown.remote(checkpoint=True)
                    pending[ref] = (sid, handle)
                    continue
                except Exception as exc:  # noqa: BLE001
                    detail = f"could not ask for a checkpoint ({exc})"
            else:
                detail = (f"{left:.1f} s left, a checkpoint takes ~{est:.1f} s: "
                          "killed, work since the last checkpoint will be replayed")
            self._wait_not_flushing(sid, deadline)
            self._kill(handle)
            results[sid] = StageOutcome(sid, "killed", self._generation(sid), detail)
        while pending:
            left = deadline - time.time()
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=max(left, 0.0))
            for ref in done:
                sid, handle = pending.pop(ref)
                try:
                    info = ray.get(ref)
                    self._note_info_checkpoint(sid, info)
                    gen = None if not info else int(info["generation"])
                    if info and not info.get("skipped"):
                        results[sid] = StageOutcome(
                            sid, "checkpointed", gen,
                            f"checkpoint generation {gen} committed, stopped")
                    else:
                        results[sid] = StageOutcome(
                            sid, "stopped", gen,
                            "pipeline-aligned stage: no out-of-band checkpoint; it resumes "
                            f"from its last barrier generation {gen}")
                except Exception as exc:  # noqa: BLE001
                    results[sid] = StageOutcome(
                        sid, "killed", self._generation(sid),
                        f"checkpoint failed ({type(exc).__name__}: {exc}); replay from the last one")
                self._kill(handle)
            if time.time() >= deadline:
                for ref, (sid, handle) in list(pending.items()):
                    self._kill(handle)
                    results[sid] = StageOutcome(
                        sid, "killed", self._generation(sid),
                        "checkpoint not finished by the deadline; replay from the last one")
                pending.clear()
        return [results[sid] for sid in order if sid in results]

    def _wait_not_flushing(self, sid: str, deadline: float) -> None:
        if sid in self._manager:
            self._manager.wait_for_flush([sid], deadline)

    # ------------------------------------------------------------------ restore

    @ray.method(max_task_retries=0)  # acts: never re-run after a restart
    def restore(self, stage_id: str, exclude_nodes: Iterable[str] = (), reason: str = "",
                timeout: float = 120.0) -> RestoreResult:
        """Recreate a stage on a live node not in ``exclude_nodes``, from its spec.

        Marks it ``RESTORING`` meanwhile; the new incarnation takes over the lease (epoch
        bump) and restores its newest valid checkpoint. Any old incarnation still alive is
        killed first.

        Raises:
            UnknownStageError: not registered.
            RestoreError: no spec, already being restored, or the launch failed.
            NoNodeAvailableError: no node can take it.
        """
        with self._lock:
            entry = self._get(stage_id)
            if entry.spec is None:
                raise RestoreError(stage_id, "no StageSpec registered for it")
            if entry.status == StageStatus.RESTORING:
                raise RestoreError(stage_id, "a restore is already in progress")
            entry.status = StageStatus.RESTORING
        return self._place(stage_id, exclude=frozenset(exclude_nodes), node_id=None,
                           kind="restore", reason=reason or "restore requested", timeout=timeout)

    def _place(self, sid: str, *, exclude: frozenset[str], node_id: str | None, kind: str,
               reason: str, timeout: float) -> RestoreResult:
        """Launch a new incarnation of ``sid`` (its entry is already RESTORING)."""
        t0 = time.time()
        with self._lock:
            entry = self._entries[sid]
            spec = entry.spec
            old_handle = entry.handle
            from_node = entry.node_id
            self._ensure_in_manager(entry, priority=int(_field(spec, "priority", 0) or 0),
                                    resources=self._resource_view(_field(spec, "resources", {})))
            self._manager.set_reason(sid, _RESTORING)
            self._manager.clear_reason(sid, _CIP)
            entry.reset_flush()
        try:
            if old_handle is not None:
                self._kill(old_handle)
            # The old node is avoided when another has room: an actor that "just died"
            # on a node Ray still lists as alive is often the first sign the node is dying.
            avoid = frozenset({from_node}) if from_node else frozenset()
            target = node_id or self._pick_node(sid, spec, exclude, avoid)
            try:
                handle = self._launch(spec, target)
                info = ray.get(handle.info.remote(), timeout=timeout)
            finally:
                self._unreserve(sid)
            with self._lock:
                if self._entries.get(sid) is not entry:
                    self._kill(handle)
                    raise RestoreError(sid, "unregistered while being restored")
                entry.handle = handle
                entry.actor_id = ray_adapter.actor_id_of(handle)
                entry.node_id = info.get("node_id") or target
                entry.epoch = int(info.get("epoch") or 0)
                entry.lease_id = str(info.get("lease_id") or entry.lease_id)
                entry.status = StageStatus.RUNNING
                entry.last_error = ""
                entry.info_ref = None
                entry.reset_flush()
                self._manager.update(sid, node_id=entry.node_id, lease_id=entry.lease_id or sid)
                gen = info.get("generation")
                if gen is not None:
                    self._note_generation(sid, int(gen), None)
                self._reset_work(sid)
        except Exception as exc:
            with self._lock:
                entry.status = StageStatus.LOST
                entry.last_error = f"{type(exc).__name__}: {exc}"
                entry.retry_at = time.time() + self._retry_interval
                self._park(entry)
            self._manager.record_decision(kind, "failed", reason=reason, victims=[sid],
                                          notes={sid: entry.last_error})
            self._persist()
            if isinstance(exc, (NoNodeAvailableError, RestoreError)):
                raise
            raise RestoreError(sid, entry.last_error) from exc
        self._manager.clear_reason(sid, _RESTORING)
        elapsed = time.time() - t0
        with self._lock:
            self._restore_s = max(elapsed, 0.8 * self._restore_s)
        result = RestoreResult(stage_id=sid, node_id=entry.node_id or target, from_node=from_node,
                               epoch=entry.epoch, generation=info.get("generation"),
                               actor_id=entry.actor_id or "", seconds=time.time() - t0)
        self._manager.record_decision(
            kind, "done", reason=reason, victims=[sid],
            notes={sid: f"node {result.node_id[:12]} (from {str(from_node)[:12]}), epoch "
                        f"{result.epoch}, generation {result.generation}, {result.seconds:.2f} s"})
        self._persist()
        return result

    def _restore_allowance(self) -> float:
        """Seconds to reserve for a restore when planning a move."""
        return max(_RESTORE_ALLOWANCE_S, 2.0 * self._restore_s)

    def _pick_node(self, sid: str, spec: Any, exclude: frozenset[str],
                   avoid: frozenset[str] = frozenset()) -> str:
        """The live, non-draining, non-excluded node with room and the most free CPU.

        Nodes in ``avoid`` are taken only when no other node has room.

        Resources of launches still in flight are counted as used (Ray's free-resource
        view lags behind actor creation); the caller releases the reservation with
        :meth:`_unreserve` once the launch is over. If no node has room, looks again for a
        few seconds (resources of stopped actors come back with a delay) before giving up.
        """
        need = _cpu_need(spec)
        give_up = time.time() + _PICK_RETRY_S
        while True:
            nodes = ray_adapter.list_nodes()
            with self._lock:
                reserved: dict[str, dict[str, float]] = {}
                for node_id, amounts in self._reservations.values():
                    slot = reserved.setdefault(node_id, {})
                    for k, v in amounts.items():
                        slot[k] = slot.get(k, 0.0) + v
                best: tuple[bool, float, str] | None = None
                for node in nodes:
                    if node.node_id in exclude or node.draining:
                        continue
                    free = dict(node.free)
                    for k, v in reserved.get(node.node_id, {}).items():
                        free[k] = free.get(k, 0.0) - v
                    if any(free.get(k, 0.0) + 1e-9 < v for k, v in need.items()):
                        continue
                    key = (node.node_id not in avoid, free.get("CPU", 0.0), node.node_id)
                    if best is None or key > best:
                        best = key
                if best is not None:
                    self._reservations[sid] = (best[2], need)
                    return best[2]
            if time.time() >= give_up:
                raise NoNodeAvailableError(sid, exclude, f"needs {need}")
            self._stop.wait(0.25)

    def _unreserve(self, sid: str) -> None:
        with self._lock:
            self._reservations.pop(sid, None)

    def _launch(self, spec: Any, node_id: str) -> Any:
        from stages.actor import actor_options, remote_stage_class

        if self._remote_stage_cls is None:
            self._remote_stage_cls = remote_stage_class()
        opts = actor_options(spec, node_id=node_id, soft=False)
        opts["lifetime"] = "detached"
        opts["namespace"] = self._namespace
        observer = PreemptionCheckpointObserver(
            spec.stage_id, self._name, namespace=self._namespace, ack_timeout=self._ack_timeout)
        return self._remote_stage_cls.options(**opts).remote(spec, observer)

    # ------------------------------------------------------------------ drains

    @ray.method(max_task_retries=0)  # acts: never re-run after a restart
    def drain_node(self, node_id: str, deadline: float, ray_drain: bool = True,
                   reason: str = "", wait: bool = True) -> DrainResult | None:
        """Move every stage off ``node_id`` before ``deadline`` (wall-clock seconds).

        With ``ray_drain`` Ray is first asked to drain the node (``PREEMPTION`` reason), so
        nothing new is placed there; a rejection is recorded and the stages are moved
        anyway. Stages keep running until just in time (see the module docstring), then
        checkpoint and are restored elsewhere.

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
                self._manager.record_decision("drain", "ray rejected", reason=reason,
                                              notes={node_id: exc.reason})
        with self._lock:
            self._drains_seen.add(node_id)
        if not wait:
            self._spawn_evacuation(node_id, deadline, reason or "drain requested", accepted)
            return None
        return self._evacuate(node_id, deadline, reason or "drain requested", accepted)

    def drain_result(self, node_id: str) -> DrainResult | None:
        """The result of the last completed drain of ``node_id``, if any."""
        with self._lock:
            return self._drain_results.get(node_id)

    def _spawn_evacuation(self, node_id: str, deadline: float, reason: str,
                          accepted: bool | None) -> None:
        # A thread of its own, not a pool worker: an evacuation waits for the moves it
        # submits to the pool, so running it there could starve the pool.
        threading.Thread(target=self._evacuate, args=(node_id, deadline, reason, accepted),
                         name=f"evacuate-{node_id[:8]}", daemon=True).start()

    def _evacuate(self, node_id: str, deadline: float, reason: str,
                  accepted: bool | None) -> DrainResult:
        with self._lock:
            running = self._evacuating.get(node_id)
            if running is None:
                done = threading.Event()
                self._evacuating[node_id] = done
        if running is not None:
            running.wait()
            with self._lock:
                return self._drain_results[node_id]
        try:
            return self._evacuate_now(node_id, deadline, reason, accepted)
        finally:
            with self._lock:
                self._evacuating.pop(node_id, None)
            done.set()

    def _evacuate_now(self, node_id: str, deadline: float, reason: str,
                      accepted: bool | None) -> DrainResult:
        with self._lock:
            sids = sorted(sid for sid, e in self._entries.items()
                          if e.node_id == node_id and e.status == StageStatus.RUNNING)
            budget = max(((self._entries[s].checkpoint_s or _DEFAULT_CHECKPOINT_S) * 2
                          for s in sids), default=0.0) + self._restore_allowance()
        self._manager.record_decision(
            "drain", "started", reason=reason, victims=sids,
            notes={node_id: f"deadline in {deadline - time.time():.1f} s, "
                            f"moving at deadline - {budget:.1f} s"})
        start_at = deadline - budget
        while not self._stop.is_set() and time.time() < start_at:
            self._stop.wait(min(start_at - time.time(), 0.2))
        with self._lock:
            for sid in sids:
                entry = self._entries.get(sid)
                if entry is not None and entry.status == StageStatus.RUNNING:
                    entry.status = StageStatus.MOVING
                    # Being moved = being restored elsewhere: no preemption may pick it.
                    if sid in self._manager:
                        self._manager.set_reason(sid, _RESTORING)
        futures = {sid: self._pool.submit(self._move, sid, node_id, deadline, reason)
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
        with self._lock:
            self._drain_results[node_id] = result
        late = result.finished_at - deadline
        self._manager.record_decision(
            "drain", "done" if not failed else "partial", reason=reason,
            victims=[m.stage_id for m in moved],
            notes={node_id: f"{len(moved)} moved ({len(checkpointed)} checkpointed), "
                            f"{len(failed)} failed, finished "
                            f"{abs(late):.1f} s {'after' if late > 0 else 'before'} the deadline",
                   **{sid: err for sid, err in failed}})
        self._persist()
        return result

    def _move(self, sid: str, node_id: str, deadline: float,
              reason: str) -> tuple[RestoreResult, bool]:
        with self._lock:
            entry = self._entries[sid]
            handle = entry.handle
        did_checkpoint = False
        if handle is not None:
            # Leave the restore allowance for the new incarnation.
            ckpt_deadline = max(deadline - self._restore_allowance(), time.time() + 0.5)
            try:
                ref = handle.shutdown.remote(checkpoint=True)
                info = ray.get(ref, timeout=max(ckpt_deadline - time.time(), 0.1))
                self._note_info_checkpoint(sid, info)
                did_checkpoint = bool(info) and not info.get("skipped")
            except Exception as exc:  # noqa: BLE001 - killed below; replays from its last one
                log.warning("stage %s: checkpoint before moving failed: %s", sid, exc)
                self._wait_not_flushing(sid, ckpt_deadline)
        with self._lock:
            entry.status = StageStatus.RESTORING
        result = self._place(sid, exclude=frozenset({node_id}), node_id=None, kind="move",
                             reason=reason, timeout=120.0)
        return result, did_checkpoint

    # ------------------------------------------------------------------ queries

    def status(self) -> dict[str, Any]:
        """The registry, nodes and draining nodes as one JSON-able dict.

        Keys: ``name``, ``namespace``, ``stages`` (one dict per stage: manager record,
        status, epoch, actor id, flushing since, last error), ``nodes`` (``NodeView``
        dicts, dead ones included), ``registry_generation``.
        """
        with self._lock:
            stages = [self._entry_status(self._entries[sid]) for sid in sorted(self._entries)]
        try:
            nodes = [n.to_dict() for n in ray_adapter.list_nodes(include_dead=True)]
        except Exception as exc:  # noqa: BLE001
            nodes = [{"error": str(exc)}]
        return {"name": self._name, "namespace": self._namespace, "stages": stages,
                "nodes": nodes, "started_at": self._started_at,
                "reloaded_generation": self._reloaded_generation}

    def stage(self, stage_id: str) -> dict[str, Any]:
        """One stage's status entry (as in :meth:`status`)."""
        with self._lock:
            return self._entry_status(self._get(stage_id))

    def handle_of(self, stage_id: str) -> Any:
        """The current incarnation's actor handle."""
        with self._lock:
            return self._get(stage_id).handle

    def reasons(self, stage_id: str) -> list[str]:
        """The stage's current non-preemptible reasons (values)."""
        if stage_id not in self._manager:
            return []
        return sorted(r.value for r in self._manager.reasons(stage_id))

    def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The decision log, newest first, as dicts.

        Decisions made before a restart of this actor are included (without their plans'
        per-candidate detail, which is not persisted): the newest ``PERSISTED_DECISIONS`` of
        them are saved with the registry.
        """
        live = [d.to_dict() for d in self._manager.decisions(limit)]
        if limit is not None and len(live) >= limit:
            return live
        oldest = min((d["seq"] for d in live), default=None)
        earlier = [d for d in self._earlier_decisions if oldest is None or d["seq"] < oldest]
        out = live + earlier
        return out if limit is None else out[:limit]

    def snapshot(self) -> dict[str, Any]:
        """The manager's registry snapshot (what is persisted, minus specs and handles)."""
        return self._manager.snapshot()

    # ------------------------------------------------------------------ watcher

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self._watch_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("scheduler watcher pass failed")

    def _watch_once(self) -> None:
        nodes = ray_adapter.list_nodes(include_dead=True)
        alive = {n.node_id for n in nodes if n.alive}
        draining = {n.node_id: n.draining_deadline for n in nodes
                    if n.alive and n.draining_deadline is not None}
        now = time.time()
        lost: list[tuple[str, str, bool]] = []
        retry: list[str] = []
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            if entry.status == StageStatus.RUNNING:
                why = self._death_of(entry, alive)
                if why is not None:
                    lost.append((entry.stage_id, why, entry.node_id not in alive))
                    continue
                self._check_flush_lease(entry, now)
                self._refresh_info(entry, now)
            elif entry.status == StageStatus.LOST and self._auto_restore \
                    and entry.spec is not None and now >= entry.retry_at:
                retry.append(entry.stage_id)
        for sid, why, node_dead in lost:
            self._on_lost(sid, why, node_dead)
        for sid in retry:
            self._start_restore(sid, "retry after a failed restore")
        for node_id, dl in draining.items():
            with self._lock:
                if node_id in self._drains_seen:
                    continue
                self._drains_seen.add(node_id)
                has_stages = any(e.node_id == node_id for e in self._entries.values())
            if has_stages:
                deadline = dl if dl else now + 2 * self._restore_allowance()
                self._spawn_evacuation(node_id, deadline, "Ray reports the node draining", None)
        if self._dirty:
            self._persist()

    def _death_of(self, entry: _Entry, alive: set[str]) -> str | None:
        if entry.node_id and entry.node_id not in alive:
            return f"node {entry.node_id[:12]} is dead"
        if entry.actor_id:
            view = ray_adapter.actor_view(entry.actor_id)
            if view is None:
                return None  # not yet known to the GCS; look again next pass
            if view.dead:
                return f"actor {entry.actor_id[:12]} is dead"
        return None

    def _on_lost(self, sid: str, why: str, node_dead: bool) -> None:
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None or entry.status != StageStatus.RUNNING:
                return
            entry.status = StageStatus.LOST
            entry.reset_flush()
            entry.info_ref = None
            if sid in self._manager:
                self._manager.clear_reason(sid, _CIP)
            self._park(entry)
        self._manager.record_decision("lost", "detected", victims=[sid], notes={sid: why})
        self._persist()
        if self._auto_restore and entry.spec is not None:
            self._start_restore(sid, f"auto-restore: {why}",
                                exclude=frozenset({entry.node_id}) if node_dead and entry.node_id
                                else frozenset())

    def _start_restore(self, sid: str, reason: str, exclude: frozenset[str] = frozenset()) -> None:
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None or entry.status != StageStatus.LOST:
                return
            entry.status = StageStatus.RESTORING
            entry.retry_at = time.time() + self._retry_interval

        def run() -> None:
            try:
                self._place(sid, exclude=exclude, node_id=None, kind="restore", reason=reason,
                            timeout=120.0)
            except Exception as exc:  # noqa: BLE001 - recorded by _place; retried later
                log.warning("auto-restore of %s failed: %s", sid, exc)
        self._pool.submit(run)

    def _check_flush_lease(self, entry: _Entry, now: float) -> None:
        if entry.flush_since is None or not entry.lease_id:
            return
        try:
            url = _field(entry.spec, "store_url") or self._store_url
            info = self._store(url).lease_info(entry.lease_id)
        except Exception:  # noqa: BLE001 - store unreachable: keep the mark (conservative)
            return
        if not info.is_held(now):
            with self._lock:
                entry.flush_since = None
                if entry.stage_id in self._manager:
                    self._manager.clear_reason(entry.stage_id, _CIP)
            self._manager.record_decision(
                "flush", "mark cleared", victims=[entry.stage_id],
                notes={entry.stage_id: "its lease expired or was released mid-flush"})

    def _refresh_info(self, entry: _Entry, now: float) -> None:
        """Collect a pending ``info()`` answer; ask again at most once a second."""
        ref = entry.info_ref
        if ref is not None:
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                return
            entry.info_ref = None
            try:
                info = ray.get(ref)
            except Exception:  # noqa: BLE001 - dying actor; liveness is checked separately
                return
            if int(info.get("epoch") or 0) < entry.epoch:
                return
            gen = info.get("generation")
            with self._lock:
                if gen is not None:
                    self._note_generation(entry.stage_id, int(gen), info.get("last_checkpoint_at"))
                if entry.stage_id in self._manager:
                    rec = self._manager.stage(entry.stage_id)
                    records = int(info.get("records_since_checkpoint") or 0)
                    since = info.get("last_checkpoint_at")
                    seconds = max(now - since, 0.0) if since else 0.0
                    self._manager.record_work(entry.stage_id, max(records - rec.work_records, 0),
                                              max(seconds - rec.work_seconds, 0.0))
        if entry.handle is not None and now - entry.info_at >= 1.0:
            entry.info_at = now
            try:
                entry.info_ref = entry.handle.info.remote()
            except Exception:  # noqa: BLE001
                entry.info_ref = None

    # ------------------------------------------------------------------ persistence

    def _persist(self) -> None:
        with self._persist_lock:
            with self._lock:
                self._dirty = False
                doc = {
                    "format": _DOC_FORMAT,
                    "version": _DOC_VERSION,
                    "saved_at": time.time(),
                    "name": self._name,
                    "namespace": self._namespace,
                    "manager": self._manager.snapshot(),
                    "entries": {sid: e.to_doc() for sid, e in self._entries.items()},
                    "drains_seen": sorted(self._drains_seen),
                }
            # Outside the bookkeeping lock: the manager has its own.
            doc["decisions"] = [{k: v for k, v in d.items() if k != "plan"}
                                for d in self.decisions(PERSISTED_DECISIONS)]
            try:
                self._registry.save(doc)
            except Exception as exc:  # noqa: BLE001 - keep serving; retried on the next change
                self._dirty = True
                log.error("scheduler registry save failed: %s", exc)

    def _reload(self, doc: Mapping[str, Any]) -> None:
        if doc.get("format") != _DOC_FORMAT or doc.get("version") != _DOC_VERSION:
            log.error("scheduler registry: unknown document %r v%r; starting empty",
                      doc.get("format"), doc.get("version"))
            return
        manager = PreemptionManager.from_snapshot(doc["manager"],
                                                  max_decisions=self._manager.max_decisions)
        # Transient marks are not trusted across a restart (see the module docstring).
        for rec in manager.stages():
            for reason in (_CIP, _RESTORING):
                manager.clear_reason(rec.stage_id, reason)
        self._manager = manager
        for sid, edoc in dict(doc.get("entries") or {}).items():
            entry = _Entry.from_doc(sid, edoc)
            if entry.status in (StageStatus.RESTORING, StageStatus.MOVING):
                entry.status = StageStatus.LOST  # interrupted by the restart: redo it
            if entry.status == StageStatus.RUNNING and entry.handle is None:
                entry.status = StageStatus.LOST
            self._entries[sid] = entry
            if entry.status != StageStatus.RUNNING:
                self._park(entry)
        self._drains_seen = set(doc.get("drains_seen") or ())
        self._earlier_decisions = [dict(d) for d in doc.get("decisions") or ()
                                   if isinstance(d, Mapping) and "seq" in d]

    # ------------------------------------------------------------------ helpers

    def _get(self, stage_id: str) -> _Entry:
        entry = self._entries.get(stage_id)
        if entry is None:
            raise UnknownStageError(stage_id)
        return entry

    def _by_lease(self, lease_id: str) -> _Entry | None:
        for entry in self._entries.values():
            if entry.lease_id and entry.lease_id == lease_id:
                return entry
        return None

    @staticmethod
    def _resource_view(resources: Mapping[str, Any]) -> dict[str, float]:
        """Spec resource options (``num_cpus``...) as the manager's resource names."""
        out: dict[str, float] = {}
        for key, value in dict(resources).items():
            if key == "resources" and isinstance(value, Mapping):
                out.update({str(k): float(v) for k, v in value.items()})
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                name = {"num_cpus": "CPU", "num_gpus": "GPU"}.get(key, key)
                out[name] = float(value)
        return out

    def _ensure_in_manager(self, entry: _Entry, *, priority: int,
                           resources: Mapping[str, float]) -> None:
        """(Re-)register the entry with the manager if it is not there (caller holds lock)."""
        if entry.stage_id in self._manager:
            return
        rec = entry.record or {}
        ckpt = rec.get("checkpoint")
        # An operator's pin survives a park; transient marks do not.
        kept = [NonPreemptibleReason(r) for r in rec.get("reasons", ())
                if r not in (_CIP.value, _RESTORING.value)]
        self._manager.register(
            entry.stage_id, node_id=entry.node_id or "unknown",
            priority=int(rec.get("priority", priority)), lease_id=entry.lease_id or entry.stage_id,
            resources=resources or rec.get("resources") or {},
            checkpoint=CheckpointInfo.from_dict(ckpt) if ckpt else None, reasons=kept)
        entry.record = None

    def _park(self, entry: _Entry) -> None:
        """Take a stage with no live incarnation out of the manager (caller holds the lock).

        Only live stages are preemption candidates and hold resources; the record is kept on
        the entry (for status and persistence) and put back by :meth:`_ensure_in_manager`.
        """
        if entry.stage_id in self._manager:
            entry.record = self._manager.stage(entry.stage_id).to_dict()
            self._manager.unregister(entry.stage_id)

    def _reset_work(self, sid: str) -> None:
        """A new incarnation has done no work since its checkpoint (caller holds lock)."""
        rec = self._manager.stage(sid)
        if rec.work_records or rec.work_seconds:
            reasons = rec.reasons
            self._manager.unregister(sid)
            self._manager.register(sid, node_id=rec.node_id, priority=rec.priority,
                                   lease_id=rec.lease_id, resources=rec.resources,
                                   checkpoint=rec.checkpoint, reasons=reasons)

    def _note_generation(self, sid: str, generation: int, at: float | None,
                         size_bytes: int | None = None) -> bool:
        """Record ``generation`` if newer (caller holds the lock)."""
        if sid not in self._manager:
            return False
        rec = self._manager.stage(sid)
        if rec.checkpoint is not None and generation <= rec.checkpoint.generation:
            return False
        entry = self._entries.get(sid)
        size = size_bytes if size_bytes else (entry.checkpoint_size if entry else 0)
        try:
            self._manager.record_checkpoint(sid, generation, int(size or 0), at)
        except StaleCheckpointError:
            return False
        self._dirty = True
        return True

    def _note_info_checkpoint(self, sid: str, info: Mapping[str, Any] | None) -> None:
        if not info:
            return
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None:
                return
            entry.checkpoint_s = float(info.get("duration_s") or entry.checkpoint_s or 0) or None
            entry.checkpoint_size = int(info.get("stored_bytes") or entry.checkpoint_size)
            self._note_generation(sid, int(info["generation"]), info.get("created_at"),
                                  entry.checkpoint_size)

    def _generation(self, sid: str) -> int | None:
        rec = self._manager.get(sid)
        return None if rec is None or rec.checkpoint is None else rec.checkpoint.generation

    def _entry_status(self, entry: _Entry) -> dict[str, Any]:
        rec = self._manager.get(entry.stage_id)
        base = rec.to_dict() if rec is not None else dict(entry.record or {})
        base.update({
            "stage_id": entry.stage_id,
            "status": entry.status.value,
            "epoch": entry.epoch,
            "node_id": entry.node_id,
            "lease_id": entry.lease_id,
            "actor_id": entry.actor_id,
            "has_spec": entry.spec is not None,
            "flushing_since": entry.flush_since,
            "checkpoint_s": entry.checkpoint_s,
            "last_error": entry.last_error,
        })
        return base

    @staticmethod
    def _kill(handle: Any) -> None:
        try:
            ray.kill(handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already dead
            log.debug("kill: %s", exc)


# --------------------------------------------------------------------------- factory


def get_scheduler(name: str = DEFAULT_SCHEDULER_NAME, namespace: str | None = None) -> Any:
    """The handle of a running scheduler actor.

    Raises:
        SchedulerUnavailableError: none of that name in that namespace.
    """
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError as exc:
        raise SchedulerUnavailableError(name, namespace, str(exc)) from exc


def get_or_create(name: str = DEFAULT_SCHEDULER_NAME, namespace: str | None = None,
                  store_url: str | None = None, *, node_id: str | None = None,
                  max_restarts: int = -1, max_concurrency: int = 32,
                  **options: Any) -> Any:
    """Return the one scheduler actor of ``name`` in ``namespace``, creating it if needed.

    The actor is detached (outlives the driver), restartable (``max_restarts``; in-flight
    observer and query calls are retried a few times across a restart) and threaded
    (``max_concurrency``); it takes no CPU (16 MiB of the ``memory`` resource, so that Ray
    honours ``node_id``). Creation is race-free (``get_if_exists``): two drivers get the same actor.

    Args:
        name: Actor name.
        namespace: Ray namespace (``None``: the driver's).
        store_url: Store for its registry; required to create it.
        node_id: Prefer this node (soft affinity), e.g. the head node, which is not
            preempted.
        max_restarts: Ray restarts of the actor (-1: unlimited).
        max_concurrency: Threads serving calls.
        **options: Passed to :class:`Scheduler` (``poll_interval``, ``auto_restore``...).
    """
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        pass
    if store_url is None:
        raise SchedulerUnavailableError(name, namespace, "not running, and no store_url to create it")
    ray_adapter.check_ray_version()
    ns = namespace or ray.get_runtime_context().namespace
    opts: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": max_restarts,
        "max_task_retries": 3,
        "max_concurrency": max_concurrency,
        "num_cpus": 0,
        # Ray places an actor that requires no resource at all on a random node, ignoring
        # a soft node affinity; a token amount of memory makes the preference count.
        "memory": _SCHEDULER_MEMORY,
    }
    if node_id is not None:
        opts["scheduling_strategy"] = ray_adapter.node_affinity(node_id, soft=True)
    handle = ray.remote(Scheduler).options(**opts).remote(store_url, name=name, namespace=ns,
                                                          **options)
    ray.get(handle.ping.remote())
    return handle
