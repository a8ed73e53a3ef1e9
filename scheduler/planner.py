"""The planner: which stages a preemption request stops, as a pure function.

:func:`plan_preemption` reads the registry (per-stage state, the node index and the
idle/marked partition the :class:`~scheduler.manager.PreemptionManager` maintains) and
returns a :class:`~scheduler.plans.PreemptionPlan`; it changes nothing, so the manager calls
it under its lock and every rule below is tested without Ray. The rules (why they are so is
in :mod:`scheduler.manager`):

1. Every stage on a node to clear is needed: idle ones are victims, flushing ones are waited
   for before the deadline, others block the plan.
2. Idle stages are taken lazily in victim order (priority, work lost, id) from a heap while
   they still help: hold a still-missing resource, or count toward ``count``.
3. Flushing stages are waited for only when the idle ones were not enough, and only before
   the deadline; after it a stage still flushing is skipped, never picked.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Set

from scheduler.plans import Candidate, Outcome, PreemptionPlan, PreemptionRequest, Verdict
from scheduler.reasons import WAITABLE_REASONS
from scheduler.records import StageState, marks_label

__all__ = ["plan_preemption"]

#: Freed amounts within this of the requested amount count as enough (float sums of
#: fractional resources, e.g. three stages of 0.1 CPU for a request of 0.3).
RESOURCE_EPSILON = 1e-9
#: How many not-needed preemptible stages a plan lists after the last victim, so the log
#: shows what came next without listing all 10,000 stages.
RUNNERS_UP = 5


def plan_preemption(request: PreemptionRequest, *, stages: Mapping[str, StageState],
                    by_node: Mapping[str, Set[str]], idle: Mapping[str, StageState],
                    marked: Set[str], now: float, seq: int) -> PreemptionPlan:
    """Plan ``request`` over the registry as it is at ``now``; changes nothing.

    Args:
        request: What must be freed, by when.
        stages: Every registered stage by id.
        by_node: Node id -> ids of the stages on it.
        idle: The stages carrying no non-preemptible reason.
        marked: Ids of the stages carrying at least one reason.
        now: Planning time, on the clock of ``request.deadline``.
        seq: The plan's sequence number in the decision log.
    """
    
    before_deadline = now < request.deadline
    missing: dict[str, float] = dict(request.resources)
    count_left = request.count
    freed: dict[str, float] = {}
    victims: list[StageState] = []
    wait: list[StageState] = []
    blocked: list[StageState] = []
    cands: list[Candidate] = []

    def take(stage: StageState, now_too: bool) -> None:
        nonlocal count_left
        count_left -= 1
        for name, amount in stage.resources.items():
            if now_too:
                freed[name] = freed.get(name, 0.0) + amount
            if name in missing:
                left = missing[name] - amount
                if left <= RESOURCE_EPSILON:
                    del missing[name]
                else:
                    missing[name] = left

    def helps(stage: StageState) -> bool:
        return count_left > 0 or not stage.held.isdisjoint(missing)

    def satisfied() -> bool:
        return count_left <= 0 and not missing

    # 1. Nodes to clear: every stage on them is needed.
    mandatory: set[str] = set()
    for node in request.nodes:
        mandatory |= by_node.get(node, set())
    for stage in sorted((stages[i] for i in mandatory), key=lambda s: s.key[:4]):
        where = f"on node {stage.node_id}, which must be cleared"
        if not stage.reasons:
            victims.append(stage)
            take(stage, True)
            cands.append(stage.candidate(Verdict.CHOSEN, f"chosen: {where}"))
        elif stage.reasons <= WAITABLE_REASONS:
            label = marks_label(stage.reasons)
            if before_deadline:
                wait.append(stage)
                take(stage, False)
                cands.append(stage.candidate(
                    Verdict.WAIT, f"{label}: {where}; wait for the flush to commit"))
            else:
                blocked.append(stage)
                cands.append(stage.candidate(
                    Verdict.SKIPPED,
                    f"{label}: deadline passed, never preempted mid-flush; {where}"))
        else:
            blocked.append(stage)
            cands.append(stage.candidate(
                Verdict.SKIPPED, f"{marks_label(stage.reasons)}: {where}"))

    # 2. Idle stages, lazily in victim order. Without a count, only stages holding a
    #    requested resource can help, so the others are not even put in the heap.
    idle_stages = idle.values()
    nodes = request.nodes
    wanted = frozenset(missing)
    heap: list[tuple[int, int, float, str, StageState]]
    if count_left > 0:
        if nodes:
            heap = [s.key for s in idle_stages if s.node_id not in nodes]
        else:
            heap = [s.key for s in idle_stages]
    elif wanted:
        if nodes:
            heap = [s.key for s in idle_stages
                    if s.node_id not in nodes and not s.held.isdisjoint(wanted)]
        else:
            heap = [s.key for s in idle_stages if not s.held.isdisjoint(wanted)]
    else:
        heap = []
    pool_size = len(idle) - sum(1 for i in mandatory if i not in marked)
    listed = 0
    if heap:
        heapq.heapify(heap)
        runners_up = 0
        while heap:
            stage = heapq.heappop(heap)[4]
            listed += 1
            if satisfied():
                last = victims[-1].priority if victims else None
                tail = "" if last is None else f"; priority {stage.priority} vs last victim's {last}"
                cands.append(stage.candidate(
                    Verdict.SKIPPED, f"not needed: enough freed{tail}"))
                runners_up += 1
                if runners_up >= RUNNERS_UP:
                    break
            elif helps(stage):
                victims.append(stage)
                take(stage, True)
                cands.append(stage.candidate(
                    Verdict.CHOSEN,
                    f"chosen: priority {stage.priority}, {stage.work_records} records / "
                    f"{stage.work_seconds:g} s since last checkpoint"))
            else:
                cands.append(stage.candidate(
                    Verdict.SKIPPED,
                    f"not needed: holds none of the still-missing {', '.join(sorted(missing))}"))

    # 3. Marked stages not on a node to clear: flushing ones may be waited for if the
    #    idle stages were not enough; the others are only reported.
    others = sorted(
        (stages[i] for i in marked if i not in mandatory), key=lambda s: s.key[:4])
    flushing = [s for s in others if s.reasons <= WAITABLE_REASONS]
    vetoed = [s for s in others if not s.reasons <= WAITABLE_REASONS]
    for stage in flushing:
        label = marks_label(stage.reasons)
        if satisfied():
            cands.append(stage.candidate(
                Verdict.SKIPPED, f"{label}: not needed, enough freed without it"))
        elif not before_deadline:
            cands.append(stage.candidate(
                Verdict.SKIPPED, f"{label}: deadline passed, never preempted mid-flush"))
        elif helps(stage):
            wait.append(stage)
            take(stage, False)
            cands.append(stage.candidate(
                Verdict.WAIT, f"{label}: needed; wait for the flush to commit"))
        else:
            cands.append(stage.candidate(
                Verdict.SKIPPED,
                f"{label}: not needed, holds none of the still-missing "
                f"{', '.join(sorted(missing))}"))
    for stage in vetoed:
        cands.append(stage.candidate(Verdict.SKIPPED, marks_label(stage.reasons)))

    if blocked or not satisfied():
        outcome = Outcome.UNSATISFIABLE
    elif wait:
        outcome = Outcome.WAIT
    else:
        outcome = Outcome.READY
    victims.sort(key=lambda s: s.key[:4])
    return PreemptionPlan(
        request=request,
        planned_at=now,
        seq=seq,
        outcome=outcome,
        victims=tuple(s.stage_id for s in victims),
        wait_for=frozenset(s.stage_id for s in wait),
        blocked=tuple(s.stage_id for s in blocked),
        candidates=tuple(cands),
        freed=dict(sorted(freed.items())),
        unlisted=max(pool_size - listed, 0),
    )
