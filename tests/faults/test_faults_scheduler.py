"""Fault matrix, scheduler rows on a real 3-node cluster (``docs/RELIABILITY.md``).

=================================  ==========================================================
row                                outcome
=================================  ==========================================================
scheduler killed mid-preemption    the caller sees the failure (acting methods are never
                                   retried); the flushing stage it was waiting for is not
                                   stopped, its flush commits, its mark is cleared; a new
                                   preemption then works
drain deadline shorter than flush  the flush is waited for until the drain's stop deadline
                                   (its deadline minus the time a restore needs); then the
                                   stage is stopped and restored on another node from its
                                   last committed generation, complete, before the deadline
node removed during a restore      the restore fails (or lands elsewhere); the watcher retries
                                   until the stage runs on a live node, with a higher epoch
                                   and the state of its last checkpoint
=================================  ==========================================================

One module-scoped cluster (conftest ``ray_cluster``: head 1 CPU + two workers of 2 CPUs) and
one scheduler pinned to the head; tests run in file order and replace what they remove.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import gates
from clusters import scheduler_on_head
from blockstore import open_store
from gates import Gate
from polling import wait_for
from scheduler import PreemptionRequest, SchedulerRegistrar, ray_adapter
from stages import CheckpointedStageState
from stages.actors.actor import StageSpec

pytestmark = [pytest.mark.multinode, pytest.mark.ray]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(gates)

WORKER_ARGS = {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024}
CIP = "checkpoint_in_progress"


class Held:
    """A stage whose state may hold a Gate (built in the worker from a path)."""

    def __init__(self, gate: str | None = None) -> None:
        self.gate = gate

    def initial_state(self) -> dict[str, Any]:
        return {"total": 0, "gate": Gate(self.gate) if self.gate else None}

    def process(self, state: dict[str, Any], record: int) -> list[int]:
        state["total"] += record
        return [state["total"]]


def held(gate: Path | None) -> Any:
    def make() -> Held:
        return Held(str(gate) if gate else None)
    return make


@pytest.fixture(scope="module")
def env(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with scheduler_on_head(ray_cluster, tmp_path_factory.mktemp("faults-sched"), "fsched") as e:
        yield e

def _spec(env: dict[str, Any], sid: str, gate: Path | None = None) -> StageSpec:
    return StageSpec(stage_id=sid, factory=held(gate), store_url=env["store"],
                     resources={"num_cpus": 0.2}, registrar=SchedulerRegistrar(env["name"]))


def _stage(env: dict[str, Any], sid: str) -> dict[str, Any]:
    return ray.get(env["sched"].stage.remote(sid))


def _handle(env: dict[str, Any], sid: str) -> Any:
    return ray.get(env["sched"].handle_of.remote(sid))


def _workers(env: dict[str, Any]) -> list[str]:
    return [n.node_id for n in ray_adapter.list_nodes() if not n.is_head and not n.draining]


def _node(env: dict[str, Any], node_id: str) -> Any:
    return next(n for n in env["cluster"].worker_nodes if n.node_id == node_id)


def _ping(handle: Any) -> dict[str, Any] | None:
    try:
        return ray.get(handle.ping.remote(), timeout=2)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


def _waiting_for_flush(env: dict[str, Any], reason: str, sid: str) -> bool:
    """The scheduler's handshake: it logged a plan for ``reason`` that waits for ``sid``."""
    return any(d["kind"] == "select" and d["reason"] == reason and d["outcome"] == "wait"
               and sid in ((d["plan"] or {}).get("wait_for") or ())
               for d in ray.get(env["sched"].decisions.remote(50)))


def _acted_on(env: dict[str, Any], reason: str) -> list[dict[str, Any]]:
    return [d for d in ray.get(env["sched"].decisions.remote(50))
            if d["kind"] == "preempt" and d["reason"] == reason]


