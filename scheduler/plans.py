"""Preemption requests and plans: what is asked, and the planner's answer.

Values only (frozen dataclasses and enums), shared by the pure planner
(:mod:`scheduler.planner`), the :class:`~scheduler.manager.PreemptionManager` that keeps the
registry it plans over, the decision log (:mod:`scheduler.decisions`) and the scheduler
actor. A request validates itself on construction, so a bad request never reaches the
planner: :class:`~scheduler.errors.InvalidRequestError` names the field.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.errors import InvalidRequestError
from scheduler.reasons import NonPreemptibleReason

__all__ = ["Candidate", "Outcome", "PreemptionPlan", "PreemptionRequest", "Verdict"]


@dataclass(frozen=True, slots=True)
class PreemptionRequest:
    """What a preemption must achieve, by when, and why.

    A request is a conjunction: every stage on ``nodes`` is needed, and victims are added
    until the summed ``resources`` of all victims cover the requested amounts and there
    are at least ``count`` victims. At least one of the three must ask for something.

    Attributes:
        reason: Free text for the decision log (``"spot notice node-3"``); its first word
            (``spot``) tags the metrics (``scheduler.decisions.reason_tag``).
        deadline: Absolute time, on the manager's clock, by which the victims must be
            stopped. Flushing stages are waited for only until then.
        resources: Resource name -> amount to free (amounts > 0; zero entries are ignored).
        nodes: Node ids to clear completely.
        count: Minimum number of victims.
    """

    reason: str
    deadline: float
    resources: Mapping[str, float] = field(default_factory=dict)
    nodes: frozenset[str] = frozenset()
    count: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str):
            raise InvalidRequestError("reason", "must be a string")
        if isinstance(self.deadline, bool) or not isinstance(self.deadline, (int, float)):
            raise InvalidRequestError("deadline", "must be a number")
        if not math.isfinite(self.deadline):
            raise InvalidRequestError("deadline", "must be finite")
        if isinstance(self.nodes, str):
            raise InvalidRequestError("nodes", "must be a collection of node ids, not a str")
        nodes = frozenset(self.nodes)
        if not all(isinstance(n, str) for n in nodes):
            raise InvalidRequestError("nodes", "node ids must be strings")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise InvalidRequestError("count", "must be an int >= 0")
        resources: dict[str, float] = {}
        for name, amount in sorted(dict(self.resources).items()):
            if not isinstance(name, str) or not name:
                raise InvalidRequestError("resources", f"bad resource name {name!r}")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)):
                raise InvalidRequestError("resources", f"{name}: amount must be a number")
            if not math.isfinite(amount) or amount < 0:
                raise InvalidRequestError("resources", f"{name}: amount must be finite, >= 0")
            if amount > 0:
                resources[name] = float(amount)
        if not resources and not nodes and self.count == 0:
            raise InvalidRequestError(
                "resources", "request asks for nothing (no resources, nodes or count)"
            )
        # Frozen dataclass: normalise through object.__setattr__ (copies, so the
        # caller's dict cannot change the request afterwards).
        object.__setattr__(self, "deadline", float(self.deadline))
        object.__setattr__(self, "resources", resources)
        object.__setattr__(self, "nodes", nodes)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict; :meth:`from_dict` gives back an equal request."""
        return {
            "reason": self.reason,
            "deadline": self.deadline,
            "resources": dict(self.resources),
            "nodes": sorted(self.nodes),
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreemptionRequest:
        """Inverse of :meth:`to_dict`."""
        return cls(
            reason=data["reason"],
            deadline=data["deadline"],
            resources=data.get("resources", {}),
            nodes=frozenset(data.get("nodes", ())),
            count=data.get("count", 0),
        )


class Outcome(str, enum.Enum):
    """Whether a plan can be carried out."""

    #: The victims satisfy the request now; stop them.
    READY = "ready"
    #: The request is satisfiable once the stages in ``wait_for`` finish their flush
    #: (before the deadline); wait, then re-plan.
    WAIT = "wait"
    #: Not satisfiable, even after waiting: needed stages are pinned/restoring, still
    #: flushing past the deadline, or there is not enough to free. ``victims`` is then the
    #: best effort the caller may still choose to carry out.
    UNSATISFIABLE = "unsatisfiable"

    def __str__(self) -> str:
        return self.value


class Verdict(str, enum.Enum):
    """What a plan decided for one stage."""

    CHOSEN = "chosen"
    WAIT = "wait"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Candidate:
    """The decision for one stage considered by a plan, with a human-readable reason.

    Attributes:
        stage_id: The stage.
        node_id: Its node when planned.
        priority: Its priority when planned.
        work_records: Records that would be replayed if stopped now.
        work_seconds: Seconds of work that would be replayed if stopped now.
        marks: Its non-preemptible reasons when planned (sorted by value).
        verdict: Chosen, waited for, or skipped.
        why: Why, e.g. ``"pinned"``, ``"not needed: enough freed ..."``.
    """

    stage_id: str
    node_id: str
    priority: int
    work_records: int
    work_seconds: float
    marks: tuple[NonPreemptibleReason, ...]
    verdict: Verdict
    why: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "stage_id": self.stage_id,
            "node_id": self.node_id,
            "priority": self.priority,
            "work_records": self.work_records,
            "work_seconds": self.work_seconds,
            "marks": [m.value for m in self.marks],
            "verdict": self.verdict.value,
            "why": self.why,
        }


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    """The answer to one :class:`PreemptionRequest` at one point in time.

    A plan is a snapshot: it does not change when the manager's state does. To act on a
    ``WAIT`` plan, wait for ``wait_for`` (:meth:`PreemptionManager.wait_for_flush`) and
    re-plan (:meth:`PreemptionManager.replan`), which decides afresh from current state.

    Attributes:
        request: The request planned for.
        planned_at: Manager clock time of the plan.
        seq: Sequence number of the plan's entry in the decision log.
        outcome: READY, WAIT or UNSATISFIABLE (see :class:`Outcome`).
        victims: Stages to stop now, in victim order (priority, work lost, id). None of
            them carries any non-preemptible reason.
        wait_for: Needed stages that are flushing a checkpoint; empty unless some
            flushing stage is needed and the deadline has not passed.
        blocked: Stages on nodes to clear that can never be taken by this plan (pinned,
            restoring, or still flushing after the deadline).
        candidates: Per-stage verdicts, in the order considered: stages on nodes to
            clear, then preemptible stages in victim order (up to a few after the last
            victim), then flushing stages, then other marked stages.
        freed: Resources held by ``victims`` (name -> summed amount).
        unlisted: Preemptible stages not needed and not listed in ``candidates``.
    """

    request: PreemptionRequest
    planned_at: float
    seq: int
    outcome: Outcome
    victims: tuple[str, ...]
    wait_for: frozenset[str]
    blocked: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    freed: Mapping[str, float]
    unlisted: int

    @property
    def satisfiable_now(self) -> bool:
        """``True`` when stopping ``victims`` now satisfies the request."""
        return self.outcome is Outcome.READY

    @property
    def must_wait(self) -> bool:
        """``True`` when the plan needs flushing stages to finish first."""
        return self.outcome is Outcome.WAIT

    def candidate(self, stage_id: str) -> Candidate | None:
        """Return the verdict for ``stage_id``, or ``None`` if the plan did not list it."""
        for cand in self.candidates:
            if cand.stage_id == stage_id:
                return cand
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (for the decision log, the CLI, persistence)."""
        return {
            "request": self.request.to_dict(),
            "planned_at": self.planned_at,
            "seq": self.seq,
            "outcome": self.outcome.value,
            "victims": list(self.victims),
            "wait_for": sorted(self.wait_for),
            "blocked": list(self.blocked),
            "candidates": [c.to_dict() for c in self.candidates],
            "freed": dict(self.freed),
            "unlisted": self.unlisted,
        }
