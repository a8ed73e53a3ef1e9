"""What one state's checkpoints and restores report to :mod:`blockstore.metrics`.

Called by :class:`~stages.checkpoint.state.CheckpointedStageState` after each commit, failure
and restore; the figures are named in ``docs/OPERATIONS.md`` (Metrics). Tagged by the lease's
name - the stage id for stages and decorated actors - never by the lease id, so a restored
stage's figures continue the old series.

Each ``note_*`` is called after the fact (a committed generation: after the flush mark is
released) and never raises: a figure that cannot be recorded is logged, and the checkpoint
or restore it describes keeps its outcome.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from blockstore.metrics import record

from .reports import CheckpointInfo, RestoreReport

__all__ = ["note_checkpoint", "note_failure", "note_restore", "note_stall"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., None])


def _never_raises(fn: F) -> F:
    @functools.wraps(fn)
    def noted(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # metrics never change a checkpoint's outcome
            log.exception("metrics: %s failed; the figures of this event are lost",
                          fn.__name__)
    return noted  # type: ignore[return-value]


@_never_raises
def note_checkpoint(info: CheckpointInfo, lease: Any, slots: Sequence[Any] | None,
                    lease_blocks: int | None = None) -> None:
    """A generation committed: its duration, size, ratio, and the lease's retained state
    (``lease_blocks``: its size as the commit left it; ``None``: asked of the lease)."""
    stage = info.name
    record("checkpoint_seconds", info.duration_s, stage=stage)
    record("checkpoints_total", 1, stage=stage)
    if info.bytes_written:
        record("checkpoint_written_bytes_total", info.bytes_written, stage=stage)
    record("checkpoint_payload_bytes", info.data_length, stage=stage)
    record("checkpoint_stored_bytes", info.stored_bytes, stage=stage)
    if info.stored_bytes:
        record("checkpoint_compression_ratio", info.data_length / info.stored_bytes,
               stage=stage)
    if slots is not None:
        record("checkpoint_generations", sum(1 for s in slots if s.committed), stage=stage)
    _note_lease(stage, lease, lease_blocks)


@_never_raises
def note_failure(stage: str, exc: BaseException) -> None:
    """A checkpoint failed; ``cause`` is the error's type (the innermost one it wraps)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    record("checkpoint_failures_total", 1, stage=stage, cause=type(cause).__name__)


@_never_raises
def note_stall(stage: str, seconds: float) -> None:
    """An asynchronous checkpoint held its caller ``seconds`` (the snapshot)."""
    record("checkpoint_stall_seconds", seconds, stage=stage)


@_never_raises
def note_restore(report: RestoreReport, seconds: float, lease: Any, fell_back: int) -> None:
    """A restore returned ``report``'s generation after ``seconds``, passing over
    ``fell_back`` newer generations that did not verify.

    ``report.skipped`` lists more than the fallbacks: the torn header of a commit a crash
    interrupted (never committed - normal after a crash) and damaged generations older than
    the one returned; counting those would make ``restore_fallbacks_total`` ("any is worth a
    look") fire after every crash mid-checkpoint.
    """
    stage = report.info.name
    record("restore_seconds", seconds, stage=stage)
    record("restores_total", 1, stage=stage)
    if fell_back:
        record("restore_fallbacks_total", fell_back, stage=stage)
    _note_lease(stage, lease)


def _note_lease(stage: str, lease: Any, blocks: int | None = None) -> None:
    try:
        n = lease.num_blocks if blocks is None else blocks
        record("lease_bytes", n * lease.block_size, stage=stage)
    except Exception:  # noqa: BLE001 - a reader of a released lease may not know its size
        pass
