"""The running driver's hold on its run: one driver at a time, and a fenced commit point.

A run must have one driver at a time. Two drivers of one run used to each prune, roll back
and commit the other's steps, and a driver that died between the sink commit and the step
record left output for a step nothing committed. So a driver *drives* a run only while it
holds the run's control lease (``run/<run_id>/status``, ``stages/pipeline/runs.py``), acquired with a
keepalive for the whole run, and everything it commits carries that lease's epoch:

* **The commit point is a write to the control lease.** :meth:`RunDriver.save_step` writes
  the step record (its own lease, tagged with the epoch), then the run status with
  ``committed_step = step`` under the control lease. The store refuses that write under a
  stale epoch (``StaleLeaseError``, checked atomically with the write), so a driver that
  was taken over can never commit again: it gets :class:`~stages.errors.RunFencedError`
  and must stop. Readers of the run (``RunStore.latest_step``, ``load_step``,
  ``list_steps``) count only steps up to ``committed_step``: a record saved by a driver
  that died or was fenced before its status write is not a committed step, and the next
  driver replaces it when it commits that step itself.
* **Sinks are fenced by the same epoch.** The pipeline hands the sink the driver's
  :class:`~stages.pipeline.sink.FenceToken` (run id, epoch): ``fence`` at start (which also drops
  output after the committed step), ``commit`` of a step's output, ``publish`` of a
  committed step after the status write. The sink refuses a token older than one it has
  seen (``SinkFencedError``) and shows readers only published steps, so output of a step
  the run did not commit is never reported (``stages/pipeline/sink.py``).
* **A second driver is refused, unless it takes over.** :meth:`RunDriver.acquire` does not
  steal: while the first driver holds the lease, a second gets ``RunActiveError`` naming the
  run and the holder, before it has touched anything. With ``takeover=True`` it steals the
  lease (epoch bump): from then on the first driver's status writes are refused by the store
  and, once the new driver fenced the sink, its sink writes by the sink; its next step
  commit fails with ``RunFencedError`` and it stops. A driver that died leaves the lease to
  expire (its TTL, ``RunStore.claim_ttl``); a restart after that needs no takeover.

Crash at any point of a step commit (see :meth:`RunDriver.save_step` and
``stages/pipeline/pipeline.py``): before the status write, the step is not committed and is
replayed; after it, the step is committed and its output, durable since the sink commit, is
published by the restarted driver's ``fence``. Nothing is lost, nothing is reported twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from blockstore import Lease, LeaseHeldError, default_holder
from blockstore.errors import LeaseError, LeaseExpiredError

from .run_errors import RunActiveError, RunFencedError, RunNotFoundError, RunNotPausedError
from .run_records import FINISHED, PAUSED, RUNNING, RunStatus, RunStep, StageCommit
from .runs import RunClaim, RunStore
from .sink import FenceToken

__all__ = ["RunDriver"]


class RunDriver:
    """The right to drive one run: its control lease, held (keepalive) until released.

    Obtain one with :meth:`acquire`. Every write goes through the control lease under
    :attr:`epoch`; after a takeover by another driver each raises ``RunFencedError`` and
    changes nothing. A context manager: leaving the block releases the lease (and commits
    nothing).

    Attributes:
        runs: the run store.
        run_id, driver, epoch: identity of the hold (epoch of the control lease).
        committed_step: the run's last committed step as this driver knows it.
        status: the status as this driver last wrote it.
    """

    def __init__(self, runs: RunStore, lease: Lease, status: RunStatus) -> None:
        self.runs = runs
        self._lease = lease
        self.run_id = status.run_id
        self.driver = lease.holder
        self.epoch = lease.epoch
        self.status = status
        self.committed_step = status.committed_step or 0

    @classmethod
    def acquire(cls, runs: RunStore, run_id: str, *, driver: str | None = None,
                takeover: bool = False, claim: RunClaim | None = None) -> RunDriver:
        """Start driving ``run_id`` (a running run, or a paused one through ``claim``).

        Args:
            runs: the run store.
            run_id: the run; it must exist (``RunStore.create_run``).
            driver: holder name (default: host and process).
            takeover: steal the control lease from a live driver, fencing it.
            claim: a claim of the paused run (``RunStore.claim``); its lease becomes the
                hold (the claim's ``complete`` then keeps it), so no other driver can slip
                in between claim and drive.

        Raises ``RunActiveError`` (another driver holds the run, no ``takeover``),
        ``RunNotFoundError``, ``RunNotPausedError`` (the run is not running, no claim).
        On a run never driven under a hold, its newest readable step becomes
        ``committed_step``.
        """
        runs._check_id(run_id)
        name = runs.status_name(run_id)
        if claim is not None:
            claim._kept = True
            lease = claim._lease
        else:
            if runs.store.find(name) is None:
                raise RunNotFoundError(f"no run {run_id!r} in {runs.store.url}", run_id=run_id)
            try:
                lease = runs.store.acquire(name, holder=driver or default_holder(),
                                           ttl=runs.claim_ttl, num_blocks=2, steal=takeover,
                                           keepalive=True)
            except LeaseHeldError as exc:
                raise RunActiveError(
                    f"run {run_id!r} is being driven by {exc.holder!r} (it holds the run's "
                    "control lease); pass takeover=True to fence that driver and take over",
                    run_id=run_id, holder=exc.holder) from exc
        try:
            cur = runs._read_status(lease)
            if cur is None:
                raise RunNotFoundError(f"run {run_id!r} has no readable status", run_id=run_id)
            if claim is None and cur.state != RUNNING:
                raise RunNotPausedError(f"run {run_id!r} is {cur.state}, not running",
                                        run_id=run_id, state=cur.state)
            committed = cur.committed_step
            if committed is None:  # never driven under a hold: adopt what is readable
                last = runs.latest_step(run_id)
                committed = 0 if last is None else last.step
            st = runs._write_status(lease, cur, replace(
                cur, driver=lease.holder, driver_epoch=lease.epoch, committed_step=committed))
        except BaseException:
            if claim is None:
                lease.release()
            else:
                claim._kept = False  # the claim keeps its own lease (and its abort)
            raise
        return cls(runs, lease, st)

    # -- the hold ----------------------------------------------------------------------------
    @property
    def token(self) -> FenceToken:
        """The fencing token sink writes of this driver carry."""
        return FenceToken(self.run_id, self.epoch)

    @property
    def released(self) -> bool:
        return self._lease.released

    def check(self) -> None:
        """Raise ``RunFencedError`` if another driver took the run over (renews the hold)."""
        try:
            self._lease.renew()
        except LeaseError as exc:
            raise self._fenced(exc) from exc

    def release(self) -> None:
        """Stop driving (the status stays as last written). Idempotent."""
        self._lease.release()

    def __enter__(self) -> RunDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- commits -----------------------------------------------------------------------------
    def save_step(self, step: int, *, source_position: Any,
                  stages: Sequence[StageCommit] | Mapping[str, Mapping[str, Any]] = (),
                  in_flight: Sequence[Any] = (),
                  meta: Mapping[str, Any] | None = None) -> RunStep:
        """Commit ``step``: its record (tagged with :attr:`epoch`), then the status write
        ``committed_step = step`` under the control lease - the commit point.

        A crash or refusal before the status write leaves the step uncommitted (its record is
        ignored by readers and replaced by the step's next commit). Raises
        ``RunFencedError`` if the run was taken over (nothing committed).
        """
        rec = self.runs.save_step(self.run_id, step, source_position=source_position,
                                  stages=stages, in_flight=in_flight, meta=meta,
                                  epoch=self.epoch)
        self._update(committed_step=step)
        self.committed_step = step
        return rec

    def forget_after(self, target: int) -> None:
        """Un-commit every step after ``target`` (the stages fell back to it).

        The status write comes first (fenced, and from then on readers ignore the later
        records); then the records after ``target`` are deleted, newest first.
        """
        self._update(committed_step=target)
        self.committed_step = target
        for s in reversed(self.runs._step_numbers(self.run_id, committed_only=False)):
            if s > target:
                self.runs.delete_step(self.run_id, s)

    def prune(self, keep: int) -> list[int]:
        """``RunStore.prune_steps`` while this driver still holds the run."""
        self.check()
        return self.runs.prune_steps(self.run_id, keep)

    def finish(self) -> RunStatus:
        """Mark the run ``finished`` and release."""
        try:
            return self._update(state=FINISHED)
        finally:
            self.release()

    def pause(self, step: int | None = None) -> RunStatus:
        """Savepoint: mark the run ``paused`` at ``step`` (default: the committed step) and
        release; resumed exactly once by whoever claims it (``RunStore.claim``)."""
        try:
            return self._update(state=PAUSED,
                                step=self.committed_step if step is None else step)
        finally:
            self.release()

    def _update(self, **changes: Any) -> RunStatus:
        """Write the status with ``changes`` under the control lease.

        An expired hold that nobody took over is renewed and the write retried (its epoch is
        still current, so no other driver can exist); any other refusal is a takeover.
        """
        for attempt in range(2):
            try:
                cur = self.runs._read_status(self._lease)
                if cur is None:
                    raise RunNotFoundError(f"run {self.run_id!r} has no readable status",
                                           run_id=self.run_id)
                self.status = self.runs._write_status(self._lease, cur,
                                                      replace(cur, **changes))
                return self.status
            except LeaseExpiredError as exc:
                if attempt:
                    raise self._fenced(exc) from exc
                self.check()
            except LeaseError as exc:
                raise self._fenced(exc) from exc
        raise AssertionError("unreachable")

    def _fenced(self, exc: BaseException) -> RunFencedError:
        current = getattr(exc, "current_epoch", None)
        if current is None:
            info = self.runs.store.find(self.runs.status_name(self.run_id))
            current = None if info is None else info.epoch
        return RunFencedError(
            f"driver {self.driver!r} of run {self.run_id!r} (epoch {self.epoch}) was fenced: "
            f"the run's control lease is now at epoch {current} ({type(exc).__name__}); this "
            "driver must stop", run_id=self.run_id, epoch=self.epoch, current_epoch=current)

    def __repr__(self) -> str:
        return (f"RunDriver(run_id={self.run_id!r}, driver={self.driver!r}, "
                f"epoch={self.epoch}, committed_step={self.committed_step})")
