"""Stages: checkpointed state of Ray pipeline stages on leased block storage.

Public surface: :class:`CheckpointedStageState` (state + crash-atomic checkpoints on a lease),
its value types, the flush observer protocol, lease verification, and the error tree.
"""

from __future__ import annotations

from .errors import (
    BadMagicError,
    CheckpointAuthError,
    CheckpointCommitUnknown,
    CheckpointCorrupt,
    CheckpointFailed,
    CheckpointKeyRequired,
    CodecError,
    NoCheckpointError,
    StageError,
    TornHeaderError,
    TruncatedCheckpointError,
    UnauthenticatedRestoreWarning,
    UnsupportedFormatError,
)
from .observer import CheckpointFlushObserver, flush_guard
from .state import CheckpointedStageState, CheckpointInfo, RestoreReport
from .reader import GenerationReport, verify_lease

__all__ = [
    "BadMagicError",
    "CheckpointAuthError",
    "CheckpointCommitUnknown",
    "CheckpointCorrupt",
    "CheckpointFailed",
    "CheckpointKeyRequired",
    "CheckpointFlushObserver",
    "CheckpointInfo",
    "CheckpointedStageState",
    "CodecError",
    "GenerationReport",
    "NoCheckpointError",
    "RestoreReport",
    "StageError",
    "TornHeaderError",
    "TruncatedCheckpointError",
    "UnauthenticatedRestoreWarning",
    "UnsupportedFormatError",
    "flush_guard",
    "verify_lease",
]

# -- stage actors, checkpointed Ray actors, their hooks and placement, checkpoint policies,
#    runs, pipelines (stages/actor.py, checkpointed.py, durability.py, recipe.py, hooks.py,
#    placement.py, policy.py, runs.py, run_driver.py, source.py, sink.py, pipeline.py) -------
from .actor import (  # noqa: E402
    RollbackUnavailable,
    Stage,
    StageActor,
    StageRegistration,
    StageSpec,
    StageStopped,
    launch_stage,
)
from .policy import CheckpointManager, CheckpointPolicy, CheckpointRequest, PolicyCounters  # noqa: E402
from .errors import RunActiveError, RunFencedError, SinkFencedError  # noqa: E402
from .runs import (  # noqa: E402
    RunClaim,
    RunClaimConflict,
    RunClaimLost,
    RunError,
    RunNotFoundError,
    RunNotPausedError,
    RunStatus,
    RunStep,
    RunStepExistsError,
    RunStore,
    StageCommit,
)
from .run_driver import RunDriver  # noqa: E402
from .pipeline import (  # noqa: E402
    Pipeline,
    PipelineError,
    PipelineEvent,
    PipelineResult,
    StageProcessError,
    run_reference,
)
from .hooks import Relaunchable, StageLostHook, StageRegistrar  # noqa: E402
from .recipe import ActorRecipe  # noqa: E402
from .checkpointed import CheckpointedConfigError, checkpointed  # noqa: E402
from .durability import ActorFenced, StateAttributeError, StoreUnavailable  # noqa: E402
from .placement import NodeCapacity, pick_node  # noqa: E402
from .sink import FenceToken, FileSink, Sink  # noqa: E402
from .source import GeneratedSource, Source  # noqa: E402

__all__ += [
    "ActorFenced",
    "ActorRecipe",
    "CheckpointManager",
    "CheckpointedConfigError",
    "CheckpointPolicy",
    "CheckpointRequest",
    "FenceToken",
    "FileSink",
    "GeneratedSource",
    "NodeCapacity",
    "Pipeline",
    "PipelineError",
    "PipelineEvent",
    "PipelineResult",
    "PolicyCounters",
    "RollbackUnavailable",
    "RunActiveError",
    "RunClaim",
    "RunClaimConflict",
    "RunClaimLost",
    "RunDriver",
    "RunError",
    "RunFencedError",
    "RunNotFoundError",
    "RunNotPausedError",
    "RunStatus",
    "RunStep",
    "RunStepExistsError",
    "RunStore",
    "Sink",
    "SinkFencedError",
    "Source",
    "Relaunchable",
    "Stage",
    "StageActor",
    "StageCommit",
    "StageLostHook",
    "StageRegistrar",
    "StageRegistration",
    "StageProcessError",
    "StageSpec",
    "StageStopped",
    "StateAttributeError",
    "StoreUnavailable",
    "checkpointed",
    "launch_stage",
    "pick_node",
    "run_reference",
]
