"""The scheduler actor on one real Ray node: the Ray adapter, preemption, restarts, the CLI.

One module-scoped local Ray (``ray_local``) and one scheduler actor per test (the ``sched``
fixture of ``conftest.py``: each with its own name and store, so tests do not see each
other's stages). Stages are real ``stages.actors.actor.StageActor`` incarnations whose
checkpoint flush a test can hold open (``tests/schedstages.py``). Flush marks and the
observer are in ``test_scheduler_marks.py``, the registry's persistence in
``test_scheduler_registry.py``.
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

from blockstore import StaleLeaseError, open_store
from blockstore.lease import Lease
from scheduler import (
    PreemptionCheckpointObserver,
    PreemptionRequest,
    check_ray_version,
    ray_adapter,
)
from scheduler.hooks import SchedulerRegistrar
from stages import checkpointed

pytestmark = pytest.mark.ray

# Workers cannot import this test module: ship its classes by value (schedstages ships
# itself and tests/gates.py).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --------------------------------------------------------------------------- adapter


def test_ray_version_is_known_good(ray_local: None) -> None:
    version = check_ray_version(strict=True)
    assert version == ray.__version__
    assert ray_adapter.ray_version()[:2] in ray_adapter.KNOWN_GOOD_RAY
    nodes = ray_adapter.list_nodes()
    assert len(nodes) == 1 and nodes[0].alive and nodes[0].is_head
    assert nodes[0].total["CPU"] == 4
    assert ray_adapter.draining_nodes() == {}


def test_actor_view_tracks_death(ray_local: None) -> None:
    probe = FlushProbe.remote(PreemptionCheckpointObserver("x", "nobody"))
    ray.get(probe.counters.remote())
    aid = ray_adapter.actor_id_of(probe)
    assert ray_adapter.actor_view(aid).state == "ALIVE"
    ray.kill(probe)
    wait_for(lambda: ray_adapter.actor_view(aid).dead, what="actor dead")


# --------------------------------------------------------------------------- preemption


def test_flushing_stage_is_not_chosen_then_waited_for(sched: tuple[Any, str, str],
                                                      tmp_path: Path) -> None:
    handle, name, store = sched
    gate = tmp_path / "gate"
    busy = start_stage(handle, name, make_spec(name, store, "busy", gate=gate))
    idle = start_stage(handle, name, make_spec(name, store, "idle", priority=5))
    ray.get([busy.process_batch.remote([1, 2, 3]), idle.process_batch.remote([4])])
    ray.get(busy.checkpoint.remote())            # generation 1, gate open
    flushing = hold_flush(handle, busy, "busy", gate)   # generation 2 blocks in the flush

    # Another candidate exists (even with a higher priority): the flushing one is skipped.
    res = ray.get(handle.preempt.remote(
        PreemptionRequest(reason="need one", deadline=time.time() + 60, count=1)))
    assert res.victims == ("idle",)
    assert res.outcome_of("idle").action == "checkpointed"
    assert stage_status(handle, "busy")["status"] == "running"
    assert ray.get(handle.reasons.remote("busy")) == [CIP]

    # Now it is the only candidate: the preemption waits for the flush, then proceeds.
    pending = handle.preempt.remote(
        PreemptionRequest(reason="need another", deadline=time.time() + 60, count=1))
    wait_for(lambda: waiting_for_flush(handle, "need another", "busy"),
             what="the preemption waiting for busy's flush")
    assert not ray.wait([pending], timeout=0)[0], "preempted a stage in the middle of its flush"
    assert not ray.wait([flushing], timeout=0)[0]
    gates.release(gate)
    assert ray.get(flushing)["generation"] == 2
    res = ray.get(pending)
    assert res.victims == ("busy",)
    out = res.outcome_of("busy")
    assert out.action == "checkpointed" and out.generation == 3
    # The decision log shows the wait before the stop.
    kinds = [(d["kind"], d["outcome"]) for d in ray.get(handle.decisions.remote(50))]
    assert ("select", "wait") in kinds and ("preempt", "ready") in kinds
    # The stopped stage's newest checkpoint has everything it processed.
    with open_store(store) as st:
        from stages import CheckpointedStageState
        css = CheckpointedStageState.restore(st.open_reader("busy"))
        assert css.restored.generation == 3 and css.state["total"] == 6


def test_preempt_kills_when_no_time_to_checkpoint(sched: tuple[Any, str, str]) -> None:
    handle, name, store = sched
    stage = start_stage(handle, name, make_spec(name, store, "late"))
    ray.get(stage.process_batch.remote([1]))
    ray.get(handle.checkpoint.remote("late"))
    ray.get(stage.process_batch.remote([2]))
    res = ray.get(handle.preempt.remote(
        PreemptionRequest(reason="now", deadline=time.time() + 0.3, count=1)))
    assert res.victims == ("late",)
    out = res.outcome_of("late")
    assert out.action == "killed" and out.generation == 1
    assert stage_status(handle, "late")["status"] == "preempted"
    # Restored on request: from generation 1, so record 2 must be replayed.
    back = ray.get(handle.restore.remote("late"))
    assert back.generation == 1
    new = ray.get(handle.handle_of.remote("late"))
    assert ray.get(new.get_state.remote())["total"] == 1


# --------------------------------------------------------------------------- @checkpointed actors


class HeldAtStart:
    """A ``@checkpointed`` actor's class whose construction waits while ``hold`` exists (a
    relaunch gets the same argument): its incarnation is up but has not answered yet."""

    def __init__(self, hold: str) -> None:
        end = time.time() + 600.0                     # a safety net, as for gates
        while os.path.exists(hold) and time.time() < end:
            time.sleep(0.01)
        self.state = {"n": 0}

    def crash(self) -> None:
        os._exit(1)


def test_relaunch_killed_before_it_answered_stays_ended(sched: tuple[Any, str, str],
                                                       tmp_path: Path) -> None:
    """The scheduler re-creates a crashed ``@checkpointed`` actor; a caller finds the new
    incarnation by name and ``ray.kill``s it before it answered the placement (here: while
    its constructor waits). Ended on purpose, as a kill after the answer would be: forgotten,
    not re-created a third time by the retry of the failed placement."""
    handle, name, store = sched
    hold = tmp_path / "hold"
    cls = ray.remote(num_cpus=0.25, concurrency_groups=checkpointed.GROUPS)(
        checkpointed(store=store, key="held", lease_ttl=30.0,
                     registrar=SchedulerRegistrar(name))(HeldAtStart))
    first = cls.options(name="held-actor").remote(str(hold))
    ray.get(first.checkpoint.remote())
    wait_for(lambda: any(s["stage_id"] == "held" and s["has_spec"]
                         for s in status(handle)["stages"]), what="held registered")
    first_id = ray_adapter.actor_id_of(first)
    hold.touch()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(first.crash.remote())

    def relaunched() -> Any:
        try:
            h = ray.get_actor("held-actor")
        except ValueError:
            return None
        return h if ray_adapter.actor_id_of(h) != first_id else None
    second = wait_for(relaunched, timeout=60, what="the scheduler's relaunch, held at start")
    ray.kill(second)
    hold.unlink()                                     # a third incarnation would come up

    def forgotten() -> list[dict[str, Any]]:
        return [d for d in ray.get(handle.decisions.remote(50))
                if d["outcome"] == "not relaunched" and "held" in d["victims"]]
    note = dict(wait_for(forgotten, timeout=60, what="forgotten")[0]["notes"])["held"]
    assert "RAY_KILL" in note and ray_adapter.actor_id_of(second)[:12] in note
    kinds = {(d["kind"], d["outcome"]) for d in ray.get(handle.decisions.remote(50))
             if "held" in d["victims"]}
    assert ("restore", "failed") in kinds and ("restore", "done") not in kinds, kinds
    assert "held" not in {s["stage_id"] for s in status(handle)["stages"]}


def test_registration_arriving_after_the_actor_ended_is_ignored(sched: tuple[Any, str, str]
                                                               ) -> None:
    """A ``@checkpointed`` actor's registration is fire-and-forget (and Ray retries it across
    a restart of the scheduler): it may land after the actor was killed and forgotten. It
    must not bring the stage back; the same registration of a live actor is taken."""
    handle, name, store = sched
    cls = ray.remote(num_cpus=0.25, concurrency_groups=checkpointed.GROUPS)(
        checkpointed(store=store, key="late", lease_ttl=30.0,
                     registrar=SchedulerRegistrar(name))(HeldAtStart))
    h = cls.remote("/nonexistent/hold")
    reg = ray.get(h.registration.remote())            # what its __init__ sent
    wait_for(lambda: "late" in {s["stage_id"] for s in status(handle)["stages"]},
             what="late registered")
    ray.kill(h)

    def forgotten() -> bool:
        return any(d["outcome"] == "not relaunched" and "late" in d["victims"]
                   for d in ray.get(handle.decisions.remote(50)))
    wait_for(forgotten, what="the killed actor forgotten")
    answer = ray.get(handle.register.remote(reg))     # the registration, late
    assert answer["status"] == "ignored" and "RAY_KILL" in answer["reason"], answer
    assert "late" not in {s["stage_id"] for s in status(handle)["stages"]}
    assert any(d["kind"] == "register" and d["outcome"] == "ignored" and "late" in d["victims"]
               for d in ray.get(handle.decisions.remote(50)))


# --------------------------------------------------------------------------- restart


def test_registry_survives_scheduler_restart(sched: tuple[Any, str, str]) -> None:
    handle, name, store = sched
    stage = start_stage(handle, name, make_spec(name, store, "keep", priority=3))
    ray.get(handle.checkpoint.remote("keep"))
    ray.get(handle.pin.remote("keep"))
    before = ray.get(handle.snapshot.remote())
    logged = ray.get(handle.decisions.remote(None))
    assert any(d["kind"] == "register" and "keep" in d["victims"] for d in logged)
    pid = ray.get(handle.ping.remote())["pid"]
    ray.kill(handle, no_restart=False)
    # (ray.kill is asynchronous: the old process may still answer for a moment.)
    info = wait_for(lambda: (_ping(handle) or {}).get("pid") not in (None, pid)
                    and _ping(handle), timeout=60, what="scheduler restarted")
    assert info["reloaded_generation"] is not None
    after = ray.get(handle.snapshot.remote())
    assert after["stages"] == before["stages"]
    st = stage_status(handle, "keep")
    assert st["has_spec"] and st["status"] == "running" and st["priority"] == 3
    assert st["checkpoint"]["generation"] == 1
    # The decision log made before the restart is still there, below the new entries.
    seqs_after = {d["seq"]: d for d in ray.get(handle.decisions.remote(None))}
    for d in logged[:20]:
        assert seqs_after[d["seq"]]["kind"] == d["kind"]
        assert seqs_after[d["seq"]]["victims"] == d["victims"]
    # The reloaded actor handle still reaches the stage; its flush marks still work.
    assert ray.get(ray.get(handle.handle_of.remote("keep")).ping.remote()) == "keep"
    ray.get(stage.checkpoint.remote())
    wait_for(lambda: stage_status(handle, "keep")["checkpoint"]["generation"] == 2,
             what="generation 2 seen")
    assert ray.get(handle.reasons.remote("keep")) == ["pinned"]


def test_flush_across_scheduler_restart_stays_protected(sched: tuple[Any, str, str],
                                                        tmp_path: Path) -> None:
    """Flush marks are not persisted: a restarted scheduler asks the stages before it acts."""
    handle, name, store = sched
    gate = tmp_path / "gate"
    busy = start_stage(handle, name, make_spec(name, store, "busy", gate=gate))
    ray.get(busy.process_batch.remote([1, 2]))
    ray.get(busy.checkpoint.remote())            # generation 1, gate open
    flushing = hold_flush(handle, busy, "busy", gate)   # generation 2 blocks in the flush
    pid = ray.get(handle.ping.remote())["pid"]
    ray.kill(handle, no_restart=False)
    wait_for(lambda: (_ping(handle) or {}).get("pid") not in (None, pid),
             timeout=60, what="scheduler restarted")
    # The only candidate is mid-flush: the restarted scheduler must not stop it.
    res = ray.get(handle.preempt.remote(
        PreemptionRequest(reason="right after restart", deadline=time.time() + 3, count=1)))
    assert res.victims == (), f"preempted a stage mid-flush after a restart: {res}"
    wait_for(lambda: ray.get(handle.reasons.remote("busy")) == [CIP], what="mark reconciled")
    assert not ray.wait([flushing], timeout=0)[0], "the flush should still be held open"
    logged = ray.get(handle.decisions.remote(None))
    assert any(d["kind"] == "reload" and "busy" in d["victims"] for d in logged)
    gates.release(gate)
    assert ray.get(flushing)["generation"] == 2
    wait_for(lambda: ray.get(handle.reasons.remote("busy")) == [], what="mark cleared")


@ray.remote(num_cpus=0, max_concurrency=16)
class SilentStage:
    """A registered stage stand-in whose ``info()`` does not answer while ``gate`` exists
    (a stage on a loaded node), and says it is not flushing once it does."""

    def __init__(self, gate: str) -> None:
        self.gate = gate
        self.stopped = False

    def info(self) -> dict[str, Any]:
        end = time.time() + 600  # a safety net, as for gates (gates.DEFAULT_LIMIT_S)
        while os.path.exists(self.gate) and time.time() < end:
            time.sleep(0.01)
        return {"stage_id": "silent", "epoch": 1, "flushing": False, "stopped": self.stopped,
                "generation": None}

    def ping(self) -> str:
        return "silent"

    def shutdown(self, checkpoint: bool = False) -> dict[str, Any]:
        self.stopped = True
        return {"generation": 1, "duration_s": 0.01}


def test_stage_silent_after_a_restart_is_not_preempted(sched: tuple[Any, str, str],
                                                       tmp_path: Path) -> None:
    """A stage that does not answer the restarted scheduler's "are you flushing?" in time
    may be mid-flush: it is marked until it answers, and a preemption whose deadline comes
    before the marks are known stops nothing."""
    handle, _, _ = sched
    gate = tmp_path / "gate"
    silent = SilentStage.remote(str(gate))
    ray.get(handle.register.remote({
        "stage_id": "silent", "actor": silent, "node_id": ray_adapter.current_node_id(),
        "priority": 0, "lease_id": "silent-lease", "epoch": 1, "resources": {"num_cpus": 1}}))
    gates.hold(gate)                                  # from now on it does not answer
    pid = ray.get(handle.ping.remote())["pid"]
    ray.kill(handle, no_restart=False)
    wait_for(lambda: (_ping(handle) or {}).get("pid") not in (None, pid),
             timeout=60, what="scheduler restarted")
    # Whether the reconciliation is over by this deadline or not, nothing may be stopped.
    res = ray.get(handle.preempt.remote(
        PreemptionRequest(reason="right after restart", deadline=time.time() + 2, count=1)))
    assert res.victims == (), f"stopped a stage whose flush state is unknown: {res}"
    wait_for(lambda: any(d["kind"] == "reload" and "silent" in d["victims"]
                         for d in ray.get(handle.decisions.remote(None))),
             what="reconciliation marked the silent stage")
    assert ray.get(handle.reasons.remote("silent")) == [CIP]
    pending = handle.preempt.remote(
        PreemptionRequest(reason="later", deadline=time.time() + 60, count=1))
    wait_for(lambda: waiting_for_flush(handle, "later", "silent"),
             what="the preemption waiting for the silent stage")
    gates.release(gate)                               # it answers: not flushing
    res = ray.get(pending, timeout=60)
    assert res.victims == ("silent",) and res.outcome_of("silent").action == "checkpointed"


def _ping(handle: Any) -> dict[str, Any] | None:
    try:
        return ray.get(handle.ping.remote(), timeout=2)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


def test_zombie_incarnation_cannot_write(sched: tuple[Any, str, str]) -> None:
    handle, name, store = sched
    stage = start_stage(handle, name, make_spec(name, store, "z"))
    ray.get(stage.process_batch.remote([7]))
    ray.get(handle.checkpoint.remote("z"))
    with open_store(store) as st:
        old = st.lease_info("z")
        zombie = Lease(st, old, ttl=10.0, keepalive=False)   # the old epoch's handle
        res = ray.get(handle.restore.remote("z"))
        assert res.epoch > old.epoch
        with pytest.raises(StaleLeaseError):
            zombie.write_blocks({0: b"late write"})
    new = ray.get(handle.handle_of.remote("z"))
    assert ray.get(new.get_state.remote())["total"] == 7


def test_cli_status_and_decisions(sched: tuple[Any, str, str],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from blockpoint.cli import main

    handle, name, store = sched
    shown = start_stage(handle, name, make_spec(name, store, "shown", priority=7))  # noqa: F841 (keeps it alive)
    ray.get(handle.checkpoint.remote("shown"))
    ray.get(handle.pin.remote("shown"))
    ns = ray.get_runtime_context().namespace
    common = ["--name", name, "--namespace", ns]

    assert main(["scheduler", "status", *common]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("shown"))
    assert "running" in line and "pinned" in line and " 7 " in line
    assert "alive head" in out

    assert main(["scheduler", "status", "--json", *common]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stages"][0]["checkpoint"]["generation"] == 1

    assert main(["scheduler", "decisions", "--limit", "5", *common]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["SEQ", "TIME", "KIND", "OUTCOME"]
    assert "register" in out

    assert main(["scheduler", "decisions", "--name", "no-such", "--namespace", ns]) == 2
    assert "no scheduler 'no-such'" in capsys.readouterr().err
