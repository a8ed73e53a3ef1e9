"""Selection by :class:`scheduler.PreemptionManager` (no Ray), table-driven: each case is a
small registry, a request, and the exact plan expected; then deadlines and waiting for a
flush. The stage tables are built by ``tests/stagetables.py``.
"""

from __future__ import annotations

import threading
import time

import pytest
from stagetables import FLUSHING, PINNED, RESTORING, FakeClock, S, build, req

from scheduler import (
    Outcome,
    PreemptionManager,
    Verdict,
)

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
