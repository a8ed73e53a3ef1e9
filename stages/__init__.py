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

# -- stage actors, their hooks and placement, checkpoint policies, runs, pipelines
#    (stages/actor.py, hooks.py, placement.py, policy.py, runs.py, source.py, sink.py,
#    pipeline.py) -------------------------------------------------------------------------
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
from .pipeline import (  # noqa: E402
    Pipeline,
    PipelineError,
    PipelineEvent,
    PipelineResult,
    StageProcessError,
    run_reference,
)
from .hooks import StageLostHook, StageRegistrar  # noqa: E402
from .placement import NodeCapacity, pick_node  # noqa: E402
from .sink import FileSink, Sink  # noqa: E402
from .source import GeneratedSource, Source  # noqa: E402

__all__ += [
    "CheckpointManager",
    "CheckpointPolicy",
    "CheckpointRequest",
    "FileSink",
    "GeneratedSource",
    "NodeCapacity",
    "Pipeline",
    "PipelineError",
    "PipelineEvent",
    "PipelineResult",
    "PolicyCounters",
    "RollbackUnavailable",
    "RunClaim",
    "RunClaimConflict",
    "RunClaimLost",
    "RunError",
    "RunNotFoundError",
    "RunNotPausedError",
    "RunStatus",
    "RunStep",
    "RunStepExistsError",
    "RunStore",
    "Sink",
    "Source",
    "Stage",
    "StageActor",
    "StageCommit",
    "StageLostHook",
    "StageRegistrar",
    "StageRegistration",
    "StageProcessError",
    "StageSpec",
    "StageStopped",
    "launch_stage",
    "pick_node",
    "run_reference",
]
