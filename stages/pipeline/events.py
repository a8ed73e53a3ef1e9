"""What a pipeline run reports: the events as they happen, and the result of ``run()``.

Both are frozen values (``stages/pipeline/pipeline.py`` creates them, callers only read them), kept
apart from the driver so that code reading a run's history - tests, the demo, a monitoring
hook given as ``on_event`` - needs none of the driver's machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PipelineEvent", "PipelineResult"]


@dataclass(frozen=True, slots=True)
class PipelineEvent:
    """Something the driver did; given to ``on_event`` as it happens.

    Kinds: ``started`` (stages up), ``barrier`` (injected), ``commit``, ``failure``,
    ``relaunched``, ``fallback`` (a stage could not restore the committed step: every stage
    goes back to an older one), ``rollback``, ``done``.
    """

    kind: str
    step: int | None = None
    stage_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What one ``run()`` did.

    Attributes:
        run_id: the run.
        committed_step: the last committed step.
        source_position: its source position.
        finished: the source was exhausted and everything committed.
        records_in: source records committed by this ``run()``.
        records_out: output records committed by this ``run()``.
        checkpoints: stage checkpoints that became part of a committed step.
        recoveries: rollbacks performed.
        relaunches: stage incarnations started to replace lost ones.
        replayed_records: source records read more than once because of rollbacks.
        recovery_s: seconds spent recovering (from noticing a failure to every stage being
            rolled back), summed.
        duration_s: wall-clock time of ``run()``.
        events: every event, in order.
        fallbacks: ``(committed step, step restored instead)`` of every rollback that had to
            go back further than the committed step on every stage (see the module
            docstring); the steps in between were replayed and committed again.
    """

    run_id: str
    committed_step: int
    source_position: Any
    finished: bool
    records_in: int
    records_out: int
    checkpoints: int
    recoveries: int
    relaunches: int
    replayed_records: int
    recovery_s: float
    duration_s: float
    events: tuple[PipelineEvent, ...]
    fallbacks: tuple[tuple[int, int], ...] = ()
