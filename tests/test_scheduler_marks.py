"""The scheduler's flush marks on one real Ray node: the observer sets and clears them, and
they are cleared when a checkpoint fails, a flushing actor is killed or its lease expires.

One module-scoped local Ray (``ray_local``) and one scheduler actor per test (the ``sched``
fixture of ``conftest.py``); the stages, whose flush a test can hold open at a
:class:`~gates.Gate` or make fail with a :class:`~schedstages.Bomb`, are in
``tests/schedstages.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import gates
import pytest
import ray
import ray.cloudpickle
from polling import wait_for
from schedstages import (
    CIP,
    FlushProbe,
    hold_flush,
    make_spec,
    stage_status,
    start_stage,
    status,
    waiting_for_flush,
)

from blockstore import open_store
from scheduler import (
    PreemptionCheckpointObserver,
    PreemptionRequest,
    ray_adapter,
)
from stages.actors.actor import launch_stage

pytestmark = pytest.mark.ray

# Workers cannot import this test module: ship its classes by value (schedstages ships
# itself and tests/gates.py).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --------------------------------------------------------------------------- observer


def test_observer_sets_and_clears_mark(sched: tuple[Any, str, str]) -> None:
    handle, name, _ = sched
    ray.get(handle.register.remote({"stage_id": "p", "node_id": ray_adapter.current_node_id(),
                                    "priority": 0, "lease_id": "p-lease", "epoch": 1,
                                    "resources": {"num_cpus": 1}}))
    # The acknowledgement itself is under test, not its bound (a loaded machine may take
    # more than the default second for a round trip): a bound no answer misses.
    probe = FlushProbe.remote(PreemptionCheckpointObserver("p", name, ack_timeout=60.0))
    ray.get(probe.start.remote("p-lease"))
    # on_flush_start returned, so the mark is set already (no polling needed).
    assert ray.get(handle.reasons.remote("p")) == [CIP]
    ray.get(probe.complete.remote())
    wait_for(lambda: ray.get(handle.reasons.remote("p")) == [], what="mark cleared")
    assert ray.get(probe.counters.remote()) == (1, 0)
    ray.kill(probe)


def test_observer_never_raises_without_scheduler(ray_local: None) -> None:
    probe = FlushProbe.remote(PreemptionCheckpointObserver("q", "no-such-scheduler",
                                                           ack_timeout=0.2))
    ray.get(probe.start.remote("q-lease"))
    ray.get(probe.complete.remote())
    assert ray.get(probe.counters.remote()) == (0, 1)
    ray.kill(probe)


@ray.remote(num_cpus=0)
class SlowScheduler:
    """Stands in for a scheduler that is too busy to acknowledge in time."""

    def flush_started(self, stage_id: str, lease_id: str, seq: int) -> bool:
        time.sleep(3.0)
        return True

    def flush_completed(self, stage_id: str, lease_id: str, ok: bool, seq: int) -> bool:
        return True


def test_observer_proceeds_after_the_ack_bound(ray_local: None) -> None:
    slow = SlowScheduler.remote()
    probe = FlushProbe.remote(PreemptionCheckpointObserver("s", slow, ack_timeout=0.3))
    ray.get(probe.start.remote("s-lease"))
    ray.get(probe.complete.remote())
    # Not acknowledged within 0.3 s: counted as missed, and the flush went on (had the
    # observer waited for the 3 s answer, it would count as acknowledged).
    assert ray.get(probe.counters.remote()) == (0, 1)
    ray.kill(probe)
    ray.kill(slow)


def test_late_completion_does_not_clear_a_newer_flush(sched: tuple[Any, str, str]) -> None:
    handle, _, _ = sched
    ray.get(handle.register.remote({"stage_id": "s", "node_id": "n1", "priority": 0,
                                    "lease_id": "s-lease", "epoch": 1, "resources": {}}))
    assert ray.get(handle.flush_started.remote("s", "s-lease", 10))
    assert ray.get(handle.flush_started.remote("s", "s-lease", 20))
    # The completion of flush 10 arrives after flush 20 started: the mark stays.
    assert not ray.get(handle.flush_completed.remote("s", "s-lease", True, 10))
    assert ray.get(handle.reasons.remote("s")) == [CIP]
    assert ray.get(handle.flush_completed.remote("s", "s-lease", True, 20))
    # A start older than a completion already seen is ignored.
    assert not ray.get(handle.flush_started.remote("s", "s-lease", 15))
    assert ray.get(handle.reasons.remote("s")) == []


# --------------------------------------------------------------------------- flush marks


def test_mark_cleared_when_checkpoint_fails(sched: tuple[Any, str, str], tmp_path: Path) -> None:
    handle, name, store = sched
    bomb = tmp_path / "bomb"
    stage = start_stage(handle, name, make_spec(name, store, "bomb", bomb=bomb))
    ray.get(stage.checkpoint.remote())
    bomb.touch()
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        ray.get(stage.checkpoint.remote())
    assert "CheckpointFailed" in str(err.value) or "sabotaged" in str(err.value)
    wait_for(lambda: ray.get(handle.reasons.remote("bomb")) == [], what="mark cleared")
    decisions = ray.get(handle.decisions.remote(10))
    assert any(d["kind"] == "flush" and d["outcome"] == "failed" for d in decisions)


class HeldObserver:
    """Wraps the scheduler's observer: holds the flush open after its start was
    acknowledged while ``gate`` exists; at the completion, before the scheduler hears of it,
    records the step of the newest generation a fresh reader restores (is it durable?)."""

    def __init__(self, inner: PreemptionCheckpointObserver, gate: str, store: str, sid: str,
                 log: str) -> None:
        self.inner, self.gate, self.store, self.sid, self.log = inner, gate, store, sid, log

    def on_flush_start(self, lease_id: str) -> None:
        self.inner.on_flush_start(lease_id)
        with open(self.gate + ".entered", "w"):
            pass
        end = time.time() + 600  # a safety net, as for gates (gates.DEFAULT_LIMIT_S)
        while os.path.exists(self.gate) and time.time() < end:
            time.sleep(0.01)

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        from stages import CheckpointedStageState
        with open_store(self.store) as st:
            step = CheckpointedStageState.restore(st.open_reader(self.sid)).restored.step
        with open(self.log, "a") as f:
            f.write(f"{step}\n")
        self.inner.on_flush_complete(lease_id, ok)


def test_flush_mark_spans_a_background_flush(sched: tuple[Any, str, str],
                                             tmp_path: Path) -> None:
    """An async barrier checkpoint returns after the snapshot; the scheduler sees
    CHECKPOINT_IN_PROGRESS until the flush's header is durable, and waits to preempt."""
    import dataclasses

    handle, name, store = sched
    gate, log = tmp_path / "gate", tmp_path / "log"
    spec = dataclasses.replace(make_spec(name, store, "bg"), async_checkpoints=True)
    obs = HeldObserver(PreemptionCheckpointObserver("bg", name), str(gate), store, "bg",
                       str(log))
    stage = launch_stage(spec, observer=obs)
    ray.get(stage.process_batch.remote([1, 2, 3]))
    wait_for(lambda: "bg" in {s["stage_id"] for s in status(handle)["stages"]},
             what="bg registered")
    gates.hold(gate)
    ack = ray.get(stage.checkpoint.remote(step=1), timeout=60)   # the flush is held open
    assert ack["pending"] and ack["step"] == 1
    wait_for(lambda: ray.get(handle.reasons.remote("bg")) == [CIP], what="bg flushing")
    wait_for(lambda: gates.entered(gate), what="the background flush held at the gate")
    assert ray.get(stage.process_batch.remote([4]), timeout=60) == [10]  # data path free
    assert ray.get(stage.info.remote())["flushing"]
    durable = stage.flushed.remote(1)
    pending = handle.preempt.remote(
        PreemptionRequest(reason="need one", deadline=time.time() + 60, count=1))
    wait_for(lambda: waiting_for_flush(handle, "need one", "bg"),
             what="the preemption waiting for bg's background flush")
    ready, _ = ray.wait([pending, durable], num_returns=1, timeout=0)
    assert not ready, "preempted (or called durable) in the middle of a background flush"
    assert ray.get(handle.reasons.remote("bg")) == [CIP]
    gates.release(gate)
    assert ray.get(durable, timeout=60)["step"] == 1
    assert log.read_text().split() == ["1"]  # durable before the scheduler heard "complete"
    assert ray.get(pending, timeout=60).victims == ("bg",)


