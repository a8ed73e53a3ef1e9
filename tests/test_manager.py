"""Unit and property tests of :class:`scheduler.PreemptionManager` (no Ray).

Selection is tested table-driven: each case is a small registry, a request, and the exact
plan expected. A Hypothesis test then checks the guarantees over random registries.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import scheduler
from scheduler import (
    CheckpointSummary,
    InvalidRequestError,
    InvalidStageError,
    NonPreemptibleReason,
    Outcome,
    PreemptionManager,
    PreemptionRequest,
    SchedulerError,
    SnapshotError,
    StageExistsError,
    StaleCheckpointError,
    UnknownStageError,
    Verdict,
)

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


# ----------------------------------------------------------------- selection table

SELECTION_CASES = [
    pytest.param(
        [S("a", prio=2), S("b", prio=0), S("c", prio=1)],
        dict(count=2), ("b", "c"), Outcome.READY, set(),
        id="priority-lowest-first",
    ),
    pytest.param(
        [S("a", prio=0, records=1000), S("b", prio=1)],
        dict(count=1), ("a",), Outcome.READY, set(),
        id="priority-beats-work-lost",
    ),
    pytest.param(
        [S("a", records=10), S("b", records=5), S("c", records=7)],
        dict(count=2), ("b", "c"), Outcome.READY, set(),
        id="work-lost-records",
    ),
    pytest.param(
        [S("a", records=5, seconds=3.0), S("b", records=5, seconds=1.0),
         S("c", records=4, seconds=9.0)],
        dict(count=2), ("c", "b"), Outcome.READY, set(),
        id="work-lost-records-then-seconds",
    ),
    pytest.param(
        [S("d"), S("b"), S("c"), S("a")],
        dict(count=3), ("a", "b", "c"), Outcome.READY, set(),
        id="ties-by-stage-id",
    ),
    pytest.param(
        [S("a", marks=(PINNED,)), S("b", prio=5)],
        dict(count=1), ("b",), Outcome.READY, set(),
        id="pinned-skipped",
    ),
    pytest.param(
        [S("a", marks=(RESTORING,)), S("b", prio=5)],
        dict(count=1), ("b",), Outcome.READY, set(),
        id="restoring-skipped",
    ),
    pytest.param(
        [S("a", marks=(FLUSHING,)), S("b", prio=5), S("c", prio=6)],
        dict(count=2), ("b", "c"), Outcome.READY, set(),
        id="A7-flushing-never-picked-when-idle-suffice",
    ),
    pytest.param(
        [S("a", marks=(FLUSHING,)), S("b", marks=(FLUSHING,)), S("c", marks=(PINNED,))],
        dict(count=1), (), Outcome.WAIT, {"a"},
        id="only-flushing-wait-for-first-in-order",
    ),
    pytest.param(
        [S("a", marks=(FLUSHING,)), S("b", prio=3)],
        dict(count=2), ("b",), Outcome.WAIT, {"a"},
        id="idle-not-enough-wait-for-flushing",
    ),
    pytest.param(
        [S("a", marks=(FLUSHING, PINNED)), S("b", marks=(PINNED,))],
        dict(count=1), (), Outcome.UNSATISFIABLE, set(),
        id="flushing-and-pinned-never-waited",
    ),
    pytest.param(
        [S("a", marks=(RESTORING,))],
        dict(count=1), (), Outcome.UNSATISFIABLE, set(),
        id="restoring-never-waited",
    ),
    pytest.param(
        [S("a", prio=0, res={"CPU": 1}), S("b", prio=1, res={"CPU": 2}),
         S("c", prio=2, res={"CPU": 4})],
        dict(resources={"CPU": 3}), ("a", "b"), Outcome.READY, set(),
        id="resources-greedy-in-order",
    ),
    pytest.param(
        [S("a", prio=0, res={"CPU": 8}), S("b", prio=5, res={"CPU": 1, "GPU": 1})],
        dict(resources={"GPU": 1}), ("b",), Outcome.READY, set(),
        id="resources-skip-stages-without-the-resource",
    ),
    pytest.param(
        [S(x, res={"CPU": 0.1}) for x in "abcd"],
        dict(resources={"CPU": 0.3}), ("a", "b", "c"), Outcome.READY, set(),
        id="resources-fractional-sum",
    ),
    pytest.param(
        [S("a", res={"CPU": 1}), S("b", res={"CPU": 1})],
        dict(resources={"CPU": 5}), ("a", "b"), Outcome.UNSATISFIABLE, set(),
        id="resources-not-enough",
    ),
    pytest.param(
        [S("a", prio=0, res={"CPU": 4}), S("b", prio=1, res={"CPU": 1}),
         S("c", prio=2, res={"CPU": 1})],
        dict(resources={"CPU": 2}, count=2), ("a", "b"), Outcome.READY, set(),
        id="resources-and-count",
    ),
    pytest.param(
        [S("a", node="n1", prio=9), S("b", node="n1", prio=0), S("c", node="n2")],
        dict(nodes=frozenset({"n1"})), ("b", "a"), Outcome.READY, set(),
        id="node-clearing-takes-all-on-node",
    ),
    pytest.param(
        [S("a", node="n1"), S("b", node="n1", marks=(FLUSHING,)), S("c", node="n2")],
        dict(nodes=frozenset({"n1"})), ("a",), Outcome.WAIT, {"b"},
        id="node-clearing-waits-for-flush-on-node",
    ),
    pytest.param(
        [S("a", node="n1"), S("b", node="n1", marks=(PINNED,))],
        dict(nodes=frozenset({"n1"})), ("a",), Outcome.UNSATISFIABLE, set(),
        id="node-clearing-blocked-by-pin",
    ),
    pytest.param(
        [S("a", node="n1", res={"CPU": 1}), S("b", node="n2", prio=0, res={"CPU": 1}),
         S("c", node="n2", prio=1, res={"CPU": 1})],
        dict(nodes=frozenset({"n1"}), resources={"CPU": 2}), ("a", "b"), Outcome.READY, set(),
        id="node-clearing-counts-toward-resources",
    ),
    pytest.param(
        [S("a", node="n1")],
        dict(nodes=frozenset({"unknown-node"})), (), Outcome.READY, set(),
        id="node-with-no-stages-is-clear",
    ),
]


@pytest.mark.parametrize("stages, request_kwargs, victims, outcome, wait_for", SELECTION_CASES)
def test_select_victims(
    stages: list[S],
    request_kwargs: dict[str, object],
    victims: tuple[str, ...],
    outcome: Outcome,
    wait_for: set[str],
) -> None:
    manager = build(stages)
    plan = manager.select_victims(req(**request_kwargs))
    assert plan.victims == victims
    assert plan.outcome is outcome
    assert plan.wait_for == wait_for
    assert plan.satisfiable_now == (outcome is Outcome.READY)
    assert plan.must_wait == (outcome is Outcome.WAIT)
    for sid in plan.victims:
        assert manager.reasons(sid) == frozenset()
    assert plan.victims == tuple(sorted(plan.victims, key=lambda i: manager.stage(i).order_key))
    # Same state, same request: same plan (apart from its log sequence number).
    again = manager.select_victims(plan.request)
    assert (again.victims, again.wait_for, again.candidates) == (
        plan.victims, plan.wait_for, plan.candidates)


WHY_CASES = [
    pytest.param([S("a", marks=(PINNED,)), S("b")], "a", Verdict.SKIPPED, "pinned", id="pinned"),
    pytest.param([S("a", marks=(RESTORING,)), S("b")], "a", Verdict.SKIPPED, "restoring",
                 id="restoring"),
    pytest.param([S("a", marks=(FLUSHING,)), S("b")], "a", Verdict.SKIPPED,
                 "checkpoint in progress: not needed", id="flushing-not-needed"),
    pytest.param([S("a", marks=(FLUSHING,))], "a", Verdict.WAIT,
                 "checkpoint in progress: needed; wait", id="flushing-wait"),
    pytest.param([S("a"), S("b", prio=3)], "b", Verdict.SKIPPED,
                 "not needed: enough freed; priority 3 vs last victim's 0", id="runner-up"),
    pytest.param([S("a")], "a", Verdict.CHOSEN, "chosen: priority 0", id="chosen"),
]


@pytest.mark.parametrize("stages, stage_id, verdict, why", WHY_CASES)
def test_plan_says_why(stages: list[S], stage_id: str, verdict: Verdict, why: str) -> None:
    plan = build(stages).select_victims(req(count=1))
    cand = plan.candidate(stage_id)
    assert cand is not None
    assert cand.verdict is verdict
    assert cand.why.startswith(why), cand.why


def test_plan_lists_few_runners_up_and_counts_the_rest() -> None:
    manager = build([S(f"s{i:03d}") for i in range(100)])
    plan = manager.select_victims(req(count=2))
    assert plan.victims == ("s000", "s001")
    assert len(plan.candidates) < 10
    assert plan.unlisted == 100 - len(plan.candidates)
    assert plan.candidate("s099") is None


def test_resource_request_reports_stages_holding_only_satisfied_resources() -> None:
    manager = build([
        S("a", prio=0, res={"GPU": 1}),
        S("b", prio=1, res={"GPU": 1}),
        S("c", prio=2, res={"CPU": 1, "GPU": 1}),
    ])
    plan = manager.select_victims(req(resources={"GPU": 1, "CPU": 1}))
    assert plan.victims == ("a", "c")
    cand = plan.candidate("b")
    assert cand is not None and cand.why == "not needed: holds none of the still-missing CPU"
    assert plan.freed == {"CPU": 1.0, "GPU": 2.0}


# ----------------------------------------------------------------- deadline and waiting


def test_only_flushing_waits_then_picks_after_flush_commits() -> None:
    clock = FakeClock(100.0)
    manager = build([S("a", records=50, marks=(FLUSHING,)), S("b", marks=(PINNED,))], clock)
    plan = manager.select_victims(req(deadline=110.0, count=1))
    assert plan.outcome is Outcome.WAIT
    assert plan.victims == ()
    assert plan.wait_for == {"a"}

    # Still flushing: re-planning changes nothing.
    clock.now = 105.0
    assert manager.replan(plan).wait_for == {"a"}

    # Flush completes before the deadline: the stage is committed and eligible.
    manager.record_checkpoint("a", generation=1, size_bytes=4096)
    manager.clear_reason("a", FLUSHING)
    after = manager.replan(plan)
    assert after.outcome is Outcome.READY
    assert after.victims == ("a",)
    assert manager.stage("a").work_records == 0


@pytest.mark.parametrize("now", [110.0, 111.0], ids=["at-deadline", "after-deadline"])
def test_still_flushing_after_deadline_is_never_picked(now: float) -> None:
    clock = FakeClock(now)
    manager = build([S("a", marks=(FLUSHING,))], clock)
    plan = manager.select_victims(req(deadline=110.0, count=1))
    assert plan.outcome is Outcome.UNSATISFIABLE
    assert plan.victims == ()
    assert plan.wait_for == frozenset()
    cand = plan.candidate("a")
    assert cand is not None and cand.verdict is Verdict.SKIPPED
    assert "deadline passed, never preempted mid-flush" in cand.why


def test_flush_completed_after_deadline_is_eligible() -> None:
    clock = FakeClock(120.0)
    manager = build([S("a", marks=(FLUSHING,))], clock)
    manager.clear_reason("a", FLUSHING)
    plan = manager.select_victims(req(deadline=110.0, count=1))
    assert plan.victims == ("a",)
    assert plan.outcome is Outcome.READY


def test_node_clearing_after_deadline_blocks_on_flushing_stage() -> None:
    manager = build([S("a", node="n1"), S("b", node="n1", marks=(FLUSHING,))], FakeClock(300.0))
    plan = manager.select_victims(req(deadline=200.0, nodes=frozenset({"n1"})))
    assert plan.outcome is Outcome.UNSATISFIABLE
    assert plan.victims == ("a",)
    assert plan.blocked == ("b",)
    assert plan.wait_for == frozenset()


def test_wait_for_flush_wakes_when_mark_cleared() -> None:
    manager = build([S("a", marks=(FLUSHING,)), S("b", marks=(FLUSHING,))], None)
    manager = PreemptionManager.from_snapshot(manager.snapshot())  # real wall clock
    timer = threading.Timer(0.05, manager.clear_reason, args=("a", FLUSHING))
    timer2 = threading.Timer(0.08, manager.unregister, args=("b",))
    timer.start()
    timer2.start()
    start = time.monotonic()
    pending = manager.wait_for_flush({"a", "b"}, deadline=time.time() + 120.0)
    assert pending == frozenset()
    # Woken by the clear and the unregister, not by the deadline (far away).
    assert time.monotonic() - start < 60.0


def test_wait_for_flush_returns_pending_at_deadline() -> None:
    manager = PreemptionManager()
    manager.register("a", node_id="n", priority=0, lease_id="l", reasons=[FLUSHING])
    manager.register("b", node_id="n", priority=0, lease_id="l")
    pending = manager.wait_for_flush({"a", "b", "gone"}, deadline=time.time() + 0.1)
    assert pending == {"a"}


# ----------------------------------------------------------------- registry


def test_marks_are_a_set_and_idempotent() -> None:
    manager = build([S("a")])
    assert manager.set_reason("a", PINNED) is True
    assert manager.set_reason("a", PINNED) is False
    assert manager.set_reason("a", FLUSHING) is True
    assert manager.clear_reason("a", FLUSHING) is True
    assert manager.clear_reason("a", FLUSHING) is False
    assert manager.reasons("a") == {PINNED}
    assert not manager.stage("a").preemptible
    manager.clear_reason("a", PINNED)
    assert manager.stage("a").preemptible


def test_work_accumulates_and_checkpoint_resets_it() -> None:
    clock = FakeClock(50.0)
    manager = build([S("a")], clock)
    manager.record_work("a", 10, 1.5)
    manager.record_work("a", 5, 0.5)
    rec = manager.stage("a")
    assert (rec.work_records, rec.work_seconds) == (15, 2.0)
    rec = manager.record_checkpoint("a", generation=3, size_bytes=100)
    assert rec.checkpoint == CheckpointSummary(generation=3, committed_at=50.0, size_bytes=100)
    assert (rec.work_records, rec.work_seconds) == (0, 0.0)
    rec = manager.record_checkpoint("a", generation=4, size_bytes=7, at=42.5)
    assert rec.checkpoint == CheckpointSummary(4, 42.5, 7)


@pytest.mark.parametrize("generation", [3, 2], ids=["equal", "older"])
def test_stale_checkpoint_rejected_and_state_kept(generation: int) -> None:
    manager = build([S("a")])
    manager.record_checkpoint("a", 3, 10)
    manager.record_work("a", 9)
    with pytest.raises(StaleCheckpointError) as info:
        manager.record_checkpoint("a", generation, 10)
    assert (info.value.generation, info.value.current) == (generation, 3)
    assert manager.stage("a").work_records == 9


def test_update_moves_stage_between_nodes() -> None:
    manager = build([S("a", node="n1"), S("b", node="n1")])
    rec = manager.update("a", node_id="n2", priority=7, lease_id="new", resources={"GPU": 2})
    assert (rec.node_id, rec.priority, rec.lease_id, dict(rec.resources)) == (
        "n2", 7, "new", {"GPU": 2.0})
    assert [r.stage_id for r in manager.stages_on_node("n1")] == ["b"]
    assert [r.stage_id for r in manager.stages_on_node("n2")] == ["a"]
    assert manager.stages_on_node("nowhere") == ()
    manager.unregister("b")
    assert manager.nodes() == ("n2",)
    assert len(manager) == 1 and "a" in manager and "b" not in manager
    assert manager.get("b") is None


UNKNOWN_CALLS = [
    pytest.param(lambda m: m.stage("x"), id="stage"),
    pytest.param(lambda m: m.unregister("x"), id="unregister"),
    pytest.param(lambda m: m.update("x", priority=1), id="update"),
    pytest.param(lambda m: m.set_reason("x", PINNED), id="set_reason"),
    pytest.param(lambda m: m.clear_reason("x", PINNED), id="clear_reason"),
    pytest.param(lambda m: m.reasons("x"), id="reasons"),
    pytest.param(lambda m: m.record_checkpoint("x", 1, 1), id="record_checkpoint"),
    pytest.param(lambda m: m.record_work("x", 1), id="record_work"),
]


@pytest.mark.parametrize("call", UNKNOWN_CALLS)
def test_unknown_stage_errors(call) -> None:  # type: ignore[no-untyped-def]
    manager = build([S("a")])
    before = manager.snapshot()
    with pytest.raises(UnknownStageError) as info:
        call(manager)
    assert isinstance(info.value, KeyError) and isinstance(info.value, SchedulerError)
    assert info.value.stage_id == "x"
    assert str(info.value) == "unknown stage 'x'"
    assert manager.snapshot() == before


INVALID_STAGE_CALLS = [
    pytest.param(lambda m: m.register("", node_id="n", priority=0, lease_id="l"), id="empty-id"),
    pytest.param(lambda m: m.register("b", node_id="", priority=0, lease_id="l"), id="empty-node"),
    pytest.param(lambda m: m.register("b", node_id="n", priority=1.5, lease_id="l"),
                 id="float-priority"),
    pytest.param(lambda m: m.register("b", node_id="n", priority=0, lease_id="l",
                                      resources={"CPU": -1}), id="negative-resource"),
    pytest.param(lambda m: m.register("b", node_id="n", priority=0, lease_id="l",
                                      resources={"CPU": math.nan}), id="nan-resource"),
    pytest.param(lambda m: m.record_work("a", -1), id="negative-records"),
    pytest.param(lambda m: m.record_work("a", 1, -0.5), id="negative-seconds"),
    pytest.param(lambda m: m.record_checkpoint("a", -1, 0), id="negative-generation"),
    pytest.param(lambda m: m.update("a", resources={"CPU": math.inf}), id="update-inf"),
]


@pytest.mark.parametrize("call", INVALID_STAGE_CALLS)
def test_invalid_stage_values_change_nothing(call) -> None:  # type: ignore[no-untyped-def]
    manager = build([S("a")])
    before = manager.snapshot()
    with pytest.raises(InvalidStageError):
        call(manager)
    assert manager.snapshot() == before


def test_register_twice_fails() -> None:
    manager = build([S("a")])
    with pytest.raises(StageExistsError) as info:
        manager.register("a", node_id="n9", priority=0, lease_id="l")
    assert isinstance(info.value, ValueError) and info.value.stage_id == "a"
    assert manager.stage("a").node_id == "n1"


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        (dict(), "resources"),
        (dict(resources={"CPU": 0}), "resources"),
        (dict(resources={"CPU": -1}), "resources"),
        (dict(count=-1), "count"),
        (dict(count=True), "count"),
        (dict(nodes="n1"), "nodes"),
        (dict(count=1, deadline=math.inf), "deadline"),
        (dict(count=1, deadline=math.nan), "deadline"),
    ],
)
def test_invalid_requests(kwargs: dict[str, object], field_name: str) -> None:
    deadline = kwargs.pop("deadline", 1.0)
    with pytest.raises(InvalidRequestError) as info:
        PreemptionRequest("r", deadline, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field_name


def test_request_is_normalised_and_round_trips() -> None:
    source = {"CPU": 2, "GPU": 0}
    request = PreemptionRequest("r", 5, resources=source, nodes={"n2", "n1"}, count=1)  # type: ignore[arg-type]
    source["CPU"] = 99
    assert request.resources == {"CPU": 2.0}
    assert request.nodes == frozenset({"n1", "n2"})
    assert PreemptionRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request


# ----------------------------------------------------------------- snapshot


def test_snapshot_round_trip_is_exact() -> None:
    clock = FakeClock(1_700_000_000.123456)
    manager = build([
        S("a", prio=-3, node="n1", res={"CPU": 0.1, "memory": 2.5e9}),
        S("b", prio=2, node="n2", res={}, marks=(PINNED, FLUSHING)),
        S("c", prio=2, node="n2", res={"GPU": 1}),
    ], clock)
    manager.record_checkpoint("a", 7, 123_456_789)
    manager.record_work("a", 3, 0.1)
    manager.record_work("a", 0, 0.2)  # 0.30000000000000004: must survive exactly
    manager.select_victims(req(count=1))
    snap = manager.snapshot()
    text = json.dumps(snap)
    restored = PreemptionManager.from_snapshot(json.loads(text), clock=clock)
    assert restored.snapshot() == snap
    assert json.dumps(restored.snapshot()) == text
    assert restored.stages() == manager.stages()
    assert restored.stage("a").work_seconds == 0.1 + 0.2
    assert restored.select_victims(req(count=2)).victims == manager.select_victims(
        req(count=2)).victims
    # Decision sequence numbers keep increasing after a reload.
    assert restored.decisions(1)[0].seq > manager.decisions()[-1].seq


@pytest.mark.parametrize(
    "mutate, path",
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(next_seq=0), "next_seq"),
        (lambda d: d.update(stages={}), "stages"),
        (lambda d: d["stages"][0]["reasons"].append("sleepy"), "stages[0]"),
        (lambda d: d["stages"][1].update(stage_id="a"), "stages[1]"),
        (lambda d: d["stages"][0].pop("priority"), "stages[0]"),
        (lambda d: d["stages"][0].update(work_records=-1), "stages[0]"),
        (lambda d: d["stages"][0].update(checkpoint={"generation": 1}), "stages[0]"),
    ],
)
def test_bad_snapshot_rejected(mutate, path: str) -> None:  # type: ignore[no-untyped-def]
    snap = json.loads(json.dumps(build([S("a"), S("b")]).snapshot()))
    mutate(snap)
    with pytest.raises(SnapshotError) as info:
        PreemptionManager.from_snapshot(snap)
    assert info.value.path == path


# ----------------------------------------------------------------- decision log


def test_decision_log_bounded_newest_first() -> None:
    clock = FakeClock(0.0)
    manager = PreemptionManager(clock=clock, max_decisions=3)
    manager.register("a", node_id="n", priority=0, lease_id="l")
    for i in range(5):
        clock.now = float(i)
        manager.select_victims(PreemptionRequest(f"r{i}", 100.0, count=1))
    manager.record_decision("preempt", "done", reason="r4", victims=["a"],
                            notes={"a": "checkpointed generation 2, stopped"})
    log = manager.decisions()
    assert [d.seq for d in log] == [6, 5, 4]
    assert [d.kind for d in log] == ["preempt", "select", "select"]
    assert log[0].notes == (("a", "checkpointed generation 2, stopped"),)
    assert log[1].plan is not None and log[1].plan.request.reason == "r4"
    assert log[1].victims == ("a",) and log[1].outcome == "ready" and log[1].at == 4.0
    assert [d.seq for d in manager.decisions(2)] == [6, 5]
    assert manager.decisions(0) == []
    json.dumps([d.to_dict() for d in log])


def test_max_decisions_validated() -> None:
    with pytest.raises(ValueError):
        PreemptionManager(max_decisions=0)


# ----------------------------------------------------------------- threads, surface


def test_concurrent_updates_and_selection() -> None:
    manager = build([S(f"s{i}") for i in range(50)])
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for j in range(200):
                sid = f"s{(k * 7 + j) % 50}"
                manager.record_work(sid, 1, 0.01)
                manager.set_reason(sid, FLUSHING)
                plan = manager.select_victims(req(count=3))
                assert len(set(plan.victims)) == len(plan.victims)
                manager.clear_reason(sid, FLUSHING)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.work_records for r in manager.stages()) == 4 * 200
    assert all(r.preemptible for r in manager.stages())


def test_public_surface() -> None:
    for name in scheduler.__all__:
        assert hasattr(scheduler, name), name
    assert issubclass(InvalidRequestError, SchedulerError)
    assert {r.value for r in NonPreemptibleReason} >= {
        "checkpoint_in_progress", "restoring", "pinned"}
    assert scheduler.WAITABLE_REASONS == {FLUSHING}


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
