"""Property tests of :class:`scheduler.PreemptionManager` (no Ray): a Hypothesis test checks
the selection guarantees over random registries, and a state machine checks random operation
sequences against a dict model of the registry.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from stagetables import FLUSHING, FakeClock

from scheduler import (
    NonPreemptibleReason,
    Outcome,
    PreemptionManager,
    PreemptionRequest,
    StageExistsError,
    UnknownStageError,
    Verdict,
)

# ----------------------------------------------------------------- property


stage_st = st.tuples(
    st.integers(0, 3),                                     # priority
    st.integers(0, 4),                                     # records
    st.sampled_from([0.0, 0.5, 1.0]),                      # seconds
    st.sampled_from(["n0", "n1", "n2"]),                   # node
    st.integers(0, 3),                                     # CPUs
    st.integers(0, 1),                                     # GPUs
    st.frozensets(st.sampled_from(list(NonPreemptibleReason)), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    stages=st.lists(stage_st, max_size=12),
    count=st.integers(0, 5),
    cpu=st.integers(0, 8),
    gpu=st.integers(0, 2),
    nodes=st.frozensets(st.sampled_from(["n0", "n1", "n2", "n9"]), max_size=2),
    deadline_passed=st.booleans(),
)
def test_property_victims_safe_ordered_and_sufficient(
    stages: list[tuple[int, int, float, str, int, int, frozenset[NonPreemptibleReason]]],
    count: int,
    cpu: int,
    gpu: int,
    nodes: frozenset[str],
    deadline_passed: bool,
) -> None:
    if not (count or cpu or gpu or nodes):
        count = 1
    manager = PreemptionManager(clock=FakeClock(100.0))
    for i, (prio, records, seconds, node, cpus, gpus, marks) in enumerate(stages):
        sid = f"s{i:02d}"
        manager.register(sid, node_id=node, priority=prio, lease_id=sid,
                         resources={"CPU": cpus, "GPU": gpus}, reasons=marks)
        manager.record_work(sid, records, seconds)
    request = PreemptionRequest("prop", 50.0 if deadline_passed else 150.0,
                                resources={"CPU": cpu, "GPU": gpu}, nodes=nodes, count=count)
    plan = manager.select_victims(request)
    recs = {r.stage_id: r for r in manager.stages()}

    # Never a victim with a mark; victims in (priority, work lost, id) order, no repeats.
    assert all(recs[v].preemptible for v in plan.victims)
    keys = [recs[v].order_key for v in plan.victims]
    assert keys == sorted(keys) and len(set(plan.victims)) == len(plan.victims)
    # Waiting only for flushing stages, and only before the deadline.
    assert not set(plan.victims) & plan.wait_for
    for w in plan.wait_for:
        assert recs[w].reasons == {FLUSHING}
    if deadline_passed:
        assert plan.wait_for == frozenset()
    # Every idle stage on a node to clear is a victim.
    for r in recs.values():
        if r.node_id in nodes and r.preemptible:
            assert r.stage_id in plan.victims
    # Ready means the request is met by the victims alone.
    if plan.outcome is Outcome.READY:
        chosen = [recs[v] for v in plan.victims]
        assert len(chosen) >= count
        assert sum(r.resources["CPU"] for r in chosen) >= cpu
        assert sum(r.resources["GPU"] for r in chosen) >= gpu
        assert all(r.stage_id in plan.victims for r in recs.values() if r.node_id in nodes)
        assert plan.wait_for == frozenset()
    # Count-only requests take exactly the first idle stages in victim order.
    if not nodes and not cpu and not gpu:
        idle = sorted((r for r in recs.values() if r.preemptible), key=lambda r: r.order_key)
        assert plan.victims == tuple(r.stage_id for r in idle[:count])
    # Every listed verdict agrees with the victims / wait set.
    for cand in plan.candidates:
        if cand.verdict is Verdict.CHOSEN:
            assert cand.stage_id in plan.victims
        elif cand.verdict is Verdict.WAIT:
            assert cand.stage_id in plan.wait_for
        else:
            assert cand.stage_id not in plan.victims and cand.stage_id not in plan.wait_for


# ----------------------------------------------------------------- state machine


class ManagerMachine(RuleBasedStateMachine):
    """Random operation sequences against a dict model of the registry.

    Checks the manager's internal indexes (idle/marked partition, per-node index) through
    its public answers, and the selection guarantees after every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.manager = PreemptionManager(clock=self.clock, max_decisions=5)
        self.model: dict[str, dict[str, object]] = {}

    ids = Bundle("ids")

    @rule(target=ids, sid=st.sampled_from([f"s{i}" for i in range(8)]),
          node=st.sampled_from(["n0", "n1"]), prio=st.integers(0, 2))
    def register(self, sid: str, node: str, prio: int) -> str:
        if sid in self.model:
            with pytest.raises(StageExistsError):
                self.manager.register(sid, node_id=node, priority=prio, lease_id=sid)
        else:
            self.manager.register(sid, node_id=node, priority=prio, lease_id=sid,
                                  resources={"CPU": 1})
            self.model[sid] = {"node": node, "prio": prio, "records": 0, "marks": set(),
                               "gen": -1}
        return sid

    @rule(sid=ids)
    def unregister(self, sid: str) -> None:
        if sid in self.model:
            self.manager.unregister(sid)
            del self.model[sid]
        else:
            with pytest.raises(UnknownStageError):
                self.manager.unregister(sid)

    @rule(sid=ids, reason=st.sampled_from(list(NonPreemptibleReason)), on=st.booleans())
    def mark(self, sid: str, reason: NonPreemptibleReason, on: bool) -> None:
        if sid not in self.model:
            return
        marks = self.model[sid]["marks"]
        assert isinstance(marks, set)
        if on:
            assert self.manager.set_reason(sid, reason) == (reason not in marks)
            marks.add(reason)
        else:
            assert self.manager.clear_reason(sid, reason) == (reason in marks)
            marks.discard(reason)

    @rule(sid=ids, records=st.integers(0, 3))
    def work(self, sid: str, records: int) -> None:
        if sid in self.model:
            self.manager.record_work(sid, records, 0.0)
            self.model[sid]["records"] += records  # type: ignore[operator]

    @rule(sid=ids)
    def checkpoint(self, sid: str) -> None:
        if sid in self.model:
            gen = self.model[sid]["gen"] + 1  # type: ignore[operator]
            self.manager.record_checkpoint(sid, gen, 1)
            self.model[sid].update(gen=gen, records=0)

    @rule(sid=ids, node=st.sampled_from(["n0", "n1", "n2"]))
    def move(self, sid: str, node: str) -> None:
        if sid in self.model:
            self.manager.update(sid, node_id=node)
            self.model[sid]["node"] = node

    @rule(count=st.integers(1, 4), node=st.sampled_from([None, "n0", "n1", "n2"]),
          passed=st.booleans())
    def select(self, count: int, node: str | None, passed: bool) -> None:
        self.clock.now += 1.0
        nodes = frozenset() if node is None else frozenset({node})
        deadline = self.clock.now - 1 if passed else self.clock.now + 10
        plan = self.manager.select_victims(
            PreemptionRequest("sm", deadline, nodes=nodes, count=count))
        keys = []
        for v in plan.victims:
            assert not self.model[v]["marks"]
            keys.append((self.model[v]["prio"], self.model[v]["records"], 0.0, v))
        assert keys == sorted(keys)
        for w in plan.wait_for:
            assert self.model[w]["marks"] == {FLUSHING} and not passed
        for sid, m in self.model.items():
            if m["node"] == node and not m["marks"]:
                assert sid in plan.victims
        if node is None:
            idle = sorted((m["prio"], m["records"], sid) for sid, m in self.model.items()
                          if not m["marks"])
            assert plan.victims == tuple(k[2] for k in idle[:count])

    @invariant()
    def registry_matches_model(self) -> None:
        assert len(self.manager) == len(self.model)
        for sid, m in self.model.items():
            rec = self.manager.stage(sid)
            assert (rec.node_id, rec.priority, rec.work_records) == (
                m["node"], m["prio"], m["records"])
            assert rec.reasons == m["marks"]
        for node in ("n0", "n1", "n2"):
            expect = sorted(s for s, m in self.model.items() if m["node"] == node)
            assert [r.stage_id for r in self.manager.stages_on_node(node)] == expect
        assert len(self.manager.decisions()) <= 5


TestManagerMachine = ManagerMachine.TestCase
TestManagerMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
