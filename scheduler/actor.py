"""The scheduler actor: a thin facade over the parts that do the work.

One named, detached Ray actor per namespace (:func:`get_or_create`). Its remote methods
delegate to parts named after their concept, each in its own module and handed what it
needs (a layout borrowed from large Ray actors kept readable):

=====================  ==========================================================
part                   owns
=====================  ==========================================================
``table``              the stage entries, their lock, the registry document
``manager``            the policy view and victim selection (pure Python)
``placement``          node choice, reservations, launching new incarnations
``stopper``            checkpoint-then-stop with kill fallback; preemptions
``drains``             evacuating draining nodes just in time
``watcher``            the thread noticing deaths, stale marks, drains, work
``table.marks``        the flush marks, on their own lock (``scheduler/marks.py``)
=====================  ==========================================================

Why the actor is as it is:

* **Threaded** (``max_concurrency`` > 1). A flush-start acknowledgement must never wait
  behind a preemption that is itself waiting for that flush, so every method may run
  concurrently; the manager has its own lock and the table another (taken first, never
  while holding the manager's).
* **The acknowledgement has a path of its own** (issue 20: its cost must not grow with the
  number of stages). ``flush_started`` runs in the concurrency group ``marks``,
  ``flush_completed`` in ``marks_done``, never queued behind the default group; they take
  the marks' lock and the manager's, never the table's; the process's GIL switch interval
  is 0.5 ms. Why the mark stays atomic with preemption plans: ``scheduler/marks.py``.
* **Retries across a restart.** The actor has ``max_task_retries`` so observer and
  registration calls in flight when it dies are delivered to its next incarnation (they
  are idempotent and ordered by sequence numbers / epochs). Methods that *act* (``launch``,
  ``checkpoint``, ``preempt``, ``restore``, ``drain_node``) are never retried: re-running a
  preemption would pick extra victims; the caller sees the failure and decides.
* **What is persisted.** Registry changes (register, restore, preempt, drain, checkpoints)
  save the table (:mod:`scheduler.table`). Flush marks are transient and are *not* saved at
  flush start (that would put an fsync in the acknowledgement path): after a restart the
  watcher first asks every running stage whether it is flushing and marks those that are
  (:mod:`scheduler.watcher`), and preemptions and stops wait until it has, so a flush
  running across a restart of the scheduler stays protected.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from blockstore import BlockStore, open_store
from blockstore.logs import configure_from_env
from scheduler import ray_adapter
from scheduler.drains import Drains
from scheduler.errors import RestoreError, SchedulerUnavailableError, UnknownStageError
from scheduler.observer import DEFAULT_SCHEDULER_NAME
from scheduler.placement import Placement
from scheduler.plans import PreemptionRequest
from scheduler.reasons import NonPreemptibleReason
from scheduler.registry import RegistryStore, registry_name
from scheduler.results import DrainResult, PreemptionResult, RestoreResult, StageStatus
from scheduler.stopping import Stopper
from scheduler.table import StageEntry, StageTable, field_of
from scheduler.watcher import Watcher
from stages.actors.actor import resource_amounts
from stages.actors.recipe import ActorRecipe

__all__ = ["Scheduler", "get_or_create", "get_scheduler"]

_PINNED = NonPreemptibleReason.PINNED
#: The concurrency group serving the flush observer's calls (``scheduler/marks.py``), and
#: its threads: a flush start never queues behind the default group's calls.
MARKS_GROUP = "marks"
MARKS_THREADS = 4
#: Completions are fire-and-forget: their own group (one thread), so that a burst of them
#: never sits in front of a start in the same queue.
DONE_GROUP = "marks_done"
#: The actor process's GIL switch interval (seconds; Python's default is 5 ms): a thread
#: serving an acknowledgement gets the interpreter back from the watcher within this.
_SWITCH_INTERVAL_S = 0.0005
#: Memory (bytes) the scheduler actor reserves, so that its node preference is honoured.
_SCHEDULER_MEMORY = 16 * 1024 * 1024


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
        allow_unauthenticated: keep the registry on a shared store without a key
            (refused by default: ``scheduler.registry``).
    """

    def __init__(self, store_url: str, *, name: str = DEFAULT_SCHEDULER_NAME,
                 namespace: str | None = None, poll_interval: float = 0.5,
                 auto_restore: bool = True, retry_interval: float = 2.0,
                 ack_timeout: float = 1.0, max_decisions: int = 1000,
                 allow_unauthenticated: bool = False) -> None:
        ray_adapter.check_ray_version()
        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            sys.setswitchinterval(_SWITCH_INTERVAL_S)  # in its own process only
        configure_from_env()  # $BLOCKPOINT_LOG_FORMAT in this worker (docs/OPERATIONS.md)
        if ray.is_initialized() and namespace is None:
            namespace = ray.get_runtime_context().namespace
        self._name = name
        self._namespace = namespace
        self._auto_restore = bool(auto_restore)
        self._started_at = time.time()
        self._stores: dict[str, BlockStore] = {}
        self._stores_lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="scheduler-work")
        self._registry = RegistryStore(self._store(store_url),
                                       registry_name(name, namespace),
                                       allow_unauthenticated=allow_unauthenticated)
        record = self._registry.open()
        self._table = StageTable(self._registry, name=name, namespace=namespace,
                                 max_decisions=max_decisions)
        self._reloaded_generation: int | None = None
        if record is not None:
            self._table.load(record.document)
            self._reloaded_generation = record.generation
        self._placement = Placement(self._table, name=name, namespace=namespace,
                                    ack_timeout=float(ack_timeout),
                                    retry_interval=float(retry_interval), stop=self._stop)
        # Set once flush marks are trustworthy (see scheduler/watcher.py, reconciliation).
        marks_known = threading.Event()
        self._stopper = Stopper(self._table, marks_known)
        self._drains = Drains(self._table, self._placement, self._stopper, pool=self._pool,
                              stop=self._stop)
        self._watcher = Watcher(self._table, self._placement, self._drains, pool=self._pool,
                                stop=self._stop, store_for=self._store,
                                default_store_url=store_url,
                                poll_interval=float(poll_interval),
                                retry_interval=float(retry_interval),
                                auto_restore=lambda: self._auto_restore,
                                marks_known=marks_known)
        self._table.manager.record_decision(
            "start", "reloaded" if record is not None else "fresh",
            reason=f"scheduler {name} started",
            victims=sorted(self._table.entries),
            notes={"registry": f"generation {record.generation}" if record else "empty"})
        self._watcher.start(reloaded=record is not None)

    # ------------------------------------------------------------------ basics

    def ping(self) -> dict[str, Any]:
        """Liveness probe: name, namespace, pid, start time, registry generation reloaded."""
        return {"name": self._name, "namespace": self._namespace, "pid": os.getpid(),
                "started_at": self._started_at, "reloaded_generation": self._reloaded_generation,
                "stages": len(self._table.entries)}

    def set_auto_restore(self, enabled: bool) -> None:
        """Turn automatic restore of lost stages on or off."""
        self._auto_restore = bool(enabled)

    def shutdown(self) -> None:
        """Stop the watcher, persist, release the registry lease (the actor stays up)."""
        self._stop.set()
        self._table.save()
        self._registry.close()

    def _store(self, url: str) -> BlockStore:
        with self._stores_lock:
            st = self._stores.get(url)
            if st is None or st.closed:
                st = open_store(url)
                self._stores[url] = st
            return st

    # ------------------------------------------------------------------ registration

    def register(self, registration: Any, spec: Any = None) -> dict[str, Any]:
        """Register a stage incarnation (or update it: a newer epoch replaces an older one).

        Accepts a ``stages.actors.actor.StageRegistration`` (what a stage sends from its
        ``__init__``) or a mapping with the same fields (``stage_id``, ``actor``,
        ``node_id``, ``priority``, ``lease_id``, ``epoch``, ``resources``, ``generation``).
        A registration with an epoch older than the known one (a late or zombie
        incarnation) is ignored, and so is that of a ``@checkpointed`` actor the scheduler
        does not know and Ray already records dead: it arrived after its incarnation ended
        and was forgotten (a fire-and-forget registration overtaken by a ``ray.kill``, or
        one Ray retried across a restart of the scheduler); taken, it would bring the
        forgotten stage back. ``spec`` (or ``registration.spec`` if present) is kept so
        the stage can be recreated elsewhere.

        Returns:
            The stage's status entry (see :meth:`status`); for a registration ignored as
            that of a dead actor, ``{"stage_id": ..., "status": "ignored", "reason": ...}``.
        """
        spec = spec if spec is not None else field_of(registration, "spec")
        dead: str | None = None
        if isinstance(spec, ActorRecipe):
            view = _actor_view(field_of(registration, "actor"))
            if view is not None and spec.max_restarts is None:
                # An actor cannot read its own max_restarts: a re-created incarnation is
                # restartable exactly as the first was.
                spec = dataclasses.replace(spec, max_restarts=view.max_restarts)
            if view is not None and view.dead:
                # Refused only if the stage is not in the table - decided by the table
                # under the lock it updates with, so a forget (the watcher's pass) cannot
                # slip between the check and the update and let the stage show again.
                dead = (f"actor {view.actor_id[:12]} is already dead ({view.death_reason}): "
                        "a registration that arrived after its incarnation ended")
        resources = resource_amounts(field_of(registration, "resources", {}) or {},
                                     scheduling=False)
        status, changed = self._table.register(registration, spec, resources, dead=dead)
        if changed:
            self._table.save()
        return status

    def register_spec(self, spec: Any) -> None:
        """Attach (or replace) the spec a registered stage is recreated from."""
        sid = str(field_of(spec, "stage_id"))
        with self._table.lock:
            self._table.get(sid).spec = spec
        self._table.save()

    def adopt(self, handle: Any, spec: Any = None, timeout: float = 60.0) -> dict[str, Any]:
        """Register a running stage actor by asking it for its registration.

        For stages launched without a registrar; waits until the actor has finished
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
        sid = str(field_of(spec, "stage_id"))
        with self._table.lock:
            entry = self._table.entries.get(sid)
            if entry is None:
                entry = StageEntry(sid)
                self._table.entries[sid] = entry
            entry.spec = spec
            entry.status = StageStatus.RESTORING
        return self._placement.place(sid, exclude=frozenset(), node_id=node_id, kind="launch",
                                     reason="launch", timeout=timeout)

    def unregister(self, stage_id: str, kill: bool = False) -> None:
        """Forget a stage (optionally killing its actor)."""
        entry = self._table.forget(stage_id)
        if kill and entry.handle is not None:
            ray_adapter.kill_actor(entry.handle)
        self._table.manager.record_decision("unregister", "done", victims=[stage_id],
                                            notes={stage_id: "killed" if kill else "forgotten"})
        self._table.save()

    def pin(self, stage_id: str) -> bool:
        """Mark a stage ``PINNED`` (never preempted until :meth:`unpin`)."""
        changed = self._table.manager.set_reason(stage_id, _PINNED)
        self._table.save()
        return changed

    def unpin(self, stage_id: str) -> bool:
        """Clear a stage's ``PINNED`` mark."""
        changed = self._table.manager.clear_reason(stage_id, _PINNED)
        self._table.save()
        return changed

    # ------------------------------------------------------------------ observer side

    @ray.method(concurrency_group=MARKS_GROUP)
    def flush_started(self, stage_id: str, lease_id: str, seq: int = 0) -> bool:
        """Set ``CHECKPOINT_IN_PROGRESS`` for the stage; returning is the acknowledgement.

        Returns:
            ``True`` if the stage is now marked, ``False`` if it is unknown (or this start
            is older than a completion already seen).
        """
        return self._table.flush_started(stage_id, lease_id, seq)

    @ray.method(concurrency_group=DONE_GROUP)
    def flush_completed(self, stage_id: str, lease_id: str, ok: bool, seq: int = 0) -> bool:
        """Clear ``CHECKPOINT_IN_PROGRESS`` unless a newer flush of the stage has started.

        Returns:
            ``True`` if the mark was cleared by this call.
        """
        return self._table.flush_completed(stage_id, lease_id, ok, seq)

    def record_checkpoint(self, stage_id: str, generation: int, size_bytes: int = 0,
                          at: float | None = None, duration_s: float | None = None) -> bool:
        """Record a committed checkpoint (resets the stage's work since the last one).

        Returns:
            ``False`` if the generation is not newer than the recorded one (ignored).
        """
        table = self._table
        with table.lock:
            entry = table.get(stage_id)
            if duration_s is not None:
                entry.checkpoint_s = float(duration_s)
            if size_bytes:
                entry.checkpoint_size = int(size_bytes)
            ok = table.note_generation_locked(stage_id, generation, at, size_bytes)
        table.dirty = True
        return ok

    def record_work(self, stage_id: str, records: int = 0, seconds: float = 0.0) -> None:
        """Add work done since the stage's last checkpoint."""
        self._table.manager.record_work(stage_id, records, seconds)

    @ray.method(max_task_retries=0)  # acts: never re-run after a restart
    def checkpoint(self, stage_id: str, step: int = 0, meta: dict[str, Any] | None = None,
                   timeout: float = 120.0) -> dict[str, Any]:
        """Ask a stage to checkpoint now; record and return its checkpoint info dict."""
        with self._table.lock:
            handle = self._table.get(stage_id).handle
        if handle is None:
            raise UnknownStageError(stage_id)
        info = ray.get(handle.checkpoint.remote(step, meta), timeout=timeout)
        self._table.note_checkpoint_info(stage_id, info)
        self._table.save()
        return info

    # ------------------------------------------------------------------ actions

    @ray.method(max_task_retries=0)  # acts: never re-run after a restart
    def preempt(self, request: PreemptionRequest | Mapping[str, Any],
                best_effort: bool = False) -> PreemptionResult:
        """Carry out a preemption request.

        Plans with the manager; while the plan says WAIT (needed stages are flushing), waits
        for the flushes to end (until the deadline) and re-plans. Then stops the victims:
        checkpoint-and-stop when the deadline allows, else kill (see
        :mod:`scheduler.stopping`). Victims are unregistered from the manager (their
        resources count as freed) and kept in the registry as ``preempted``, restorable
        with :meth:`restore`.

        Args:
            request: A :class:`PreemptionRequest` or its ``to_dict()`` form.
            best_effort: Also act on an UNSATISFIABLE plan's victims (default: act on
                READY plans only; an unsatisfiable plan stops nothing).
        """
        return self._stopper.preempt(request, best_effort)

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
        with self._table.lock:
            entry = self._table.get(stage_id)
            if entry.spec is None:
                raise RestoreError(stage_id, "no spec (StageSpec or ActorRecipe) registered "
                                             "for it")
            if entry.status == StageStatus.RESTORING:
                raise RestoreError(stage_id, "a restore is already in progress")
            entry.status = StageStatus.RESTORING
        return self._placement.place(stage_id, exclude=frozenset(exclude_nodes), node_id=None,
                                     kind="restore", reason=reason or "restore requested",
                                     timeout=timeout)

    @ray.method(max_task_retries=0)  # acts: never re-run after a restart
    def drain_node(self, node_id: str, deadline: float, ray_drain: bool = True,
                   reason: str = "", wait: bool = True) -> DrainResult | None:
        """Move every stage off ``node_id`` before ``deadline`` (wall-clock seconds).

        With ``ray_drain`` Ray is first asked to drain the node (``PREEMPTION`` reason), so
        nothing new is placed there; a rejection is recorded and the stages are moved
        anyway. Stages keep running until just in time (see :mod:`scheduler.drains`), then
        checkpoint and are restored elsewhere.

        Returns:
            The result, or ``None`` if ``wait`` is false (the move runs in the background).
        """
        return self._drains.drain_node(node_id, deadline, ray_drain, reason, wait)

    def drain_result(self, node_id: str) -> DrainResult | None:
        """The result of the last completed drain of ``node_id``, if any."""
        return self._drains.result(node_id)

    # ------------------------------------------------------------------ queries

    def status(self) -> dict[str, Any]:
        """The registry, nodes and draining nodes as one JSON-able dict.

        Keys: ``name``, ``namespace``, ``stages`` (one dict per stage: manager record,
        status, epoch, actor id, flushing since, last error), ``nodes`` (``NodeView``
        dicts, dead ones included), ``registry_generation``.
        """
        table = self._table
        with table.lock:
            stages = [table.status_of(table.entries[sid]) for sid in sorted(table.entries)]
        try:
            nodes = [n.to_dict() for n in ray_adapter.list_nodes(include_dead=True)]
        except Exception as exc:  # noqa: BLE001
            nodes = [{"error": str(exc)}]
        return {"name": self._name, "namespace": self._namespace, "stages": stages,
                "nodes": nodes, "started_at": self._started_at,
                "reloaded_generation": self._reloaded_generation}

    def stage(self, stage_id: str) -> dict[str, Any]:
        """One stage's status entry (as in :meth:`status`)."""
        with self._table.lock:
            return self._table.status_of(self._table.get(stage_id))

    def handle_of(self, stage_id: str) -> Any:
        """The current incarnation's actor handle."""
        with self._table.lock:
            return self._table.get(stage_id).handle

    def reasons(self, stage_id: str) -> list[str]:
        """The stage's current non-preemptible reasons (values)."""
        manager = self._table.manager
        if stage_id not in manager:
            return []
        return sorted(r.value for r in manager.reasons(stage_id))

    def decisions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The decision log, newest first, as dicts.

        Decisions made before a restart of this actor are included (without their plans'
        per-candidate detail, which is not persisted): the newest
        :data:`~scheduler.table.PERSISTED_DECISIONS` of them are saved with the registry.
        """
        return self._table.manager.log.as_dicts(limit)

    def snapshot(self) -> dict[str, Any]:
        """The manager's registry snapshot (what is persisted, minus specs and handles)."""
        return self._table.manager.snapshot()


def _actor_view(handle: Any) -> ray_adapter.ActorView | None:
    """Ray's record of the actor behind ``handle``; ``None`` without a handle, or when the
    GCS does not answer (the watcher reads it later)."""
    try:
        return ray_adapter.actor_view(ray_adapter.actor_id_of(handle)) if handle else None
    except Exception:  # noqa: BLE001 - the GCS is slow or gone
        return None


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
    handle = ray.remote(concurrency_groups={MARKS_GROUP: MARKS_THREADS, DONE_GROUP: 1})(Scheduler).options(**opts).remote(store_url, name=name, namespace=ns,
                                                          **options)
    ray.get(handle.ping.remote())
    return handle
