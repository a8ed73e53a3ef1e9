"""Scheduler: flush-aware preemption of checkpointed stages.

The policy core, :class:`PreemptionManager`, is plain Python (no Ray) so that it can be
tested exhaustively; the Ray scheduler actor wraps it.

The Ray-side names (the :class:`Scheduler` actor, its observer, the hooks stages call
(``scheduler/hooks.py``), the registry store and the Ray adapter's values) are imported lazily on first access, so that ``import scheduler`` for
the manager alone does not import Ray.
"""

from __future__ import annotations

from typing import Any

from scheduler.errors import (
    DrainRejectedError,
    InvalidRequestError,
    InvalidStageError,
    NoNodeAvailableError,
    RayUnsupportedError,
    RegistryError,
    RegistryKeyRequired,
    RestoreError,
    SchedulerError,
    SchedulerUnavailableError,
    SnapshotError,
    StageExistsError,
    StaleCheckpointError,
    UnknownStageError,
)
from scheduler.decisions import Decision, DecisionLog
from scheduler.manager import PreemptionManager
from scheduler.planner import plan_preemption
from scheduler.plans import Candidate, Outcome, PreemptionPlan, PreemptionRequest, Verdict
from scheduler.records import CheckpointSummary, StageRecord
from scheduler.reasons import WAITABLE_REASONS, NonPreemptibleReason

#: Ray-dependent public names -> the module defining them (imported on first access).
_LAZY = {
    "DrainResult": "scheduler.results",
    "PreemptionResult": "scheduler.results",
    "RestoreResult": "scheduler.results",
    "Scheduler": "scheduler.actor",
    "StageOutcome": "scheduler.results",
    "StageStatus": "scheduler.results",
    "get_or_create": "scheduler.actor",
    "get_scheduler": "scheduler.actor",
    "PreemptionCheckpointObserver": "scheduler.observer",
    "SchedulerRegistrar": "scheduler.hooks",
    "SchedulerRestore": "scheduler.hooks",
    "RegistryRecord": "scheduler.registry",
    "RegistryStore": "scheduler.registry",
    "ActorView": "scheduler.ray_adapter",
    "NodeView": "scheduler.ray_adapter",
    "check_ray_version": "scheduler.ray_adapter",
}

__all__ = [
    "Candidate",
    "CheckpointSummary",
    "Decision",
    "DecisionLog",
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
    "plan_preemption",
    # errors used by the scheduler actor
    "DrainRejectedError",
    "NoNodeAvailableError",
    "RayUnsupportedError",
    "RegistryError",
    "RegistryKeyRequired",
    "RestoreError",
    "SchedulerUnavailableError",
    # the scheduler actor and its parts (lazy, see _LAZY)
    "ActorView",
    "DrainResult",
    "NodeView",
    "PreemptionCheckpointObserver",
    "PreemptionResult",
    "RegistryRecord",
    "RegistryStore",
    "RestoreResult",
    "Scheduler",
    "SchedulerRegistrar",
    "SchedulerRestore",
    "StageOutcome",
    "StageStatus",
    "check_ray_version",
    "get_or_create",
    "get_scheduler",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
