"""The scheduler's table of stages: one entry per stage, its lock, and its persistence.

The scheduler actor keeps two views of each stage. The
:class:`~scheduler.manager.PreemptionManager` holds the *policy* view (priority, resources,
marks, work since the last checkpoint) of stages that have a live incarnation - only those
are preemption candidates. A :class:`StageEntry` here holds the *Ray* view (actor handle,
spec to recreate it from, status, epoch, node, flush sequence numbers) of every stage the
scheduler knows, live or not; a stage without a live incarnation is *parked*: its manager
record is kept on the entry and put back when a new incarnation registers.

Locking: :attr:`StageTable.lock` (re-entrant) guards the entries and is taken before the
manager's own lock, never while holding it. Methods named ``*_locked`` expect the caller to
hold it; the others take it.

Persistence: :meth:`StageTable.save` writes one registry document (manager snapshot, each
entry with its pickled spec and handle, the drains already handled, the newest decisions)
through :class:`~scheduler.registry.RegistryStore`; :meth:`StageTable.load` reads it back
after a restart of the actor. Flush marks and ``RESTORING`` are transient: they are not
trusted after a reload (a stage restoring or moving when the actor died is redone).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ray import cloudpickle

from scheduler import ray_adapter
from scheduler.errors import StaleCheckpointError, UnknownStageError
from scheduler.manager import PreemptionManager
from scheduler.marks import FlushMarks
from scheduler.reasons import NonPreemptibleReason
from scheduler.records import CheckpointSummary
from scheduler.registry import RegistryStore
from scheduler.results import StageStatus

__all__ = ["PERSISTED_DECISIONS", "StageEntry", "StageTable", "field_of"]

log = logging.getLogger(__name__)

_CIP = NonPreemptibleReason.CHECKPOINT_IN_PROGRESS
_RESTORING = NonPreemptibleReason.RESTORING
_DOC_FORMAT = "blockpoint.scheduler.state"
_DOC_VERSION = 1
#: Decisions saved with the registry, so the log survives a restart of the actor.
PERSISTED_DECISIONS = 200


def field_of(obj: Any, name: str, default: Any = None) -> Any:
    """``obj[name]`` for a mapping, else ``getattr(obj, name)`` (registrations and specs
    arrive as dataclasses or as their dict forms)."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


class StageEntry:
    """The actor's bookkeeping for one stage (the manager keeps the policy view)."""

    __slots__ = (
        "_blobs",
        "actor_id",
        "checkpoint_s",
        "checkpoint_size",
        "epoch",
        "handle",
        "info_at",
        "info_ref",
        "info_sent",
        "last_error",
        "lease_id",
        "node_id",
        "record",
        "retry_at",
        "spec",
        "stage_id",
        "status",
    )

    def __init__(self, stage_id: str) -> None:
        self.stage_id = stage_id
        self.handle: Any = None
        self.actor_id: str | None = None
        self.spec: Any = None
        self.status: StageStatus = StageStatus.RUNNING
        self.epoch = 0
        self.node_id: str | None = None
        self.lease_id = ""
        self.checkpoint_s: float | None = None
        self.checkpoint_size = 0
        self.info_ref: Any = None
        self.info_at = 0.0
        #: When the pending ``info()`` probe was sent (monotonic), for the watcher.
        self.info_sent = 0.0
        self.retry_at = 0.0
        # Manager fields kept for stages not in the manager (preempted ones).
        self.record: dict[str, Any] | None = None
        self.last_error = ""
        # What = (the object pickled, its blob): a save pickles only what changed.
        self._blobs: dict[str, tuple[Any, str | None]] = {}

    def _blob(self, what: str, obj: Any) -> str | None:
        if obj is None:
            return None
        cached = self._blobs.get(what)
        if cached is not None and cached[0] is obj:
            return cached[1]
        try:
            text: str | None = base64.b64encode(cloudpickle.dumps(obj)).decode("ascii")
        except Exception as exc:  # noqa: BLE001 - an unpicklable spec is not fatal
            log.warning("stage %s: cannot persist %s: %s", self.stage_id,
                        type(obj).__name__, exc)
            text = None
        self._blobs[what] = (obj, text)
        return text

    def to_doc(self) -> dict[str, Any]:
        blob = self._blob
        return {"status": self.status.value, "epoch": self.epoch, "node_id": self.node_id,
                "lease_id": self.lease_id, "actor_id": self.actor_id,
                "checkpoint_s": self.checkpoint_s, "checkpoint_size": self.checkpoint_size,
                "record": self.record, "handle": blob("handle", self.handle),
                "spec": blob("spec", self.spec)}

    @classmethod
    def from_doc(cls, stage_id: str, doc: Mapping[str, Any]) -> StageEntry:
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
        for what, obj in (("handle", e.handle), ("spec", e.spec)):
            if obj is not None:
                e._blobs[what] = (obj, doc.get(what))
        return e


