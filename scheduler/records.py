"""What the preemption manager knows about one stage: records, checkpoints, validation.

:class:`StageRecord` and :class:`CheckpointSummary` are the immutable views handed out (and
persisted in registry snapshots); :class:`StageState` is the mutable per-stage state the
manager keeps under its lock and the planner reads. The ``check_*`` validators run before
any change, so a bad value raises :class:`~scheduler.errors.InvalidStageError` naming the
field and changes nothing.

``CheckpointSummary`` is the scheduler's summary of a stage's last committed checkpoint
(generation, time, size); the stage's own, richer description of a generation is
``stages.CheckpointInfo``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.errors import InvalidStageError
from scheduler.plans import Candidate, Verdict
from scheduler.reasons import NonPreemptibleReason

__all__ = ["CheckpointSummary", "StageRecord", "StageState"]


@dataclass(frozen=True, slots=True)
class CheckpointSummary:
    """The last committed checkpoint of a stage.

    Attributes:
        generation: Generation number within the stage's lease (only grows).
        committed_at: Clock time of the commit (wall time by default).
        size_bytes: Size of the checkpoint.
    """

    generation: int
    committed_at: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict; :meth:`from_dict` gives back an equal value."""
        return {
            "generation": self.generation,
            "committed_at": self.committed_at,
            "size_bytes": self.size_bytes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointSummary:
        """Inverse of :meth:`to_dict`."""
        return cls(
            generation=data["generation"],
            committed_at=data["committed_at"],
            size_bytes=data["size_bytes"],
        )


@dataclass(frozen=True, slots=True)
class StageRecord:
    """An immutable view of one registered stage, as the manager knew it when asked.

    Attributes:
        stage_id: Unique stage id (also the lease's human name).
        node_id: Id of the node the stage runs on.
        priority: Lower is preempted first.
        lease_id: The stage's block-store lease.
        resources: Resources the stage holds (name -> amount); freed when it is stopped.
            Treat as read-only.
        checkpoint: Last committed checkpoint, ``None`` before the first one.
        work_records: Records processed since the last committed checkpoint.
        work_seconds: Seconds of work since the last committed checkpoint.
        reasons: Current non-preemptible reasons; empty means preemptible.
    """

    stage_id: str
    node_id: str
    priority: int
    lease_id: str
    resources: Mapping[str, float]
    checkpoint: CheckpointSummary | None
    work_records: int
    work_seconds: float
    reasons: frozenset[NonPreemptibleReason]

    @property
    def preemptible(self) -> bool:
        """``True`` when no non-preemptible reason is set."""
        return not self.reasons

    @property
    def order_key(self) -> tuple[int, int, float, str]:
        """The victim order: (priority, work records lost, work seconds lost, id)."""
        return (self.priority, self.work_records, self.work_seconds, self.stage_id)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict; :meth:`from_dict` gives back an equal value."""
        return {
            "stage_id": self.stage_id,
            "node_id": self.node_id,
            "priority": self.priority,
            "lease_id": self.lease_id,
            "resources": dict(sorted(self.resources.items())),
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_dict(),
            "work_records": self.work_records,
            "work_seconds": self.work_seconds,
            "reasons": sorted(r.value for r in self.reasons),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        """Inverse of :meth:`to_dict`; unknown reason values raise ``ValueError``."""
        ckpt = data["checkpoint"]
        return cls(
            stage_id=data["stage_id"],
            node_id=data["node_id"],
            priority=data["priority"],
            lease_id=data["lease_id"],
            resources=dict(data["resources"]),
            checkpoint=None if ckpt is None else CheckpointSummary.from_dict(ckpt),
            work_records=data["work_records"],
            work_seconds=data["work_seconds"],
            reasons=frozenset(NonPreemptibleReason(r) for r in data["reasons"]),
        )


class StageState:
    """Mutable per-stage state, private to the manager and guarded by its lock."""

    __slots__ = (
        "stage_id",
        "node_id",
        "priority",
        "lease_id",
        "resources",
        "checkpoint",
        "work_records",
        "work_seconds",
        "reasons",
        "held",
        "key",
    )

    def __init__(
        self,
        stage_id: str,
        node_id: str,
        priority: int,
        lease_id: str,
        resources: dict[str, float],
        checkpoint: CheckpointSummary | None,
        work_records: int,
        work_seconds: float,
        reasons: set[NonPreemptibleReason],
    ) -> None:
        self.stage_id = stage_id
        self.node_id = node_id
        self.priority = priority
        self.lease_id = lease_id
        self.resources = resources
        self.checkpoint = checkpoint
        self.work_records = work_records
        self.work_seconds = work_seconds
        self.reasons = reasons
        self.held: frozenset[str] = frozenset()
        self.key: tuple[int, int, float, str, StageState] = (0, 0, 0.0, "", self)
        self.rekey()

    def rekey(self) -> None:
        # Cached per stage so a plan does not rebuild them: the heap entry (the id is
        # unique, so the trailing object is never compared) and the names of resources
        # actually held (amount > 0), for a C-speed "holds any wanted resource?" test.
        self.key = (self.priority, self.work_records, self.work_seconds, self.stage_id, self)
        self.held = frozenset(name for name, amount in self.resources.items() if amount > 0)

    def record(self) -> StageRecord:
        return StageRecord(
            stage_id=self.stage_id,
            node_id=self.node_id,
            priority=self.priority,
            lease_id=self.lease_id,
            resources=dict(self.resources),
            checkpoint=self.checkpoint,
            work_records=self.work_records,
            work_seconds=self.work_seconds,
            reasons=frozenset(self.reasons),
        )

    def candidate(self, verdict: Verdict, why: str) -> Candidate:
        return Candidate(
            stage_id=self.stage_id,
            node_id=self.node_id,
            priority=self.priority,
            work_records=self.work_records,
            work_seconds=self.work_seconds,
            marks=tuple(sorted(self.reasons, key=lambda r: r.value)) if self.reasons else (),
            verdict=verdict,
            why=why,
        )


def marks_label(reasons: Iterable[NonPreemptibleReason]) -> str:
    return ", ".join(sorted(r.label for r in reasons))


def check_str(stage_id: str, name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidStageError(stage_id if isinstance(stage_id, str) else "", name,
                                "must be a non-empty string")
    return value


def check_int(stage_id: str, name: str, value: object, *, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidStageError(stage_id, name, "must be an int")
    if minimum is not None and value < minimum:
        raise InvalidStageError(stage_id, name, f"must be >= {minimum}")
    return value


def check_amount(stage_id: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidStageError(stage_id, name, "must be a number")
    if not math.isfinite(value) or value < 0:
        raise InvalidStageError(stage_id, name, "must be finite and >= 0")
    return float(value)


def check_resources(stage_id: str, resources: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(resources, Mapping):
        raise InvalidStageError(stage_id, "resources", "must be a mapping name -> amount")
    out: dict[str, float] = {}
    for name, amount in sorted(resources.items()):
        if not isinstance(name, str) or not name:
            raise InvalidStageError(stage_id, "resources", f"bad resource name {name!r}")
        out[name] = check_amount(stage_id, f"resources[{name}]", amount)
    return out


def check_reason(reason: object) -> NonPreemptibleReason:
    if not isinstance(reason, NonPreemptibleReason):
        raise TypeError(f"expected a NonPreemptibleReason, got {reason!r}")
    return reason
