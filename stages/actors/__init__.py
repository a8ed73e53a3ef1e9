"""The actors room: Ray actors that hold a checkpointed state, and how they are relaunched.

Imports ``stages.checkpoint`` (never ``stages.pipeline``). One mechanism serves both kinds
of actor here: :class:`~stages.actors.incarnation.Incarnation` (take the lease by force,
restore the newest generation that verifies, fail-closed checkpoints).

| module          | owns |
|-----------------|------|
| `actor.py`      | `Stage`, `StageSpec`, `StageActor`, `launch_stage`: a pipeline stage as a fenced actor |
| `batches.py`    | batches between stages (records or an Arrow table), batch stages' formats, `run_stage` |
| `incarnation.py`| the one mechanism of "a new incarnation" |
| `checkpointed.py` | the `@checkpointed` decorator: validation, generated methods |
| `config.py`     | `CheckpointedConfig`, the decorator's checked arguments |
| `durability.py` | the runtime of a `@checkpointed` actor: policy, snapshot lock, checkpoints, close |
| `dispatch.py`   | how one call of it runs: deduplicated, exactly-once commit or rollback |
| `calls.py`      | request ids (idempotency keys) and `call_once`, which resends until the actor answers |
| `turns.py`      | `CallTurns`: async actors are snapshotted only when no call is mid-method |
| `recipe.py`     | `ActorRecipe`: how a manager re-creates a `@checkpointed` actor |
| `hooks.py`      | what stages call and a manager implements: `StageRegistrar`, `StageLostHook`, `Relaunchable`, `StageRegistration` |
| `resources.py`  | the one reading of a stage's or actor's Ray resources |
| `placement.py`  | `pick_node`, the one node picker (shared with the scheduler) |
"""

from __future__ import annotations

from .actor import (
    RollbackUnavailable,
    Stage,
    StageActor,
    StageSpec,
    StageStopped,
    launch_stage,
)
from .calls import CallNotAnswered, RequestIdConflict, RequestIdError, call_once
from .checkpointed import CheckpointedConfigError, checkpointed
from .config import CheckpointedConfig
from .dispatch import SyncCallRefused
from .durability import ActorFenced, StateAttributeError, StoreUnavailable
from .hooks import Relaunchable, StageLostHook, StageRegistrar, StageRegistration
from .placement import NodeCapacity, pick_node
from .recipe import ActorRecipe
from .records import ResultNotKept

__all__ = [
    "ActorFenced",
    "ActorRecipe",
    "CallNotAnswered",
    "CheckpointedConfig",
    "CheckpointedConfigError",
    "NodeCapacity",
    "Relaunchable",
    "RequestIdConflict",
    "RequestIdError",
    "ResultNotKept",
    "RollbackUnavailable",
    "Stage",
    "StageActor",
    "StageLostHook",
    "StageRegistrar",
    "StageRegistration",
    "StageSpec",
    "StageStopped",
    "StateAttributeError",
    "StoreUnavailable",
    "SyncCallRefused",
    "call_once",
    "checkpointed",
    "launch_stage",
    "pick_node",
]
