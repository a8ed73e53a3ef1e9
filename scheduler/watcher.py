"""The watcher: a thread that notices what Ray does not tell the scheduler.

Every ``poll_interval`` (0.5 s) one pass reads node liveness and draining nodes
(``ray.nodes``), the answers of the stages' ``info()`` probes (work counters, generation,
"stopped"; it answers even during a flush), Ray's record of the actors that are suspect, and
the lease of each stage marked as flushing for a while. The Ray calls of a pass do not grow
with the number of stages (issue 20: the scheduler's other work must not slow the flush
acknowledgement down), so:

* the pending probes are collected with one ``ray.wait``; at most ``PROBES_PER_PASS`` are
  sent per pass, longest-unasked first (each stage at most once a second);
* Ray's actor record (a GCS read) is read only for *suspects* - a stage whose probe failed
  or has gone unanswered for ``SUSPECT_AFTER_S`` - and for a rotating sweep of
  ``SWEEP_PER_PASS`` stages; a live stage's answers stand for its record. An actor killed
  is noticed when its next probe fails, or by the sweep;
* a mark's lease is read only once the mark is ``LEASE_CHECK_S`` old, then at most that
  often (a lease outlives its TTL: a younger mark cannot have outlived its lease);
* a table changed only by progress (generations) is saved at most every
  ``SAVE_INTERVAL_S``; everything else saves at once, as before.

Then:

* a dead actor or node clears the stage's ``CHECKPOINT_IN_PROGRESS`` mark (a stage that died
  mid-flush never reports the end of its flush) and, with auto-restore on, restores the
  stage elsewhere (avoiding a dead node); a failed restore is retried every
  ``retry_interval``;
* a ``@checkpointed`` actor (its spec is an ``ActorRecipe``) is judged by Ray's record of
  it, not by its node: Ray may restart it (``max_restarts``), so only an actor Ray records
  DEAD is lost. It is re-created only if it died from a failure (node, worker process,
  memory) and has ``max_restarts == 0``; otherwise it is forgotten, with the reason in the
  decision log - an actor Ray may restart is Ray's (a second incarnation would fight the
  restarted one for the lease), and one that ended on purpose (``ray.kill``, its owner
  exited, out of scope) stays ended; so does an incarnation the scheduler launched that
  was killed (``ray.kill``) before it answered its placement: the failed placement left
  the stage lost, naming that incarnation, and it is forgotten instead of retried;
* a flush mark whose lease expired or was released is cleared;
* a stage whose incarnation says it is stopped (its ``info()["stopped"]``) although the
  table has it running - stopped behind the scheduler's back: by a caller that is not the
  scheduler, or by a ``shutdown`` a killed scheduler sent just before it died - is parked
  as ``STOPPED``: it is no preemption candidate (a preemption would "stop" it again and
  free nothing), holds no resources in the plans, and is not restored automatically (it
  released its lease on purpose); ``restore`` relaunches it on request. Only stage
  actors (a ``StageSpec``): a closed ``@checkpointed`` actor exits, and Ray's record of
  its end decides, as above;
* a node Ray reports draining is handed to :class:`~scheduler.drains.Drains`;
* after a restart of the scheduler (its registry reloaded), before the first pass, every
  running stage is asked whether it is flushing (its ``info()`` answers mid-flush): flush
  marks are not persisted, so without this a flush running across the restart would be
  unprotected. A stage that does not answer within ``RECONCILE_TIMEOUT_S`` is marked too
  (it may be flushing) until its next answer says it is not. Preemptions wait for this
  reconciliation (the ``marks_known`` event) and act on nothing if it is not over by their
  deadline;
* a table changed by any of this is saved.

A pass that fails is logged and the next one runs: the watcher outlives any one failure.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import ray

from blockstore import BlockStore
from scheduler import ray_adapter
from scheduler.drains import Drains
from scheduler.placement import Placement
from scheduler.results import StageStatus
from scheduler.table import StageEntry, StageTable, field_of
from stages.actors.recipe import ActorRecipe

__all__ = ["Watcher"]

log = logging.getLogger(__name__)

#: Seconds the reconciliation after a reload waits for the stages' answers.
RECONCILE_TIMEOUT_S = 5.0
#: Seconds a stage's ``info()`` probe may go unanswered before its actor record is read.
SUSPECT_AFTER_S = 2.0
#: Running stages whose actor record is read every pass anyway (a rotating sweep).
SWEEP_PER_PASS = 8
#: Most ``info()`` probes sent in one pass (each stage at most once a second).
PROBES_PER_PASS = 16
#: A flush mark's lease is checked once the mark is this old, then at most this often.
LEASE_CHECK_S = 1.0
#: Least seconds between two saves of a table changed only by progress (generations).
SAVE_INTERVAL_S = 1.0


class Watcher:
    """Polls Ray and the store for lost stages, stale flush marks, drains and work done.

    Args:
        table: The scheduler's stage table.
        placement: Restores lost stages.
        drains: Evacuates draining nodes.
        pool: Runs restores.
        stop: Ends the thread when set.
        store_for: Opens (or reuses) the store of a stage's lease, by URL.
        default_store_url: Store of stages whose spec names none.
        poll_interval: Seconds between passes.
        retry_interval: Seconds between attempts to restore a lost stage.
        auto_restore: Whether lost stages are restored (read at every pass).
        marks_known: Set by the watcher once flush marks are known (at once on a fresh
            start; after the reconciliation on a reload).
    """

    def __init__(self, table: StageTable, placement: Placement, drains: Drains, *,
                 pool: ThreadPoolExecutor, stop: threading.Event,
                 store_for: Callable[[str], BlockStore], default_store_url: str,
                 poll_interval: float, retry_interval: float,
                 auto_restore: Callable[[], bool], marks_known: threading.Event) -> None:
        self._table = table
        self._placement = placement
        self._drains = drains
        self._pool = pool
        self._stop = stop
        self._store_for = store_for
        self._default_store_url = default_store_url
        self._poll_interval = poll_interval
        self._retry_interval = retry_interval
        self._auto_restore = auto_restore
        self._thread = threading.Thread(target=self._run, name="scheduler-watcher", daemon=True)
        self._reconcile = False
        self._marks_known = marks_known
        self._suspect_next: set[str] = set()
        self._sweep = 0
        self._lease_checked: dict[str, float] = {}
        self._saved_at = 0.0

    def start(self, *, reloaded: bool) -> None:
        """Start the polling thread; ``reloaded``: reconcile flush marks first."""
        self._reconcile = reloaded
        if not reloaded:
            self._marks_known.set()
        self._thread.start()

    def _run(self) -> None:
        if self._reconcile:
            try:
                self.reconcile_flush_marks(RECONCILE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - never leave preemptions waiting forever
                log.exception("flush-mark reconciliation failed")
            finally:
                self._marks_known.set()
        while not self._stop.wait(self._poll_interval):
            try:
                self.watch_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("scheduler watcher pass failed")

    def watch_once(self) -> None:
        """One pass (see the module docstring)."""
        table = self._table
        nodes = ray_adapter.list_nodes(include_dead=True)
        alive = {n.node_id for n in nodes if n.alive}
        draining = {n.node_id: n.draining_deadline for n in nodes
                    if n.alive and n.draining_deadline is not None}
        now = time.time()
        mono = time.monotonic()
        lost: list[tuple[str, str, bool]] = []
        ended: list[tuple[str, str]] = []
        retry: list[str] = []
        stopped: list[tuple[str, int]] = []
        with table.lock:
            entries = list(table.entries.values())
        by_id = {e.stage_id: e for e in entries}
        for sid in table.marks.take_completed():
            if sid in by_id:
                by_id[sid].info_at = 0.0  # a new generation: refresh its counters soon
        running = [e for e in entries if e.status == StageStatus.RUNNING]
        answers = self._collect_answers(running)
        suspects = self._suspects(running, answers, mono)
        due: list[StageEntry] = []
        for entry in entries:
            if entry.status == StageStatus.RUNNING:
                read = entry.stage_id in suspects
                if isinstance(entry.spec, ActorRecipe):
                    why, refusal = self._actor_death_of(entry) if read else (None, None)
                    if refusal is not None:
                        ended.append((entry.stage_id, refusal))
                        continue
                else:
                    why = self._death_of(entry, alive, read_actor=read)
                if why is not None:
                    lost.append((entry.stage_id, why, entry.node_id not in alive))
                    continue
                answer = answers.get(entry.stage_id)
                if isinstance(answer, dict) and self._use_info(entry, answer, now) \
                        and not isinstance(entry.spec, ActorRecipe):
                    stopped.append((entry.stage_id, entry.epoch))
                    continue
                if entry.info_ref is None and entry.handle is not None \
                        and now - entry.info_at >= 1.0:
                    due.append(entry)
            elif entry.status == StageStatus.LOST:
                refusal = self._killed_before_it_answered(entry)
                if refusal is not None:
                    ended.append((entry.stage_id, refusal))
                elif self._auto_restore() and entry.spec is not None \
                        and now >= entry.retry_at:
                    retry.append(entry.stage_id)
        # The longest-unasked first, a bounded number per pass: a pass sends as many calls
        # with 1,000 stages as with 10 (each stage is then asked less often than once a
        # second, and its death noticed by the sweep or its next probe).
        for entry in heapq.nsmallest(PROBES_PER_PASS, due, key=lambda e: e.info_at):
            self._probe(entry, now, mono)
        self._check_flush_leases(by_id, {sid for sid, _, _ in lost}, now)
        for sid, why, node_dead in lost:
            self._on_lost(sid, why, node_dead)
        for sid, why in ended:
            self._on_ended(sid, why)
        for sid, epoch in stopped:
            self.park_stopped(sid, epoch)
        for sid in retry:
            self._start_restore(sid, "retry after a failed restore")
        self._drains.notice(draining, now)
        if table.dirty and now - self._saved_at >= SAVE_INTERVAL_S:
            self._saved_at = now
            table.save()

    def _collect_answers(self, running: list[StageEntry]) -> dict[str, object]:
        """The ``info()`` answers that arrived since the last pass (one ``ray.wait`` for
        all): stage id -> the info dict, or the exception its call raised."""
        pending = {e.info_ref: e for e in running if e.info_ref is not None}
        if not pending:
            return {}
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        answers: dict[str, object] = {}
        for ref in ready:
            entry = pending[ref]
            entry.info_ref = None
            try:
                answers[entry.stage_id] = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a dying actor: its record is read
                answers[entry.stage_id] = exc
        return answers

    def _suspects(self, running: list[StageEntry], answers: dict[str, object],
                  mono: float) -> set[str]:
        """The running stages whose actor record is read this pass (see the module
        docstring: the answers to the probes stand for the others)."""
        out = {sid for sid, a in answers.items() if isinstance(a, BaseException)}
        out |= self._suspect_next
        self._suspect_next = set()
        for e in running:
            if e.info_ref is not None and mono - e.info_sent > SUSPECT_AFTER_S:
                out.add(e.stage_id)     # no answer for a while: alive?
            elif e.handle is None and e.actor_id:
                out.add(e.stage_id)     # cannot be probed
        if running:
            start = self._sweep % len(running)
            out.update(e.stage_id for e in (running[start:] + running[:start])[:SWEEP_PER_PASS])
            self._sweep = start + SWEEP_PER_PASS
        return out

    def _probe(self, entry: StageEntry, now: float, mono: float) -> None:
        """Ask the stage for its ``info()`` (the caller checked that one is due)."""
        entry.info_at = now
        entry.info_sent = mono
        try:
            entry.info_ref = entry.handle.info.remote()
        except Exception:  # noqa: BLE001 - a dead handle: read its record next pass
            entry.info_ref = None
            self._suspect_next.add(entry.stage_id)

    def reconcile_flush_marks(self, timeout: float) -> list[str]:
        """Ask every running stage whether it is flushing; mark those that are.

        Returns:
            The ids of the stages marked ``CHECKPOINT_IN_PROGRESS``.
        """
        table = self._table
        with table.lock:
            asked = [(e, self._done_seq(e)) for e in table.entries.values()
                     if e.status == StageStatus.RUNNING and e.handle is not None]
        refs: dict[object, tuple[StageEntry, int]] = {}
        for entry, done_before in asked:
            try:
                refs[entry.handle.info.remote()] = (entry, done_before)
            except Exception:  # noqa: BLE001 - a dead handle: the watcher sees the death
                continue
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout) if refs \
            else ([], [])
        marked: list[str] = []
        for ref in ready:
            entry, done_before = refs[ref]
            try:
                info = ray.get(ref)
            except Exception:  # noqa: BLE001 - dying actor; liveness is checked separately
                continue
            if info.get("stopped") and int(info.get("epoch") or 0) >= entry.epoch \
                    and not isinstance(entry.spec, ActorRecipe):
                self.park_stopped(entry.stage_id, entry.epoch)
                continue
            if info.get("flushing") and int(info.get("epoch") or 0) >= entry.epoch \
                    and table.marks.mark_after_reload(entry.stage_id, done_before):
                marked.append(entry.stage_id)
        # A stage that did not answer in time (a loaded node) may be flushing: marked as if
        # it were, from the reload, so the watcher's next info() answer that says it is
        # not flushing clears the mark (and its death clears it too) - conservative.
        silent = sorted(e.stage_id for r, (e, _) in refs.items() if r not in ready)
        for ref, (entry, done_before) in refs.items():
            if ref not in ready and table.marks.mark_after_reload(entry.stage_id, done_before):
                marked.append(entry.stage_id)
        table.manager.record_decision(
            "reload", "flush marks reconciled", victims=marked,
            notes={"asked": str(len(refs)), "flushing": ", ".join(marked) or "none",
                   "no answer": ", ".join(silent) or "none"})
        return marked

    def _done_seq(self, entry: StageEntry) -> int:
        view = self._table.marks.view(entry.stage_id)
        return 0 if view is None else view.done_seq

    def _death_of(self, entry: StageEntry, alive: set[str], *, read_actor: bool) -> str | None:
        if entry.node_id and entry.node_id not in alive:
            return f"node {entry.node_id[:12]} is dead"
        if entry.actor_id and read_actor:
            view = ray_adapter.actor_view(entry.actor_id)
            if view is None:
                return None  # not yet known to the GCS; look again next pass
            if view.dead:
                return f"actor {entry.actor_id[:12]} is dead"
        return None

    def _actor_death_of(self, entry: StageEntry) -> tuple[str | None, str | None]:
        """``(why lost, None)``, ``(None, why not re-created)`` or ``(None, None)`` (alive,
        restarting, or not yet known) for a ``@checkpointed`` actor's entry."""
        view = ray_adapter.actor_view(entry.actor_id) if entry.actor_id else None
        if view is None or not view.dead:
            return None, None
        who = f"actor {view.actor_id[:12]} is dead ({view.death_reason})"
        if not view.failed:
            return None, f"{who}: ended on purpose, not re-created"
        if view.max_restarts != 0:
            return None, (f"{who} after {view.num_restarts} Ray restart(s): max_restarts="
                          f"{view.max_restarts} leaves it to Ray, not re-created")
        return who, None

    def _killed_before_it_answered(self, entry: StageEntry) -> str | None:
        """Why a lost ``@checkpointed`` actor is not to be re-created, or ``None``.

        A placement that failed leaves the entry naming the incarnation it launched
        (``scheduler/placement.py``). If that one was ended on purpose (``ray.kill``)
        before it answered the placement - a caller that looked it up by name and killed
        it as soon as it came up - it stays ended, as it would had the placement's answer
        come first (then the entry was running, and :meth:`_actor_death_of` forgets it).
        Any other end of it (its constructor failed, it could not be scheduled) is the
        restore's own failure, retried.
        """
        if not isinstance(entry.spec, ActorRecipe) or not entry.actor_id:
            return None
        view = ray_adapter.actor_view(entry.actor_id)
        if view is None or not view.dead or view.death_reason != "RAY_KILL":
            return None
        return (f"actor {view.actor_id[:12]} is dead ({view.death_reason}): killed before "
                "it answered its placement, ended on purpose, not re-created")

    def _on_ended(self, sid: str, why: str) -> None:
        """Forget a ``@checkpointed`` actor that is not to be re-created."""
        table = self._table
        with table.lock:
            entry = table.entries.get(sid)
            if entry is None or entry.status not in (StageStatus.RUNNING, StageStatus.LOST):
                return
            table.forget(sid)
        table.manager.record_decision("lost", "not relaunched", victims=[sid],
                                      notes={sid: why})
        table.save()

    def _on_lost(self, sid: str, why: str, node_dead: bool) -> None:
        table = self._table
        with table.lock:
            entry = table.entries.get(sid)
            if entry is None or entry.status != StageStatus.RUNNING:
                return
            self._park_locked(sid, entry, StageStatus.LOST)
        table.manager.record_decision("lost", "detected", victims=[sid], notes={sid: why})
        table.save()
        if self._auto_restore() and entry.spec is not None:
            self._start_restore(sid, f"auto-restore: {why}",
                                exclude=frozenset({entry.node_id}) if node_dead and entry.node_id
                                else frozenset())

    def _park_locked(self, sid: str, entry: StageEntry, status: StageStatus) -> None:
        """Under the table's lock: running stage ``sid`` has no live incarnation any more
        (lost, or stopped behind the scheduler's back). It takes ``status``, its flush mark
        and pending info probe are dropped, and it leaves the manager (no candidate)."""
        table = self._table
        entry.status = status
        entry.info_ref = None
        table.park_locked(entry)  # its flush mark too

    def park_stopped(self, sid: str, epoch: int) -> bool:
        """Park a running stage whose incarnation of ``epoch`` reported itself stopped.

        Returns:
            Whether it was parked (``False``: no longer running as that epoch - a newer
            incarnation registered, or the scheduler itself stopped or lost it meanwhile).
        """
        table = self._table
        with table.lock:
            entry = table.entries.get(sid)
            if entry is None or entry.status != StageStatus.RUNNING or entry.epoch != epoch:
                return False
            self._park_locked(sid, entry, StageStatus.STOPPED)
        table.manager.record_decision(
            "stopped", "parked", victims=[sid],
            notes={sid: f"incarnation of epoch {epoch} says it is stopped, not by this "
                        "scheduler: no longer a preemption candidate; restore() relaunches it"})
        table.save()
        return True

    def _start_restore(self, sid: str, reason: str, exclude: frozenset[str] = frozenset()) -> None:
        with self._table.lock:
            entry = self._table.entries.get(sid)
            if entry is None or entry.status != StageStatus.LOST:
                return
            entry.status = StageStatus.RESTORING
            entry.retry_at = time.time() + self._retry_interval

        def run() -> None:
            try:
                self._placement.place(sid, exclude=exclude, node_id=None, kind="restore",
                                      reason=reason, timeout=120.0)
            except Exception as exc:  # noqa: BLE001 - recorded by place(); retried later
                log.warning("auto-restore of %s failed: %s", sid, exc)
        self._pool.submit(run)

    def _check_flush_leases(self, by_id: dict[str, StageEntry], skip: set[str],
                            now: float) -> None:
        """Clear the marks of running stages whose lease expired or was released.

        Only marks older than ``LEASE_CHECK_S`` are checked, each at most that often: a
        lease outlives its TTL, so a younger mark cannot have outlived its lease, and the
        cost of a pass stays with the few long flushes, not with every flush.
        """
        table = self._table
        for view in table.marks.flushing():
            sid = view.stage_id
            entry = by_id.get(sid)
            if entry is None or entry.status != StageStatus.RUNNING or sid in skip \
                    or not view.lease_id or view.since is None \
                    or now - view.since < LEASE_CHECK_S \
                    or now - self._lease_checked.get(sid, 0.0) < LEASE_CHECK_S:
                continue
            self._lease_checked[sid] = now
            try:
                url = field_of(entry.spec, "store_url") or self._default_store_url
                info = self._store_for(url).lease_info(view.lease_id)
            except Exception:  # noqa: BLE001 - store unreachable: keep the mark (conservative)
                continue
            if not info.is_held(now) and table.marks.clear(sid, since=view.since):
                table.manager.record_decision(
                    "flush", "mark cleared", victims=[sid],
                    notes={sid: "its lease expired or was released mid-flush"})
        for sid in [s for s in self._lease_checked if s not in by_id]:
            del self._lease_checked[sid]

    def _use_info(self, entry: StageEntry, info: dict, now: float) -> bool:
        """Take in an ``info()`` answer: progress, generation, a reload mark to clear.

        Returns:
            Whether the answer says the incarnation is stopped (the caller parks it).
        """
        table = self._table
        if int(info.get("epoch") or 0) < entry.epoch:
            return False
        if info.get("stopped"):
            return True
        view = table.marks.view(entry.stage_id)
        if view is not None and view.from_reload and not info.get("flushing"):
            table.marks.clear(entry.stage_id, since=view.since)
        gen = info.get("generation")
        with table.lock:
            if gen is not None:
                table.note_generation_locked(entry.stage_id, int(gen),
                                             info.get("last_checkpoint_at"))
            if entry.stage_id in table.manager:
                rec = table.manager.stage(entry.stage_id)
                records = int(info.get("records_since_checkpoint") or 0)
                since = info.get("last_checkpoint_at")
                seconds = max(now - since, 0.0) if since else 0.0
                table.manager.record_work(entry.stage_id, max(records - rec.work_records, 0),
                                          max(seconds - rec.work_seconds, 0.0))
        return False
