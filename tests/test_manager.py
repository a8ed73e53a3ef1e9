"""Unit tests of :class:`scheduler.PreemptionManager`'s registry (no Ray): marks, work and
checkpoints, refused calls and values, requests, the snapshot, the decision log, threads and
the public surface. Selection is in ``test_manager_selection.py``, the property and
state-machine tests in ``test_manager_properties.py``.
"""

from __future__ import annotations

import json
import math
import threading

import pytest
from stagetables import FLUSHING, PINNED, FakeClock, S, build, req

import scheduler
from scheduler import (
    CheckpointSummary,
    InvalidRequestError,
    InvalidStageError,
    NonPreemptibleReason,
    PreemptionManager,
    PreemptionRequest,
    SchedulerError,
    SnapshotError,
    StageExistsError,
    StaleCheckpointError,
    UnknownStageError,
)

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