def test_mark_cleared_when_flushing_actor_is_killed(sched: tuple[Any, str, str],
                                                    tmp_path: Path) -> None:
    handle, name, store = sched
    ray.get(handle.set_auto_restore.remote(False))
    gate = tmp_path / "gate"
    stage = start_stage(handle, name, make_spec(name, store, "victim", gate=gate))
    hold_flush(handle, stage, "victim", gate)
    ray.kill(stage)
    # Nobody calls on_flush_complete: the scheduler must notice the death itself.
    wait_for(lambda: ray.get(handle.reasons.remote("victim")) == [], what="mark cleared")
    assert stage_status(handle, "victim")["status"] == "lost"
    gates.release(gate)
    # A lost stage holds nothing and is never a victim: a live one (higher priority) is.
    other = start_stage(handle, name, make_spec(name, store, "other", priority=9))
    res = ray.get(handle.preempt.remote(
        PreemptionRequest(reason="one please", deadline=time.time() + 60, count=1)))
    assert res.victims == ("other",)
    del other


def test_mark_cleared_when_lease_expires(sched: tuple[Any, str, str]) -> None:
    """A holder that stops renewing mid-flush (hung, partitioned) loses its mark too."""
    handle, _, store = sched
    with open_store(store) as st:
        lease = st.acquire("hung", ttl=60.0)      # no keepalive; held while the mark is seen
        ray.get(handle.register.remote({
            "stage_id": "hung", "node_id": ray_adapter.current_node_id(), "priority": 0,
            "lease_id": lease.lease_id, "epoch": lease.epoch, "resources": {}}))
        assert ray.get(handle.flush_started.remote("hung", lease.lease_id, 1))
        assert ray.get(handle.reasons.remote("hung")) == [CIP]
        lease.renew(ttl=0.001)                    # now it stops renewing: expires at once
        wait_for(lambda: ray.get(handle.reasons.remote("hung")) == [], what="mark cleared")
        assert not lease.info().is_held()
    notes = [d["notes"] for d in ray.get(handle.decisions.remote(50)) if d["kind"] == "flush"]
    assert notes and "expired" in notes[0][0][1]


