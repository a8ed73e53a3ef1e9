"""Runs: a pipeline run's committed steps, and pause / resume-exactly-once, in the block store.

Everything lives in the block store itself, so runs work on every backend that the stages'
checkpoints work on (and move with them):

* ``run/<run_id>/step/<step:012d>`` - one lease per committed step, holding one slotted
  document (:class:`blockstore.SlottedDocument`, kind ``BPRD`` version 2) of the fields of
  :class:`RunStep`: time, source position, per-stage lease id / epoch / generation,
  in-flight items, free metadata. Written once; a crash leaves either no readable document
  or the whole one. A save that finds the step's lease held by a driver that died mid-save
  (nothing readable in it) takes the lease over instead of waiting out its TTL.
* ``run/<run_id>/status`` - the run's control lease, holding :class:`RunStatus` as a slotted
  document (kind ``BPRS`` version 2); its generation is the status's ``seq``. A save cut
  short leaves the previous status readable.

A running run is driven by one driver at a time, which holds the control lease for the whole
run (:class:`~stages.pipeline.run_driver.RunDriver`, ``stages/pipeline/run_driver.py``). Its step records
carry its epoch, and a step commits by its status write ``committed_step`` under the control
lease: readers here (:meth:`RunStore.load_step`, ``latest_step``, ``list_steps``,
``iter_steps``, ``prune_steps``) count only steps up to it, so the record of a step whose
driver died or was fenced before that write is no committed step - the step's next commit
replaces it. A run never driven under a hold (``committed_step`` unset) counts every readable
record, as does a step saved without an epoch.

The crash-safety argument of both is the document's (``blockstore/document.py``); the byte
layout is in ``docs/FORMAT.md``.

Why a claim is a lease: acquiring a lease is atomic on every backend and bumps a fencing
epoch. ``claim()`` acquires the control lease *without* stealing (only one driver can hold
it), checks the status is ``paused`` and writes ``claimed`` under its epoch while it keeps
holding the lease (keepalive). Another driver's ``claim`` fails (``RunClaimConflict``)
while the hold lasts. ``complete()`` writes ``running`` (resumed) under the same epoch and
releases: idempotent, and a fenced claimer (its lease expired and someone re-armed the run)
gets ``RunClaimLost`` instead of double-completing. A driver that dies after claiming leaves
status ``claimed`` with an expired control lease: :meth:`RunStore.recover_orphaned` (called
at start-up) re-arms such runs to ``paused`` - under a fresh acquisition, so a second
recoverer or a late original claimer cannot interfere. No double resume, no lost run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from blockstore import (
    BlockStore,
    Lease,
    LeaseHeldError,
    LeaseReader,
    SlottedDocument,
    StaleLeaseError,
    canonical_json,
    default_holder,
)
from blockstore.checks import check_id
from blockstore.errors import LeaseError, LeaseNotFoundError

from .run_errors import (
    RunActiveError,
    RunClaimConflict,
    RunClaimLost,
    RunError,
    RunFencedError,
    RunNotFoundError,
    RunNotPausedError,
    RunStepExistsError,
)
from .run_claim import RunClaim
from .run_records import CLAIMED, FINISHED, PAUSED, RUNNING, RunStatus, RunStep, StageCommit

__all__ = [
    "RunClaim",
    "RunActiveError",
    "RunClaimConflict",
    "RunClaimLost",
    "RunError",
    "RunFencedError",
    "RunNotFoundError",
    "RunNotPausedError",
    "RunStatus",
    "RunStep",
    "RunStepExistsError",
    "RunStore",
    "StageCommit",
]

#: Document kinds (the magics of the documents' first layout) and their field version.
STEP_KIND = b"BPRD"
STATUS_KIND = b"BPRS"
DOCUMENT_VERSION = 2
#: TTL of a step lease while its document is written (a dead saver's hold is taken over).
_STEP_TTL = 30.0
#: Takeovers of a step's lease tried before a save gives up (another saver keeps racing).
_STEP_ATTEMPTS = 5

# -- documents ---------------------------------------------------------------------------------
def _step_document(lease: LeaseReader) -> SlottedDocument:
    return SlottedDocument(lease, kind=STEP_KIND, version=DOCUMENT_VERSION)


def _status_document(lease: LeaseReader) -> SlottedDocument:
    return SlottedDocument(lease, kind=STATUS_KIND, version=DOCUMENT_VERSION)


def _decode_step(reader: LeaseReader) -> dict[str, Any] | None:
    """The step document, or None if absent/torn/corrupt (never a partial document)."""
    return _step_document(reader).load().document


# -- the store -----------------------------------------------------------------------------------
class RunStore:
    """Runs of pipelines, kept in ``store`` next to the stages' checkpoints.

    Args:
        store: any block store (cross-process claims need a cross-process backend).
        claim_ttl: TTL of a claim's control lease (renewed by a keepalive thread while the
            claiming process lives); an orphaned claim is recoverable this long after the
            claimer died.
    """

    def __init__(self, store: BlockStore, *, claim_ttl: float = 10.0) -> None:
        self.store = store
        self.claim_ttl = claim_ttl

    # -- names ---------------------------------------------------------------------------------
    @staticmethod
    def _check_id(run_id: str) -> str:
        if not isinstance(run_id, str) or not run_id or "/" in run_id or "\x00" in run_id:
            raise ValueError(f"run id must be a non-empty string without '/', got {run_id!r}")
        # Control, format (bidi override, zero width) characters, lone surrogates: refused
        # here, naming the code point, not later as the name of the run's status lease.
        return check_id(run_id, "run id")

    @staticmethod
    def status_name(run_id: str) -> str:
        return f"run/{run_id}/status"

    @staticmethod
    def step_name(run_id: str, step: int) -> str:
        return f"run/{run_id}/step/{step:012d}"

    def _step_numbers(self, run_id: str, *, committed_only: bool = True) -> list[int]:
        """Numbers of the run's step leases, ascending; with ``committed_only``, only those
        up to the status's ``committed_step`` (when a driver hold ever set it)."""
        prefix = f"run/{run_id}/step/"
        out = []
        for info in self.store.list_leases():
            if info.name.startswith(prefix):
                try:
                    out.append(int(info.name[len(prefix):]))
                except ValueError:
                    continue
        limit = self.committed_limit(run_id) if committed_only else None
        return sorted(s for s in out if limit is None or s <= limit)

    def committed_limit(self, run_id: str) -> int | None:
        """The run's ``committed_step`` as its driver last committed it, or ``None`` if no
        driver ever drove it under a hold (then every readable step record counts)."""
        try:
            reader = self.store.open_reader(self.status_name(run_id))
        except LeaseNotFoundError:
            return None
        st = self._read_status(reader)
        return None if st is None else st.committed_step

    # -- status (control lease) ----------------------------------------------------------------
    def _acquire_control(self, run_id: str, driver: str, *, keepalive: bool,
                         retries: int = 0) -> Lease:
        for attempt in range(retries + 1):
            try:
                return self.store.acquire(self.status_name(run_id), holder=driver,
                                          ttl=self.claim_ttl, num_blocks=2, steal=False,
                                          keepalive=keepalive)
            except LeaseHeldError as exc:
                if attempt == retries:
                    raise RunClaimConflict(
                        f"run {run_id!r} is held by {exc.holder!r} (claiming or changing "
                        "status)", run_id=run_id, holder=exc.holder) from exc
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _read_status(self, reader: LeaseReader) -> RunStatus | None:
        found = _status_document(reader).load()
        if found.document is None:
            return None
        try:
            st = RunStatus.from_dict(found.document)
        except (ValueError, KeyError, TypeError):
            return None
        return replace(st, seq=found.generation or 0)

    def _write_status(self, lease: Lease, current: RunStatus | None, new: RunStatus) -> RunStatus:
        new = replace(new, updated_at=time.time())
        fields = new.to_dict()
        del fields["seq"]  # the document's generation is the status's sequence number
        seq = _status_document(lease).save(fields)
        return replace(new, seq=seq)

    def status(self, run_id: str) -> RunStatus:
        """The run's current status; ``RunNotFoundError`` if the run does not exist."""
        self._check_id(run_id)
        try:
            reader = self.store.open_reader(self.status_name(run_id))
        except LeaseNotFoundError:
            raise RunNotFoundError(f"no run {run_id!r} in {self.store.url}",
                                   run_id=run_id) from None
        st = self._read_status(reader)
        if st is None:
            raise RunNotFoundError(f"run {run_id!r} has no readable status", run_id=run_id)
        return st

    def _change(self, run_id: str, driver: str | None, expect: Iterable[str] | None,
                **changes: Any) -> RunStatus:
        driver = driver or default_holder()
        lease = self._acquire_control(run_id, driver, keepalive=False, retries=20)
        try:
            cur = self._read_status(lease)
            if cur is None:
                raise RunNotFoundError(f"run {run_id!r} has no readable status", run_id=run_id)
            if expect is not None and cur.state not in set(expect):
                raise RunNotPausedError(
                    f"run {run_id!r} is {cur.state}, expected one of {sorted(expect)}",
                    run_id=run_id, state=cur.state)
            return self._write_status(lease, cur, replace(cur, driver=driver, **changes))
        finally:
            lease.release()

    def create_run(self, run_id: str | None = None, *, driver: str | None = None,
                   meta: Mapping[str, Any] | None = None) -> RunStatus:
        """Start a run (state ``running``); a new id if none given. Existing run: returned
        unchanged if running, else ``RunNotPausedError``."""
        run_id = self._check_id(run_id or uuid.uuid4().hex[:16])
        driver = driver or default_holder()
        if self.store.find(self.status_name(run_id)) is not None:
            st = self.status(run_id)
            if st.state != RUNNING:
                raise RunNotPausedError(f"run {run_id!r} exists and is {st.state}",
                                        run_id=run_id, state=st.state)
            return st
        lease = self._acquire_control(run_id, driver, keepalive=False, retries=20)
        try:
            cur = self._read_status(lease)
            if cur is not None:
                return cur
            return self._write_status(lease, None, RunStatus(
                run_id=run_id, state=RUNNING, driver=driver, meta=dict(meta or {})))
        finally:
            lease.release()

    def list_runs(self) -> list[str]:
        """Every run id in the store, sorted."""
        out = set()
        for info in self.store.list_leases():
            parts = info.name.split("/")
            if len(parts) == 3 and parts[0] == "run" and parts[2] == "status":
                out.add(parts[1])
        return sorted(out)

    # -- steps ---------------------------------------------------------------------------------
    def save_step(self, run_id: str, step: int, *, source_position: Any,
                  stages: Sequence[StageCommit] | Mapping[str, Mapping[str, Any]] = (),
                  in_flight: Sequence[Any] = (), meta: Mapping[str, Any] | None = None,
                  committed_at: float | None = None, epoch: int | None = None) -> RunStep:
        """Save ``step`` of ``run_id`` durably; immutable once committed.

        Without ``epoch`` (no driver hold) the saved step is committed and immutable:
        ``RunStepExistsError`` if it is already saved and readable; a step whose earlier
        save was torn by a crash is rewritten. With ``epoch`` (the control-lease epoch of a
        :class:`~stages.pipeline.run_driver.RunDriver`, which calls this) the record is written but
        committed only by the driver's status write; a record of a step after the run's
        ``committed_step`` left by an older epoch (a driver that died or was fenced before
        committing it) is replaced, one of a newer epoch raises ``RunFencedError``.
        """
        self._check_id(run_id)
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if isinstance(stages, Mapping):
            stages = [StageCommit(stage_id=k, **dict(v)) for k, v in stages.items()]
        rec = RunStep(run_id=run_id, step=step,
                      committed_at=time.time() if committed_at is None else committed_at,
                      source_position=source_position, stages=tuple(stages),
                      in_flight=tuple(in_flight), meta=dict(meta or {}), epoch=epoch)
        payload = canonical_json(rec.to_dict())  # bad input fails before the lease exists
        lease = self._acquire_step(run_id, step, epoch)
        with _step_document(lease) as doc:  # leaving it releases the step's lease
            doc.save(rec.to_dict())
        return RunStep.from_dict(json.loads(payload))

    def _acquire_step(self, run_id: str, step: int, epoch: int | None) -> Lease:
        """Hold the step's lease, empty or holding a record :meth:`_check_overwrite` lets go.

        A driver that died inside :meth:`save_step` leaves the lease held until its TTL
        runs out, with no readable document (or the whole one). Without a document there is
        nothing to protect, so the lease is taken over (its epoch bump fences the old saver,
        should it still be alive). A record that may be replaced is dropped with its lease
        (so no older slot of it survives as a fallback) and the lease created afresh.
        """
        name = self.step_name(run_id, step)
        for _ in range(_STEP_ATTEMPTS):
            try:
                lease = self.store.acquire(name, ttl=_STEP_TTL, steal=False)
            except LeaseHeldError as held:
                try:
                    found = _decode_step(self.store.open_reader(name))
                except LeaseNotFoundError:
                    continue  # deleted (pruned) meanwhile: acquiring creates it afresh
                self._check_overwrite(run_id, step, found, epoch, cause=held)
                lease = self.store.acquire(name, ttl=_STEP_TTL, steal=True)
            found = _decode_step(lease)
            if found is None:
                return lease
            try:
                self._check_overwrite(run_id, step, found, epoch)
                self.store.delete_lease(name, lease=lease)
            finally:
                lease.release()
        raise RunStepExistsError(f"step {step} of run {run_id!r} is being saved by another "
                                 f"driver; gave up after {_STEP_ATTEMPTS} attempts",
                                 run_id=run_id, step=step)

    def _check_overwrite(self, run_id: str, step: int, found: Mapping[str, Any] | None,
                         epoch: int | None, *, cause: BaseException | None = None) -> None:
        """Return if a save under ``epoch`` may replace ``found`` (the step's record or
        ``None``), else raise: ``RunStepExistsError`` for a committed step (or any saved
        one without ``epoch``), ``RunFencedError`` for a record of a newer driver."""
        if found is None:
            return
        saved_by = found.get("epoch")
        if epoch is not None and isinstance(saved_by, int) and saved_by > epoch:
            raise RunFencedError(
                f"step {step} of run {run_id!r} was saved by a newer driver (epoch {saved_by})"
                f"; this driver (epoch {epoch}) was fenced", run_id=run_id, epoch=epoch,
                current_epoch=saved_by) from cause
        limit = self.committed_limit(run_id) if epoch is not None else None
        if limit is None or step <= limit:
            raise RunStepExistsError(f"step {step} of run {run_id!r} is already saved",
                                     run_id=run_id, step=step) from cause

    def delete_step(self, run_id: str, step: int) -> None:
        """Remove the record of ``step`` (absent: nothing to do), taking its lease over from
        a saver that still holds it."""
        name = self.step_name(run_id, step)
        try:
            self.store.delete_lease(name)
        except LeaseHeldError:
            self.store.delete_lease(name, lease=self.store.acquire(name, ttl=_STEP_TTL,
                                                                   steal=True))
        except LeaseNotFoundError:
            pass

    def load_step(self, run_id: str, step: int | None = None) -> RunStep:
        """Step ``step`` of the run, or its newest readable step if ``None``.

        ``RunNotFoundError`` (with ``step``) if there is no such readable step.
        """
        self._check_id(run_id)
        steps = self._step_numbers(run_id) if step is None else [step]
        for s in reversed(steps):
            rec = self._read_step(run_id, s)
            if rec is not None:
                return rec
        raise RunNotFoundError(
            f"run {run_id!r} has no {'readable steps' if step is None else f'step {step}'}",
            run_id=run_id, step=step)

    def latest_step(self, run_id: str) -> RunStep | None:
        """The newest readable step, or ``None`` if the run has none."""
        try:
            return self.load_step(run_id)
        except RunNotFoundError:
            return None

    def iter_steps(self, run_id: str) -> Iterator[RunStep]:
        """Every readable step, oldest first (torn saves are skipped)."""
        for s in self._step_numbers(run_id):
            rec = self._read_step(run_id, s)
            if rec is not None:
                yield rec

    def _read_step(self, run_id: str, step: int) -> RunStep | None:
        """Step ``step`` if its lease holds a readable document (pruned or torn: ``None``)."""
        try:
            d = _decode_step(self.store.open_reader(self.step_name(run_id, step)))
        except LeaseNotFoundError:
            return None
        return None if d is None else RunStep.from_dict(d)

    def list_steps(self, run_id: str, *, min_step: int | None = None,
                   max_step: int | None = None, after: float | None = None,
                   before: float | None = None, limit: int | None = None,
                   newest_first: bool = False) -> list[RunStep]:
        """Steps with ``min_step <= step <= max_step`` committed strictly after ``after`` and
        strictly before ``before`` (wall-clock), sorted by step, at most ``limit`` of them
        (the first ones in the chosen order)."""
        self._check_id(run_id)
        nums = [s for s in self._step_numbers(run_id)
                if (min_step is None or s >= min_step) and (max_step is None or s <= max_step)]
        if newest_first:
            nums.reverse()
        out: list[RunStep] = []
        for s in nums:
            if limit is not None and len(out) >= limit:
                break
            rec = self._read_step(run_id, s)
            if rec is None:
                continue
            if after is not None and not rec.committed_at > after:
                continue
            if before is not None and not rec.committed_at < before:
                continue
            out.append(rec)
        return out

    def prune_steps(self, run_id: str, keep: int) -> list[int]:
        """Delete all but the newest ``keep`` steps (storage stays bounded); return those
        deleted."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        gone = self._step_numbers(run_id)[:-keep]
        for s in gone:
            self.delete_step(run_id, s)
        return gone

    # -- pause / claim / complete ------------------------------------------------------------
    def pause(self, run_id: str, step: int | None = None, *, driver: str | None = None,
              meta: Mapping[str, Any] | None = None) -> RunStatus:
        """Savepoint: mark a running run ``paused`` at ``step`` (default: its newest step)."""
        if step is None:
            last = self.latest_step(run_id)
            step = None if last is None else last.step
        changes: dict[str, Any] = {"state": PAUSED, "step": step}
        if meta is not None:
            changes["meta"] = dict(meta)
        return self._change(run_id, driver, (RUNNING,), **changes)

    def finish(self, run_id: str, *, driver: str | None = None) -> RunStatus:
        """Mark a run ``finished`` (from running or paused); idempotent."""
        st = self.status(run_id)
        if st.state == FINISHED:
            return st
        return self._change(run_id, driver, (RUNNING, PAUSED, FINISHED), state=FINISHED)

    def claim(self, run_id: str, *, driver: str | None = None) -> RunClaim:
        """Claim a paused run for resuming; exactly one driver can win.

        Raises ``RunClaimConflict`` if another driver holds the run's control lease,
        ``RunNotPausedError`` if the run is not paused (already claimed - possibly by a crashed
        driver, see :meth:`recover_orphaned` - running or finished), ``RunNotFoundError``.
        """
        self._check_id(run_id)
        driver = driver or default_holder()
        if self.store.find(self.status_name(run_id)) is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.store.url}", run_id=run_id)
        lease = self._acquire_control(run_id, driver, keepalive=True)
        try:
            cur = self._read_status(lease)
            if cur is None:
                raise RunNotFoundError(f"run {run_id!r} has no readable status", run_id=run_id)
            if cur.state != PAUSED:
                raise RunNotPausedError(f"run {run_id!r} is {cur.state}, not paused",
                                        run_id=run_id, state=cur.state)
            st = self._write_status(lease, cur, replace(cur, state=CLAIMED, driver=driver,
                                                        claim_epoch=lease.epoch))
        except BaseException:
            lease.release()
            raise
        return RunClaim(self, lease, st)

    def complete(self, claim: RunClaim, *, meta: Mapping[str, Any] | None = None) -> RunStatus:
        """Finish a claim: state ``running`` (resumed by the claimer). Idempotent.

        Raises ``RunClaimLost`` if the claim was fenced before it completed.
        """
        if claim._done:
            return self.status(claim.run_id)
        lease = claim._lease
        try:
            lease.renew()  # an expired claim nobody took over is still ours; a fenced one fails
            cur = self._read_status(lease)
            if cur is None or cur.state != CLAIMED or cur.claim_epoch != claim.epoch:
                raise StaleLeaseError("claim superseded", epoch=claim.epoch)
            changes: dict[str, Any] = {"state": RUNNING, "resumes": cur.resumes + 1}
            if meta is not None:
                changes["meta"] = dict(meta)
            st = self._write_status(lease, cur, replace(cur, **changes))
        except LeaseError as exc:
            lease.release()
            now = self.status(claim.run_id)
            if now.claim_epoch == claim.epoch and now.state in (RUNNING, FINISHED):
                claim._done = True
                return now  # an earlier complete() of this claim did land
            raise RunClaimLost(f"claim of run {claim.run_id!r} (epoch {claim.epoch}) was fenced:"
                               f" the run is now {now.state} (claim epoch {now.claim_epoch})",
                               run_id=claim.run_id) from exc
        claim._done = True
        if not claim._kept:
            lease.release()
        return st

    def _abort(self, claim: RunClaim) -> RunStatus | None:
        if claim._done:
            return None
        lease = claim._lease
        try:
            cur = self._read_status(lease)
            if cur is None or cur.state != CLAIMED or cur.claim_epoch != claim.epoch:
                return None
            return self._write_status(lease, cur, replace(cur, state=PAUSED))
        except LeaseError:
            return None
        finally:
            claim._done = True
            lease.release()

    def recover_orphaned(self, *, driver: str | None = None) -> list[str]:
        """Re-arm (to ``paused``) every run left ``claimed`` by a driver whose claim lease is
        no longer held (it crashed, or hung past the TTL). Call at driver start-up.

        Safe to run from several drivers at once: each re-arm is done under a fresh,
        non-stealing acquisition of the control lease. Returns the re-armed run ids.
        """
        driver = driver or default_holder()
        out: list[str] = []
        for run_id in self.list_runs():
            info = self.store.find(self.status_name(run_id))
            if info is None or info.is_held():
                continue
            try:
                st = self.status(run_id)
            except RunNotFoundError:
                continue
            if st.state != CLAIMED:
                continue
            try:
                lease = self._acquire_control(run_id, driver, keepalive=False)
            except RunClaimConflict:
                continue  # someone holds it now: a live claimer or another recoverer
            try:
                cur = self._read_status(lease)
                if cur is None or cur.state != CLAIMED:
                    continue
                self._write_status(lease, cur, replace(
                    cur, state=PAUSED, driver=driver,
                    orphans_recovered=cur.orphans_recovered + 1))
                out.append(run_id)
            finally:
                lease.release()
        return out
