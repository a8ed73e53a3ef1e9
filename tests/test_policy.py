"""Checkpoint policies: triggers, one outstanding request, manual/cancel, counters, retention.

Pure Python with an injected clock; the checkpoints themselves are real ones on a real store.
"""

from __future__ import annotations

import pytest

from blockstore import open_store
from stages.checkpoint.policy import (
    REASON_INTERVAL,
    REASON_MANUAL,
    REASON_RECORDS,
    CheckpointManager,
    CheckpointPolicy,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_policy_validation_and_due() -> None:
    with pytest.raises(ValueError):
        CheckpointPolicy(every_records=0)
    with pytest.raises(ValueError):
        CheckpointPolicy(every_seconds=0)
    with pytest.raises(ValueError):
        CheckpointPolicy(retention=0)
    p = CheckpointPolicy(every_records=10, every_seconds=5.0)
    assert p.due(9, 4.9) is None
    assert p.due(10, 0.0) == REASON_RECORDS
    assert p.due(0, 5.0) == REASON_INTERVAL
    assert p.due(10, 5.0) == REASON_RECORDS
    assert CheckpointPolicy().due(10**9, 10**9) is None  # manual only


def test_every_n_records_one_outstanding() -> None:
    m = CheckpointManager(CheckpointPolicy(every_records=100), clock=Clock())
    assert m.record("s", 99) is None
    req = m.record("s", 1)
    assert req is not None and req.reason == REASON_RECORDS and req.stage_id == "s"
    assert m.record("s", 500) is None  # still outstanding: no second request
    assert m.pending("s") == req
    assert m.begin("s").request_id == req.request_id
    m.complete("s", {"generation": 3, "step": 7})
    c = m.counters("s")
    assert (c.requested, c.completed, c.records_since, c.last_generation, c.last_step) == \
        (1, 1, 0, 3, 7)
    assert m.pending("s") is None
    assert m.record("s", 100) is not None


def test_interval_trigger_uses_injected_clock() -> None:
    clock = Clock()
    m = CheckpointManager(CheckpointPolicy(every_seconds=30.0), clock=clock)
    assert m.poll("s") is None
    clock.t += 29.9
    assert m.poll("s") is None
    clock.t += 0.1
    req = m.poll("s")
    assert req is not None and req.reason == REASON_INTERVAL
    m.begin("s")
    clock.t += 100
    m.complete("s")
    assert m.poll("s") is None  # the interval restarts at completion
    clock.t += 30
    assert m.poll("s") is not None


def test_manual_request_coalesces_and_cancel() -> None:
    m = CheckpointManager(CheckpointPolicy(every_records=10), clock=Clock())
    req = m.request("s", note="before resize")
    assert req.reason == REASON_MANUAL and req.note == "before resize"
    assert m.request("s") == req  # one outstanding per stage
    assert m.record("s", 50) is None
    assert m.counters("s").coalesced == 1
    assert m.cancel("s") == req
    assert m.cancel("s") is None
    assert m.pending("s") is None
    assert m.counters("s").cancelled == 1
    other = m.request("t")  # stages are independent
    assert other.stage_id == "t" and m.pending("s") is None
    m.begin("t")
    assert m.cancel("t") is None  # a running checkpoint is never abandoned
    with pytest.raises(RuntimeError):
        m.begin("t")
    m.fail("t", OSError("disk full"))
    c = m.counters("t")
    assert (c.failed, c.completed, c.last_error) == (1, 0, "disk full")


def test_manual_request_while_one_runs_is_queued_behind_it() -> None:
    """A request made while a checkpoint runs is not folded into it (that one began before
    and does not cover what came since): it is outstanding once the running one ends - by
    completing, failing or a rollback - and a second request meanwhile joins it."""
    for end in ("complete", "fail", "restart"):
        m = CheckpointManager(CheckpointPolicy(every_records=1000), clock=Clock())
        m.record("s", 5)
        running = m.begin("s")
        later = m.request("s", note="before the risky part")
        assert later != running and later.reason == REASON_MANUAL and not later.running
        assert m.pending("s") == running and m.queued("s") == later
        assert m.request("s") == later and m.counters("s").coalesced == 1
        with pytest.raises(RuntimeError):
            m.begin("s")  # the running one is still the one running
        if end == "complete":
            m.complete("s")
        elif end == "fail":
            m.fail("s", OSError("disk full"))
        else:
            m.restart("s")
        assert m.pending("s") == later and m.queued("s") is None, end
        assert m.begin("s").request_id == later.request_id
        m.complete("s")
        assert m.pending("s") is None and m.counters("s").completed == 1 + (end == "complete")
    m = CheckpointManager(CheckpointPolicy(every_records=1000), clock=Clock())
    m.begin("s")
    queued = m.request("s")
    assert m.cancel("s") == queued and m.queued("s") is None  # not begun: cancellable
    assert m.cancel("s") is None  # the running one never is
    m.complete("s")
    assert m.pending("s") is None and m.counters("s").cancelled == 1


def test_failure_keeps_trigger_armed() -> None:
    m = CheckpointManager(CheckpointPolicy(every_records=10), clock=Clock())
    assert m.record("s", 10) is not None
    m.begin("s")
    m.fail("s", "boom")
    assert m.counters("s").records_since == 10
    assert m.poll("s") is not None  # still due: fires again


def test_per_stage_policy_and_state_options() -> None:
    m = CheckpointManager(CheckpointPolicy(every_records=10, retention=3),
                          policies={"big": CheckpointPolicy(every_records=1000, retention=1)})
    assert m.state_options("x") == {"retention": 3}
    assert m.state_options("big") == {"retention": 1}
    assert m.record("big", 999) is None and m.record("x", 10) is not None
    m.set_policy("x", CheckpointPolicy(every_records=5))
    assert m.policy_for("x").every_records == 5
    assert m.stages() == ["big", "x"]


def test_checkpoints_on_a_real_state_and_retention_bounded(store_dir: str) -> None:
    from stages import CheckpointedStageState

    store = open_store(store_dir, block_size=4096)
    m = CheckpointManager(CheckpointPolicy(every_records=5, retention=2), store=store,
                          clock=Clock())
    assert m.load_latest("s") is None and m.list_checkpoints("s") == []
    lease = store.acquire("s", ttl=60)
    css = CheckpointedStageState({"n": 0, "pad": "x" * 9000}, lease, **m.state_options("s"))
    assert m.checkpoint("s", css) is None  # nothing due yet
    sizes = []
    for i in range(1, 1001):
        css.state["n"] = i
        if m.record("s", 1) is not None:
            info = m.checkpoint("s", css, step=i, meta={"source_position": i})
            assert info is not None and info.step == i
        if i % 100 == 0:
            sizes.append(store.stats().blocks)
    c = m.counters("s")
    assert (c.completed, c.failed, c.last_step) == (200, 0, 1000)
    assert len(set(sizes[1:])) == 1, sizes  # storage does not grow over 1,000 checkpoints
    assert m.checkpoint("s", css, step=1001, force=True).step == 1001
    latest = m.load_latest("s")
    assert latest is not None and latest.state["n"] == 1000
    gens = m.list_checkpoints("s")
    assert [g.step for g in gens] == [1001, 1000]  # retention 2, newest first


def test_asynchronous_checkpoints_by_policy(store_dir: str) -> None:
    """The policy's request stays running until the background flush ends, then completes;
    a background failure is counted, keeps the trigger armed and surfaces (fail-closed)."""
    from blockstore.faults import FaultyStore
    from stages import CheckpointedStageState, CheckpointFailed

    store = FaultyStore(open_store(store_dir, block_size=4096))
    m = CheckpointManager(CheckpointPolicy(every_records=3, retention=2), store=store,
                          clock=Clock())
    css = CheckpointedStageState({"n": 0}, store.acquire("s", ttl=60), **m.state_options("s"))
    assert m.checkpoint_async("s", css) is None            # nothing due yet
    committed = []
    for i in range(1, 31):
        css.state["n"] = i
        if m.record("s", 1) is not None:
            pending = m.checkpoint_async("s", css, step=i)
            assert pending is not None
            committed.append(pending.wait().step)
    assert committed == list(range(3, 31, 3))
    c = m.counters("s")
    assert (c.completed, c.failed, c.last_step) == (10, 0, 30)
    store.crash_after(store.block_writes)                  # the next write fails
    pending = m.checkpoint_async("s", css, step=31, force=True)
    with pytest.raises(CheckpointFailed):
        pending.wait()
    c = m.counters("s")
    assert (c.completed, c.failed) == (10, 1) and c.last_error
    store.crash_after(None)
    assert m.checkpoint_async("s", css, step=32, force=True).wait().step == 32
    assert CheckpointedStageState.restore(store.open_reader("s")).state["n"] == 30