def test_killed_stage_is_restored_automatically(sched: tuple[Any, str, str]) -> None:
    handle, name, store = sched
    stage = start_stage(handle, name, make_spec(name, store, "phoenix"))
    ray.get(stage.process_batch.remote([5, 6]))
    ray.get(handle.checkpoint.remote("phoenix"))
    epoch = stage_status(handle, "phoenix")["epoch"]
    ray.kill(stage)
    wait_for(lambda: stage_status(handle, "phoenix")["epoch"] > epoch
             and stage_status(handle, "phoenix")["status"] == "running", what="restored")
    new = ray.get(handle.handle_of.remote("phoenix"))
    assert ray.get(new.process_batch.remote([1])) == [12]


def test_stage_stopped_behind_the_schedulers_back_is_parked(sched: tuple[Any, str, str]
                                                            ) -> None:
    """A stage stopped by someone else (here the driver; in a full run, a ``shutdown`` sent
    by a scheduler killed mid-preemption) is parked, not preempted a second time."""
    handle, name, store = sched
    ray.get(handle.set_auto_restore.remote(False))
    quiet = start_stage(handle, name, make_spec(name, store, "quiet"))
    other = start_stage(handle, name, make_spec(name, store, "other", priority=9))
    ray.get(quiet.process_batch.remote([4, 5]))
    assert ray.get(quiet.shutdown.remote(checkpoint=True))["generation"] == 1
    assert ray.get(quiet.info.remote())["stopped"]        # alive, lease released
    wait_for(lambda: stage_status(handle, "quiet")["status"] == "stopped",
             what="the stopped stage parked")
    parked = [d for d in ray.get(handle.decisions.remote(20))
              if d["kind"] == "stopped" and d["victims"] == ["quiet"]]
    assert parked and parked[0]["outcome"] == "parked"
    # It is no candidate (it would be the first victim by priority): the live one is taken.
    res = ray.get(handle.preempt.remote(
        PreemptionRequest(reason="one please", deadline=time.time() + 60, count=1)))
    assert res.victims == ("other",) and res.outcome_of("other").action == "checkpointed"
    # Restored on request, from the checkpoint its own shutdown wrote.
    back = ray.get(handle.restore.remote("quiet"))
    assert back.generation == 1
    new = ray.get(handle.handle_of.remote("quiet"))
    assert ray.get(new.get_state.remote())["total"] == 9
    del other


# --------------------------------------------------------------------------- latency, CLI


def test_flush_start_is_acknowledged_every_time(sched: tuple[Any, str, str]) -> None:
    """200 observer round trips from a stage process: each one acknowledged (not timed out).

    Prints the median and p99 round trip (the figure quoted in the docs); speed itself is
    not asserted.
    """
    handle, name, _ = sched
    ray.get(handle.register.remote({"stage_id": "probe", "node_id": "n", "priority": 0,
                                    "lease_id": "probe-lease", "epoch": 1, "resources": {}}))
    # A generous bound: what is checked is that every start is acknowledged, not how fast
    # (a loaded machine can stall one round trip past the default 1 s).
    probe = FlushProbe.remote(PreemptionCheckpointObserver("probe", name, ack_timeout=30.0))
    times = sorted(ray.get(probe.round_trips.remote(200)))
    assert ray.get(probe.counters.remote()) == (200, 0)
    print(f"\nflush-start ack round trip: median {times[100] * 1e3:.2f} ms, "
          f"p99 {times[197] * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms")
    wait_for(lambda: ray.get(handle.reasons.remote("probe")) == [], what="last mark cleared")
    ray.kill(probe)
