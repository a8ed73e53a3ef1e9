"""What the scheduler reports: a stage's status and the results of its actions.

Frozen values returned by the scheduler actor's remote methods (and so pickled across Ray)
with ``to_dict()`` forms for the CLI's ``--json``. :class:`StageStatus` values are also
persisted in the registry document (:mod:`scheduler.table`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DrainResult", "PreemptionResult", "RestoreResult", "StageOutcome", "StageStatus"]


class StageStatus(str, enum.Enum):
    """Where a stage is in its life, as the scheduler sees it (values are persisted)."""

    #: An incarnation is (believed to be) up.
    RUNNING = "running"
    #: Its actor or node died; a restore is pending (automatic, or on request).
    LOST = "lost"
    #: A new incarnation is being launched.
    RESTORING = "restoring"
    #: Being checkpointed off a draining node.
    MOVING = "moving"
    #: Stopped by a preemption; restored only on request.
    PREEMPTED = "preempted"
    #: Stopped on purpose (kept only in the decision log).
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """What a preemption did to one victim.

    Attributes:
        stage_id: The victim.
        action: ``"checkpointed"`` (checkpointed, then stopped), ``"stopped"`` (stopped
            cleanly without a new checkpoint: a pipeline-aligned stage, whose state is
            saved only at barriers, so it resumes from its last barrier), ``"killed"``
            (stopped without a new checkpoint; work since its last one is replayed) or
            ``"gone"`` (it was already dead).
        generation: The checkpoint generation it stopped at (``None`` if unknown).
        detail: Why, in words.
    """

    stage_id: str
    action: str
    generation: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"stage_id": self.stage_id, "action": self.action,
                "generation": self.generation, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class PreemptionResult:
    """The result of :meth:`Scheduler.preempt`.

    Attributes:
        seq: Sequence number of the final plan's entry in the decision log.
        outcome: The final plan's outcome (``"ready"``, ``"unsatisfiable"``), or ``"wait"``
            if the deadline passed while waiting (for a needed flush, or after a restart
            for the flush marks to be reconciled): then nothing was stopped.
        victims: The stages stopped, in victim order.
        outcomes: Per victim, what was done.
        waited_s: Seconds spent waiting for flushing stages.
        freed: Resources held by the victims.
    """

    seq: int
    outcome: str
    victims: tuple[str, ...]
    outcomes: tuple[StageOutcome, ...]
    waited_s: float
    freed: Mapping[str, float] = field(default_factory=dict)

    def outcome_of(self, stage_id: str) -> StageOutcome | None:
        """The outcome for ``stage_id``, or ``None`` if it was not a victim."""
        for out in self.outcomes:
            if out.stage_id == stage_id:
                return out
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"seq": self.seq, "outcome": self.outcome, "victims": list(self.victims),
                "outcomes": [o.to_dict() for o in self.outcomes], "waited_s": self.waited_s,
                "freed": dict(self.freed)}


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """Where a restored stage went.

    Attributes:
        stage_id: The stage.
        node_id: The node it now runs on.
        from_node: The node it ran on before (``None`` if unknown).
        epoch: The new incarnation's lease epoch (higher than any before).
        generation: The checkpoint generation it restored (``None``: started fresh).
        actor_id: The new actor's id.
        seconds: Time from the start of the restore to the new incarnation answering.
    """

    stage_id: str
    node_id: str
    from_node: str | None
    epoch: int
    generation: int | None
    actor_id: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"stage_id": self.stage_id, "node_id": self.node_id, "from_node": self.from_node,
                "epoch": self.epoch, "generation": self.generation, "actor_id": self.actor_id,
                "seconds": self.seconds}


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What a drain did.

    Attributes:
        node_id: The drained node.
        deadline: Its deadline (wall-clock seconds).
        ray_accepted: Whether Ray accepted the drain (``None``: not asked).
        moved: Stages restored elsewhere.
        checkpointed: Stages that checkpointed before moving (the others were killed and
            replay from their previous checkpoint).
        failed: ``(stage_id, error)`` of stages that could not be moved.
        finished_at: Wall-clock time the last stage was restored.
    """

    node_id: str
    deadline: float
    ray_accepted: bool | None
    moved: tuple[RestoreResult, ...]
    checkpointed: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    finished_at: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {"node_id": self.node_id, "deadline": self.deadline,
                "ray_accepted": self.ray_accepted, "moved": [m.to_dict() for m in self.moved],
                "checkpointed": list(self.checkpointed), "failed": [list(f) for f in self.failed],
                "finished_at": self.finished_at}
