"""Stages: checkpointed state of Ray pipeline stages on leased block storage.

Public surface: :class:`CheckpointedStageState` (state + crash-atomic checkpoints on a lease),
its value types, the flush observer protocol, lease verification, and the error tree.
"""

from __future__ import annotations

from .errors import (
    BadMagicError,
    CheckpointAuthError,
    CheckpointCorrupt,
    CheckpointFailed,
    CodecError,
    NoCheckpointError,
    StageError,
    TruncatedCheckpointError,
    UnsupportedFormatError,
)
from .observer import CheckpointFlushObserver, flush_guard
from .state import CheckpointedStageState, CheckpointInfo, RestoreReport
from .verify import GenerationReport, verify_lease

__all__ = [
    "BadMagicError",
    "CheckpointAuthError",
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
    "TruncatedCheckpointError",
    "UnsupportedFormatError",
    "flush_guard",
    "verify_lease",
]
