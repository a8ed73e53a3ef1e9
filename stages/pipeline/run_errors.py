"""Errors of runs: claims, pauses and the fencing of drivers (``stages/pipeline/runs.py``,
``stages/pipeline/run_driver.py``, ``stages/pipeline/sink.py``).

They hang from the stages package's one root, :class:`~stages.errors.StageError` (its
docstring draws the whole tree); each carries its context as attributes and pickles with
them (Ray returns an actor's exception by pickling it).
"""

from __future__ import annotations

from ..errors import StageError

__all__ = ["RunActiveError", "RunClaimConflict", "RunClaimLost", "RunError", "RunFencedError",
           "RunNotFoundError", "RunNotPausedError", "RunStepExistsError", "SinkFencedError"]


class RunError(StageError):
    """Root of the errors of runs (``stages/pipeline/runs.py``, ``stages/pipeline/run_driver.py``).

    Attributes:
        run_id: the run concerned.
    """

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunNotFoundError(RunError, LookupError):
    """No such run, or no such step of it (``step`` is set for a missing step)."""

    def __init__(self, message: str, *, run_id: str | None = None,
                 step: int | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.step = step


class RunStepExistsError(RunError, FileExistsError):
    """That step of the run is already saved (committed steps are immutable)."""

    def __init__(self, message: str, *, run_id: str | None = None,
                 step: int | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.step = step


class RunClaimConflict(RunError, RuntimeError):
    """Another driver holds the run's control lease (claiming, or changing its status).

    Attributes:
        holder: the current holder.
    """

    def __init__(self, message: str, *, run_id: str | None = None,
                 holder: str | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.holder = holder


class RunNotPausedError(RunError, RuntimeError):
    """The run is not in the state the operation needs (e.g. claim of a run not paused).

    Attributes:
        state: the run's state.
    """

    def __init__(self, message: str, *, run_id: str | None = None,
                 state: str | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.state = state


class RunClaimLost(RunError, RuntimeError):
    """The claim was fenced: its lease expired and another driver re-armed or took the run."""


class RunActiveError(RunClaimConflict):
    """Another driver is driving the run: it holds the run's control lease (``holder``).

    Raised to a second driver of a running run (``RunStore.drive``, ``Pipeline.run``) before
    it touched anything of the run; take the run over only with ``takeover=True``.
    """


class RunFencedError(RunError, RuntimeError):
    """This driver was fenced: another driver took the run over (a newer control-lease
    epoch), so its step commit - or sink commit - was refused. The driver must stop.

    Attributes:
        epoch: the fenced driver's epoch.
        current_epoch: the epoch that fenced it, when known.
    """

    def __init__(self, message: str, *, run_id: str | None = None, epoch: int | None = None,
                 current_epoch: int | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.epoch = epoch
        self.current_epoch = current_epoch


class SinkFencedError(RunFencedError):
    """The sink refused a write whose fencing token is older than one it has seen.

    Attributes:
        path: where the sink keeps its fencing record.
    """

    def __init__(self, message: str, *, run_id: str | None = None, epoch: int | None = None,
                 current_epoch: int | None = None, path: str | None = None) -> None:
        super().__init__(message, run_id=run_id, epoch=epoch, current_epoch=current_epoch)
        self.path = path
