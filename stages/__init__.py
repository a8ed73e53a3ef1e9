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
    CodecError,
    NoCheckpointError,
    StageError,
    TornHeaderError,
    TruncatedCheckpointError,
    UnsupportedFormatError,
)
from .observer import CheckpointFlushObserver, flush_guard
from .state import CheckpointedStageState, CheckpointInfo, RestoreReport
from .verify import GenerationReport, verify_lease

__all__ = [
    "BadMagicError",
    "CheckpointAuthError",
    "CheckpointCommitUnknown",
    "CheckpointCorrupt",
    "CheckpointFailed",
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
    "UnsupportedFormatError",
    "flush_guard",
    "verify_lease",
]

# -- stage actors, checkpoint policies, runs, pipelines (stages/actor.py, policy.py, runs.py,
#    source.py, sink.py, pipeline.py) -------------------------------------------------------
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
    SchedulerRestore,
    StageProcessError,
    run_reference,
)
from .sink import FileSink, Sink  # noqa: E402
from .source import GeneratedSource, Source  # noqa: E402

__all__ += [
    "CheckpointManager",
    "CheckpointPolicy",
    "CheckpointRequest",
    "FileSink",
    "GeneratedSource",
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
    "SchedulerRestore",
    "Sink",
    "Source",
    "Stage",
    "StageActor",
    "StageCommit",
    "StageRegistration",
    "StageProcessError",
    "StageSpec",
    "StageStopped",
    "launch_stage",
    "run_reference",
]
