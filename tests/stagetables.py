"""Stage tables for the :class:`scheduler.PreemptionManager` tests (no Ray): a settable
clock, a stage row, and a manager built from a table of them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler import (
    NonPreemptibleReason,
    PreemptionManager,
    PreemptionRequest,
)

__all__ = ["FLUSHING", "PINNED", "RESTORING", "FakeClock", "S", "build", "req"]

FLUSHING = NonPreemptibleReason.CHECKPOINT_IN_PROGRESS
RESTORING = NonPreemptibleReason.RESTORING
PINNED = NonPreemptibleReason.PINNED


class FakeClock:
    """A settable clock, so deadlines are deterministic."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class S:
    """A stage in a test table."""

    id: str
    prio: int = 0
    records: int = 0
    seconds: float = 0.0
    node: str = "n1"
    res: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    marks: tuple[NonPreemptibleReason, ...] = ()


def build(stages: Iterable[S], clock: FakeClock | None = None) -> PreemptionManager:
    manager = PreemptionManager(clock=clock or FakeClock())
    for s in stages:
        manager.register(s.id, node_id=s.node, priority=s.prio, lease_id=f"lease-{s.id}",
                         resources=s.res, reasons=s.marks)
        if s.records or s.seconds:
            manager.record_work(s.id, s.records, s.seconds)
    return manager


def req(deadline: float = 200.0, **kwargs: object) -> PreemptionRequest:
    return PreemptionRequest("test", deadline, **kwargs)  # type: ignore[arg-type]