def test_scheduler_killed_mid_preemption(env: dict[str, Any], tmp_path: Path) -> None:
    sched = env["sched"]
    gate = tmp_path / "gate"
    ray.get(sched.launch.remote(_spec(env, "busy", gate), _workers(env)[0]))
    busy = _handle(env, "busy")
    ray.get(busy.process_batch.remote([5]))
    ray.get(busy.checkpoint.remote())                       # generation 1
    # Its flush-complete report is fire-and-forget: wait until it landed, or its mark would
    # pass for the mark of generation 2 below (and the preemption would not wait at all).
    wait_for(lambda: ray.get(sched.reasons.remote("busy")) == [], what="gen 1 mark cleared")
    gates.hold(gate)
    flushing = busy.checkpoint.remote()                      # generation 2, held open
    wait_for(lambda: gates.entered(gate), what="generation 2 held at the gate")
    wait_for(lambda: ray.get(sched.reasons.remote("busy")) == [CIP], what="busy flushing")
    reason = "kill me mid-way"
    pending = sched.preempt.remote(
        PreemptionRequest(reason=reason, deadline=time.time() + 60, count=1))
    wait_for(lambda: _waiting_for_flush(env, reason, "busy"),
             what="the preemption waiting for busy's flush")
    assert not _acted_on(env, reason) and not ray.wait([pending], timeout=0)[0], \
        "it must wait for the flush"
    pid = ray.get(sched.ping.remote())["pid"]
    ray.kill(sched, no_restart=False)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(pending, timeout=60)                         # never retried: it acts
    wait_for(lambda: (_ping(sched) or {}).get("pid") not in (None, pid), timeout=60,
             what="scheduler restarted")
    # The stage it was waiting for was not stopped; the restarted scheduler knows it flushes.
    assert ray.get(busy.ping.remote()) == "busy"
    assert ray.get(busy.info.remote())["stopped"] is False
    wait_for(lambda: ray.get(sched.reasons.remote("busy")) == [CIP], what="mark reconciled")
    gates.release(gate)
    assert ray.get(flushing, timeout=60)["generation"] == 2
    wait_for(lambda: ray.get(sched.reasons.remote("busy")) == [], what="mark cleared")
    res = ray.get(sched.preempt.remote(
        PreemptionRequest(reason="again", deadline=time.time() + 60, count=1)))
    assert res.victims == ("busy",) and res.outcome_of("busy").action == "checkpointed", res
    with open_store(env["store"]) as st:
        back = CheckpointedStageState.restore(st.open_reader("busy"))
    assert back.restored.generation == 3 and back.state["total"] == 5


def test_drain_deadline_shorter_than_a_flush(env: dict[str, Any], tmp_path: Path) -> None:
    sched = env["sched"]
    gate = tmp_path / "gate"
    node = _workers(env)[0]
    ray.get(sched.launch.remote(_spec(env, "slow", gate), node))
    slow = _handle(env, "slow")
    ray.get(slow.process_batch.remote([7]))
    ray.get(slow.checkpoint.remote())                        # generation 1: total 7
    ray.get(slow.process_batch.remote([100]))                # never committed
    gate.touch()
    slow.checkpoint.remote()                                 # generation 2, held open
    wait_for(lambda: ray.get(sched.reasons.remote("slow")) == [CIP], what="slow flushing")
    t0 = time.time()
    deadline = t0 + 4.0
    result = ray.get(sched.drain_node.remote(node, deadline, ray_drain=False,
                                             reason="deadline shorter than the flush"))
    gate.unlink()
    # Waited for until the stop deadline (deadline - restore allowance, here ~1 s), then
    # stopped mid-flush and moved...
    assert [m.stage_id for m in result.moved] == ["slow"] and "slow" not in result.checkpointed
    assert result.finished_at - t0 >= 0.9, "stopped before the stop deadline"
    moved = result.moved[0]
    assert moved.node_id != node and moved.generation == 1
    back = ray.get(_handle(env, "slow").get_state.remote())
    assert back["total"] == 7                                # ...and nothing committed lost
    kills = [d for d in ray.get(sched.decisions.remote(30)) if d["kind"] == "move"]
    assert kills and kills[0]["outcome"] == "done"


def test_node_removed_during_a_restore(env: dict[str, Any]) -> None:
    sched = env["sched"]
    home, target = _workers(env)[:2]
    ray.get(sched.launch.remote(_spec(env, "wander"), home))
    h = _handle(env, "wander")
    ray.get(h.process_batch.remote([3, 4]))
    ray.get(h.checkpoint.remote())
    before = _stage(env, "wander")["epoch"]
    # The only node the restore may use is `target`; remove it while the restore launches.
    pending = sched.restore.remote("wander", [home, env["head"]], "move it")
    wait_for(lambda: _stage(env, "wander")["status"] == "restoring"
             or ray.wait([pending], timeout=0)[0], what="the restore under way")
    env["cluster"].remove_node(_node(env, target), allow_graceful=False)
    env["cluster"].add_node(**WORKER_ARGS)
    try:
        ray.get(pending, timeout=120)
    except ray.exceptions.RayTaskError:
        pass                                                 # failed: retried by the watcher

    def running_on_a_live_node() -> dict[str, Any] | None:
        st = _stage(env, "wander")
        alive = {n.node_id for n in ray_adapter.list_nodes()}
        if st["status"] == "running" and st["node_id"] in alive and st["epoch"] > before:
            try:
                ray.get(_handle(env, "wander").ping.remote(), timeout=5)
                return st
            except ray.exceptions.RayError:
                return None
        return None

    st = wait_for(running_on_a_live_node, timeout=90, what="restored on a live node")
    assert st["node_id"] != target
    assert ray.get(_handle(env, "wander").get_state.remote())["total"] == 7
