"""The claim of a paused run: the right to resume it, held by one driver.

``RunStore.claim`` (``stages/pipeline/runs.py``) creates it while holding the run's control lease;
this module is the claimer's handle on that hold, as a context manager, so that a failed
resume gives the run back instead of counting as done. Why a claim is a lease is in
``stages/pipeline/runs.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from blockstore import Lease

from .run_errors import RunError
from .run_records import RunStatus

__all__ = ["ClaimKeeper", "RunClaim"]


class ClaimKeeper(Protocol):
    """What a claim reports back to: the run store that granted it (``RunStore``).

    A protocol, not an import of ``runs.py``, so the claim and the store that creates it do
    not import each other.
    """

    def complete(self, claim: RunClaim, *, meta: Mapping[str, Any] | None = None) -> RunStatus:
        """Mark the claimed resume done; raises ``RunClaimLost`` if it was fenced."""
        ...

    def _abort(self, claim: RunClaim) -> RunStatus | None:
        """Re-arm the run to ``paused``; harmless after ``complete``."""
        ...


class RunClaim:
    """The right to resume one paused run, held by one driver.

    A context manager: leaving the block normally does nothing by itself (call
    :meth:`complete` when the resume is done); leaving it by an exception *aborts* - the run
    is re-armed to ``paused`` - so a failed resume is never counted as done.

    Attributes:
        run_id, driver, epoch: identity of the claim (epoch of the control lease).
        step: the savepoint step the run was paused at.
    """

    def __init__(self, runs: ClaimKeeper, lease: Lease, status: RunStatus) -> None:
        self._runs = runs
        self._lease = lease
        self.run_id = status.run_id
        self.driver = status.driver or ""
        self.epoch = lease.epoch
        self.step = status.step
        self.status = status
        self._done = False
        self._kept = False  # the lease was handed to a RunDriver: complete() keeps it

    @property
    def done(self) -> bool:
        return self._done

    def complete(self, meta: Mapping[str, Any] | None = None) -> RunStatus:
        """Mark the resume done (state ``running`` under this driver) and release. Idempotent.

        Raises ``RunClaimLost`` if the claim was fenced before completing.
        """
        return self._runs.complete(self, meta=meta)

    def abort(self) -> RunStatus | None:
        """Give the run back (state ``paused``); harmless after ``complete``."""
        return self._runs._abort(self)

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None and not self._done:
            try:
                self.abort()
            except RunError:
                pass

    def __repr__(self) -> str:
        return (f"RunClaim(run_id={self.run_id!r}, driver={self.driver!r}, epoch={self.epoch}, "
                f"step={self.step}, done={self._done})")
