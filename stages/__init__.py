"""Stages: checkpointed state of Ray pipeline stages on leased block storage.

Three rooms, dependencies one way (``tests/test_public_api.py`` checks the order and that
no two modules import each other in a circle)::

    stages.errors  <-  stages.checkpoint  <-  stages.actors  <-  stages.pipeline

* ``checkpoint/`` - one state's crash-atomic, verified checkpoints on one lease
  (:class:`CheckpointedStageState`, the format, codecs, MACs, the flush observer, policies);
* ``actors/`` - Ray actors holding such a state: pipeline stage actors, ``@checkpointed``
  actors, the incarnation mechanism they share, relaunch recipes, the hooks a manager
  implements, placement;
* ``pipeline/`` - sources, stages and sinks run as one exactly-once pipeline; runs.

Every public name is importable from here; each room's ``__init__`` maps its modules.
"""

from __future__ import annotations

from .errors import (
    BadMagicError,
    CheckpointAuthError,
    CheckpointCommitUnknown,
    CheckpointCorrupt,
    CheckpointDowngradeRefused,
    CheckpointFailed,
    CheckpointEncodeError,
    CheckpointKeyRequired,
    CheckpointTooLarge,
    CodecError,
    KeyGroupError,
    NoCheckpointError,
    StageError,
    TornHeaderError,
    TruncatedCheckpointError,
    UnauthenticatedRestoreWarning,
    UnsupportedFormatError,
)
from .checkpoint import (
    CheckpointedStageState,
    CheckpointFlushObserver,
    CheckpointInfo,
    GenerationReport,
    RestoreReport,
    flush_guard,
    verify_lease,
)

__all__ = [
    "BadMagicError",
    "CheckpointAuthError",
    "CheckpointCommitUnknown",
    "CheckpointCorrupt",
    "CheckpointDowngradeRefused",
    "CheckpointFailed",
    "CheckpointEncodeError",
    "CheckpointKeyRequired",
    "CheckpointTooLarge",
    "CheckpointFlushObserver",
    "CheckpointInfo",
    "CheckpointedStageState",
    "CodecError",
    "GenerationReport",
    "KeyGroupError",
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

from .checkpoint import CheckpointManager, CheckpointPolicy, CheckpointRequest, PolicyCounters
from .errors import PipelineError, RunActiveError, RunError, RunFencedError, SinkFencedError
from .errors import SourceError, SourceFileChanged, SourceFileCorrupt, SourceSchemaMismatch
from .errors import StageProcessError
from .actors import (
    ActorFenced,
    ActorRecipe,
    CallNotAnswered,
    CheckpointedConfigError,
    NodeCapacity,
    Relaunchable,
    RollbackUnavailable,
    Stage,
    StageActor,
    StageLostHook,
    StageRegistrar,
    StageRegistration,
    StageSpec,
    StageStopped,
    StateAttributeError,
    RequestIdConflict,
    RequestIdError,
    ResultNotKept,
    StoreUnavailable,
    call_once,
    checkpointed,
    launch_stage,
    pick_node,
)
from .pipeline import (
    FenceToken,
    FileSink,
    FileSource,
    GeneratedSource,
    JsonlSource,
    ParquetSink,
    ParquetSource,
    Pipeline,
    PipelineEvent,
    PipelineResult,
    RunClaim,
    RunClaimConflict,
    RunClaimLost,
    RunDriver,
    RunNotFoundError,
    RunNotPausedError,
    RunStatus,
    RunStep,
    RunStepExistsError,
    RunStore,
    Sink,
    Source,
    StageCommit,
    run_reference,
)

__all__ += [
    "ActorFenced",
    "ActorRecipe",
    "CallNotAnswered",
    "CheckpointManager",
    "CheckpointedConfigError",
    "CheckpointPolicy",
    "CheckpointRequest",
    "FenceToken",
    "FileSink",
    "FileSource",
    "GeneratedSource",
    "JsonlSource",
    "ParquetSink",
    "ParquetSource",
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
    "SourceError",
    "SourceFileChanged",
    "SourceFileCorrupt",
    "SourceSchemaMismatch",
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
    "RequestIdConflict",
    "RequestIdError",
    "ResultNotKept",
    "call_once",
    "checkpointed",
    "launch_stage",
    "pick_node",
    "run_reference",
]
