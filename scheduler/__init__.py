"""Scheduler: flush-aware preemption of checkpointed stages.

The policy core, :class:`PreemptionManager`, is plain Python (no Ray) so that it can be
tested exhaustively; the Ray scheduler actor wraps it.
"""

from __future__ import annotations

from scheduler.errors import (
    InvalidRequestError,
    InvalidStageError,
    SchedulerError,
    SnapshotError,
    StageExistsError,
    StaleCheckpointError,
    UnknownStageError,
)
from scheduler.manager import (
    Candidate,
    CheckpointInfo,
    Decision,
    Outcome,
    PreemptionManager,
    PreemptionPlan,
    PreemptionRequest,
    StageRecord,
    Verdict,
)
from scheduler.reasons import WAITABLE_REASONS, NonPreemptibleReason

__all__ = [
    "Candidate",
    "CheckpointInfo",
    "Decision",
    "InvalidRequestError",
    "InvalidStageError",
    "NonPreemptibleReason",
    "Outcome",
    "PreemptionManager",
    "PreemptionPlan",
    "PreemptionRequest",
    "SchedulerError",
    "SnapshotError",
    "StageExistsError",
    "StageRecord",
    "StaleCheckpointError",
    "UnknownStageError",
    "Verdict",
    "WAITABLE_REASONS",
]