class StageTable:
    """Every stage the scheduler knows, with the manager and the registry they persist to.

    Guarantees:
        * A registration with an epoch older than the known one (a zombie incarnation) is
          ignored and logged.
        * :meth:`save` writes the whole table or nothing (the registry document is
          crash-atomic); a failed save marks the table dirty so the next change retries.
        * A flush-start mark is only set for a stage the manager knows; a completion older
          than the newest start (by the observer's sequence numbers) never clears it
          (:class:`~scheduler.marks.FlushMarks`, which takes neither this table's lock nor
          any per-stage work).
        * A registration refused as that of a dead actor is refused under the same lock
          hold as the table's update: it never shows the stage, even briefly.

    Args:
        registry: Where the table is persisted (already opened by the caller).
        name: The scheduler's name (saved in the document).
        namespace: Its Ray namespace (saved in the document).
        max_decisions: Capacity of the decision log.
    """

    def __init__(self, registry: RegistryStore, *, name: str, namespace: str | None,
                 max_decisions: int = 1000) -> None:
        self.lock = threading.RLock()
        self.entries: dict[str, StageEntry] = {}
        self.manager = PreemptionManager(max_decisions=max_decisions)
        #: The flush marks, on their own lock (``scheduler/marks.py``).
        self.marks = FlushMarks(lambda: self.manager)
        #: Nodes whose drain was already handled (not evacuated twice).
        self.drains_seen: set[str] = set()
        #: Set when something changed that is worth saving but was not saved yet.
        self.dirty = False
        self._registry = registry
        self._name = name
        self._namespace = namespace
        self._save_lock = threading.Lock()

    # ------------------------------------------------------------------ lookups

    def get(self, stage_id: str) -> StageEntry:
        """The entry of ``stage_id`` (caller holds the lock).

        Raises:
            UnknownStageError: not registered.
        """
        entry = self.entries.get(stage_id)
        if entry is None:
            raise UnknownStageError(stage_id)
        return entry

    def generation(self, sid: str) -> int | None:
        """The last committed generation the manager knows for ``sid``."""
        rec = self.manager.get(sid)
        return None if rec is None or rec.checkpoint is None else rec.checkpoint.generation

    # ------------------------------------------------------------------ registration

    def register(self, registration: Any, spec: Any, resources: Mapping[str, float], *,
                 dead: str | None = None) -> tuple[dict[str, Any], bool]:
        """Register a stage incarnation or update it (a newer epoch replaces an older one).

        Args:
            registration: A ``StageRegistration`` or its mapping form.
            spec: What the stage is recreated from (``None``: keep the known one).
            resources: Its resource amounts.
            dead: Why the registering actor is known to be dead (``None``: it is not): such
                a registration is refused if the stage is not in the table - checked under
                the same lock hold as the update, so it never shows the stage.

        Returns:
            The stage's status entry (``{"stage_id", "status": "ignored", "reason"}`` for
            a refused dead one) and whether anything changed (``False``: ignored).
        """
        sid = str(field_of(registration, "stage_id"))
        handle = field_of(registration, "actor")
        epoch = int(field_of(registration, "epoch", 0) or 0)
        node_id = field_of(registration, "node_id")
        lease_id = str(field_of(registration, "lease_id", "") or "")
        priority = int(field_of(registration, "priority", 0) or 0)
        generation = field_of(registration, "generation")
        with self.lock:
            entry = self.entries.get(sid)
            if entry is None and dead is not None:
                self.manager.record_decision("register", "ignored", victims=[sid],
                                             notes={sid: dead})
                return {"stage_id": sid, "status": "ignored", "reason": dead}, False
            if entry is not None and epoch < entry.epoch:
                self.manager.record_decision(
                    "register", "ignored", victims=[sid],
                    notes={sid: f"epoch {epoch} older than the known {entry.epoch}"})
                return self.status_of(entry), False
            new = entry is None
            if entry is None:
                entry = StageEntry(sid)
                self.entries[sid] = entry
            if handle is not None:
                entry.handle = handle
                entry.actor_id = ray_adapter.actor_id_of(handle)
            if spec is not None:
                entry.spec = spec
            if epoch != entry.epoch:
                self.marks.reset(sid)
            entry.epoch = epoch
            entry.node_id = node_id or entry.node_id
            entry.lease_id = lease_id or entry.lease_id
            self.marks.bind(sid, entry.lease_id)
            if entry.status in (StageStatus.LOST, StageStatus.PREEMPTED, StageStatus.STOPPED):
                entry.status = StageStatus.RUNNING
            self.ensure_in_manager_locked(entry, priority=priority, resources=resources)
            self.manager.update(sid, node_id=entry.node_id or "unknown",
                                lease_id=entry.lease_id or sid, priority=priority,
                                resources=resources)
            if generation is not None:
                self.note_generation_locked(sid, int(generation), None)
            self.manager.record_decision(
                "register", "new" if new else "updated", victims=[sid],
                notes={sid: f"node {str(entry.node_id)[:12]} epoch {epoch} "
                            f"lease {entry.lease_id[:12]}"})
            return self.status_of(entry), True

    def forget(self, stage_id: str) -> StageEntry:
        """Remove a stage from the table and the manager; return its entry.

        Raises:
            UnknownStageError: not registered.
        """
        with self.lock:
            entry = self.get(stage_id)
            del self.entries[stage_id]
            self.marks.forget(stage_id)
            if stage_id in self.manager:
                self.manager.unregister(stage_id)
            return entry

    # ------------------------------------------------------------------ flush marks

    def flush_started(self, stage_id: str, lease_id: str, seq: int) -> bool:
        """Set ``CHECKPOINT_IN_PROGRESS`` for the stage (:meth:`FlushMarks.started`; the
        table's lock is not taken)."""
        return self.marks.started(stage_id, lease_id, seq)

    def flush_completed(self, stage_id: str, lease_id: str, ok: bool, seq: int) -> bool:
        """Clear ``CHECKPOINT_IN_PROGRESS`` unless a newer flush of the stage has started
        (:meth:`FlushMarks.completed`; the table's lock is not taken)."""
        return self.marks.completed(stage_id, lease_id, ok, seq)

    # ------------------------------------------------------------------ manager bridge

    def ensure_in_manager_locked(self, entry: StageEntry, *, priority: int,
                                 resources: Mapping[str, float]) -> None:
        """(Re-)register the entry with the manager if it is not there."""
        if entry.stage_id in self.manager:
            return
        rec = entry.record or {}
        ckpt = rec.get("checkpoint")
        # An operator's pin survives a park; transient marks do not.
        kept = [NonPreemptibleReason(r) for r in rec.get("reasons", ())
                if r not in (_CIP.value, _RESTORING.value)]
        self.manager.register(
            entry.stage_id, node_id=entry.node_id or "unknown",
            priority=int(rec.get("priority", priority)), lease_id=entry.lease_id or entry.stage_id,
            resources=resources or rec.get("resources") or {},
            checkpoint=CheckpointSummary.from_dict(ckpt) if ckpt else None, reasons=kept)
        entry.record = None

    def park_locked(self, entry: StageEntry) -> None:
        """Take a stage with no live incarnation out of the manager.

        Only live stages are preemption candidates and hold resources; the record is kept on
        the entry (for status and persistence) and put back by
        :meth:`ensure_in_manager_locked`.
        """
        self.marks.reset(entry.stage_id)
        if entry.stage_id in self.manager:
            entry.record = self.manager.stage(entry.stage_id).to_dict()
            self.manager.unregister(entry.stage_id)

    def reset_work_locked(self, sid: str) -> None:
        """A new incarnation has done no work since its checkpoint."""
        rec = self.manager.stage(sid)
        if rec.work_records or rec.work_seconds:
            reasons = rec.reasons
            self.manager.unregister(sid)
            self.manager.register(sid, node_id=rec.node_id, priority=rec.priority,
                                  lease_id=rec.lease_id, resources=rec.resources,
                                  checkpoint=rec.checkpoint, reasons=reasons)

    def note_generation_locked(self, sid: str, generation: int, at: float | None,
                               size_bytes: int | None = None) -> bool:
        """Record ``generation`` if newer than the known one."""
        if sid not in self.manager:
            return False
        rec = self.manager.stage(sid)
        if rec.checkpoint is not None and generation <= rec.checkpoint.generation:
            return False
        entry = self.entries.get(sid)
        size = size_bytes if size_bytes else (entry.checkpoint_size if entry else 0)
        try:
            self.manager.record_checkpoint(sid, generation, int(size or 0), at)
        except StaleCheckpointError:
            return False
        self.dirty = True
        return True

    def note_checkpoint_info(self, sid: str, info: Mapping[str, Any] | None) -> None:
        """Record what a stage's ``checkpoint()``/``shutdown()`` answered (its info dict)."""
        if not info:
            return
        with self.lock:
            entry = self.entries.get(sid)
            if entry is None:
                return
            entry.checkpoint_s = float(info.get("duration_s") or entry.checkpoint_s or 0) or None
            entry.checkpoint_size = int(info.get("stored_bytes") or entry.checkpoint_size)
            self.note_generation_locked(sid, int(info["generation"]), info.get("created_at"),
                                        entry.checkpoint_size)

    def status_of(self, entry: StageEntry) -> dict[str, Any]:
        """One stage's status entry: its manager record plus the Ray-side fields."""
        rec = self.manager.get(entry.stage_id)
        base = rec.to_dict() if rec is not None else dict(entry.record or {})
        mark = self.marks.view(entry.stage_id)
        base.update({
            "stage_id": entry.stage_id,
            "status": entry.status.value,
            "epoch": entry.epoch,
            "node_id": entry.node_id,
            "lease_id": entry.lease_id,
            "actor_id": entry.actor_id,
            "has_spec": entry.spec is not None,
            "flushing_since": None if mark is None else mark.since,
            "checkpoint_s": entry.checkpoint_s,
            "last_error": entry.last_error,
        })
        return base

    # ------------------------------------------------------------------ persistence

    def save(self) -> None:
        """Persist the table; on failure log, mark dirty, keep serving (retried later)."""
        with self._save_lock:
            with self.lock:
                self.dirty = False
                doc = {
                    "format": _DOC_FORMAT,
                    "version": _DOC_VERSION,
                    "saved_at": time.time(),
                    "name": self._name,
                    "namespace": self._namespace,
                    "manager": self.manager.snapshot(),
                    "entries": {sid: e.to_doc() for sid, e in self.entries.items()},
                    "drains_seen": sorted(self.drains_seen),
                }
                log_ = self.manager.log
            # Outside the table lock: the log has its own.
            doc["decisions"] = log_.persistable(PERSISTED_DECISIONS)
            try:
                self._registry.save(doc)
            except Exception as exc:  # noqa: BLE001 - keep serving; retried on the next change
                self.dirty = True
                log.error("scheduler registry save failed: %s", exc)

    def load(self, doc: Mapping[str, Any]) -> None:
        """Replace the table's contents with a saved document (at actor start)."""
        if doc.get("format") != _DOC_FORMAT or doc.get("version") != _DOC_VERSION:
            log.error("scheduler registry: unknown document %r v%r; starting empty",
                      doc.get("format"), doc.get("version"))
            return
        manager = PreemptionManager.from_snapshot(doc["manager"],
                                                  max_decisions=self.manager.max_decisions)
        # Transient marks are not trusted across a restart (see the module docstring).
        for rec in manager.stages():
            for reason in (_CIP, _RESTORING):
                manager.clear_reason(rec.stage_id, reason)
        manager.log.set_earlier(doc.get("decisions") or ())
        with self.lock:
            self.manager = manager
            for sid, edoc in dict(doc.get("entries") or {}).items():
                entry = StageEntry.from_doc(sid, edoc)
                if entry.status in (StageStatus.RESTORING, StageStatus.MOVING):
                    entry.status = StageStatus.LOST  # interrupted by the restart: redo it
                if entry.status == StageStatus.RUNNING and entry.handle is None:
                    entry.status = StageStatus.LOST
                self.entries[sid] = entry
                self.marks.bind(sid, entry.lease_id)
                if entry.status != StageStatus.RUNNING:
                    self.park_locked(entry)
            self.drains_seen = set(doc.get("drains_seen") or ())
