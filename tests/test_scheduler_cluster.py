"""The scheduler actor on a real 3-node Ray cluster: node loss, drains, the Ray adapter.

One module-scoped ``ray_cluster`` (head 1 CPU + two workers of 2 CPUs, fast health checks)
and one scheduler actor pinned to the head node (which these tests never remove or drain).
Tests run in file order and change the cluster: the node-loss test removes a worker and adds
a replacement; the drain tests leave drained nodes behind (Ray never un-drains a node), so
each later test uses a node no earlier test drained.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import ray.cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from clusters import scheduler_on_head
from blockstore import StaleLeaseError, open_store
from blockstore.lease import Lease
from scheduler import DrainRejectedError, get_or_create
from scheduler import ray_adapter
from scheduler.hooks import SchedulerRegistrar
from stages.actors.actor import StageSpec
from polling import wait_for

pytestmark = [pytest.mark.multinode, pytest.mark.ray]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

WORKER_ARGS = {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024}


class Summer:
    """A stateful stage: running total and count of the records it has seen."""

    def initial_state(self) -> dict[str, int]:
        return {"total": 0, "n": 0}

    def process(self, state: dict[str, int], record: int) -> list[int]:
        state["total"] += record
        state["n"] += 1
        return [state["total"]]


class _SlowToPickle:
    """Part of a state that takes a second to pickle (three while the ``slower`` file
    exists): a checkpoint that takes that long.

    It pickles as an empty dict: the checkpoint codec is the standard pickle, and workers
    cannot import this module (Ray has the class by value only). A restored state is fast.
    """

    def __init__(self, slower: str) -> None:
        self.slower = slower

    def __reduce__(self) -> tuple[Any, ...]:
        # The checkpoint's cost, not a wait for something.
        time.sleep(3.0 if os.path.exists(self.slower) else 1.0)
        return (dict, ())


class SlowSummer(Summer):
    """A :class:`Summer` whose checkpoint takes about a second (three while ``slower``
    exists)."""

    def __init__(self, slower: str) -> None:
        self.slower = slower

    def initial_state(self) -> dict[str, Any]:
        return {"total": 0, "n": 0, "slow": _SlowToPickle(self.slower)}


@ray.remote(num_cpus=0.1)
class _Placeholder:
    """Unmanaged work that keeps a node busy (Ray shuts an idle drained node down)."""

    def ready(self) -> bool:
        return True


@pytest.fixture(scope="module")
def env(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with scheduler_on_head(ray_cluster, tmp_path_factory.mktemp("sched-cluster"), "sched") as e:
        yield e

def spec(env: dict[str, Any], sid: str, cpus: float = 0.2) -> StageSpec:
    return StageSpec(stage_id=sid, factory=Summer, store_url=env["store"],
                     resources={"num_cpus": cpus},
                     registrar=SchedulerRegistrar(env["name"]))


def stage(env: dict[str, Any], sid: str) -> dict[str, Any]:
    return ray.get(env["sched"].stage.remote(sid))


def handle_of(env: dict[str, Any], sid: str) -> Any:
    return ray.get(env["sched"].handle_of.remote(sid))




def worker_nodes(env: dict[str, Any]) -> list[ray_adapter.NodeView]:
    return [n for n in ray_adapter.list_nodes() if not n.is_head and not n.draining]


def node_handle(env: dict[str, Any], node_id: str) -> Any:
    for n in env["cluster"].worker_nodes:
        if n.node_id == node_id:
            return n
    raise LookupError(node_id)


# --------------------------------------------------------------------------- node loss


def test_node_loss_restores_stage_elsewhere_and_fences_zombie(env: dict[str, Any]) -> None:
    sched = env["sched"]
    victim_node = worker_nodes(env)[0].node_id
    placed = ray.get(sched.launch.remote(spec(env, "loss"), victim_node))
    assert placed.node_id == victim_node
    old = handle_of(env, "loss")
    assert ray.get(old.process_batch.remote([1, 2, 3])) == [1, 3, 6]
    ck = ray.get(sched.checkpoint.remote("loss"))
    ray.get(old.process_batch.remote([100]))          # not checkpointed: replayed later

    with open_store(env["store"]) as st:
        before = st.lease_info("loss")
        # The old incarnation's lease handle, kept alive past the takeover (a zombie).
        zombie = Lease(st, before, ttl=30.0, keepalive=False)

        t_lost = time.time()
        env["cluster"].remove_node(node_handle(env, victim_node), allow_graceful=False)

        def answering() -> bool | None:
            # Polled with an idempotent probe: a timed-out call is not cancelled, and a
            # process_batch that timed out or lost its reply would still apply.
            s = stage(env, "loss")
            if s["status"] != "running" or s["epoch"] <= before.epoch:
                return None
            try:
                return ray.get(handle_of(env, "loss").ping.remote(), timeout=5) == "loss"
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.GetTimeoutError):
                return None

        wait_for(answering, timeout=90, what="stage answering on another node")
        out = ray.get(handle_of(env, "loss").process_batch.remote([10]), timeout=60)
        recovery = time.time() - t_lost
        log = ray.get(sched.decisions.remote(20))
        seen = min(d["at"] for d in log if d["kind"] == "lost") - t_lost
        done = max(d["at"] for d in log if d["kind"] == "restore") - t_lost
        print(f"\nnode loss -> loss seen {seen:.2f} s, restored {done:.2f} s, "
              f"processing again {recovery:.2f} s")

        now = stage(env, "loss")
        assert now["node_id"] != victim_node
        assert now["node_id"] in {n.node_id for n in ray_adapter.list_nodes()}
        assert now["epoch"] > before.epoch
        # Restored from generation 1 (total 6): the uncheckpointed record 100 is gone.
        assert out == [16]
        assert now["checkpoint"]["generation"] >= ck["generation"]
        # The zombie's late write is refused by the store, and the new state is intact.
        with pytest.raises(StaleLeaseError):
            zombie.write_blocks({0: b"late write from the lost node"})
        assert st.lease_info("loss").epoch == now["epoch"]
    assert ray.get(handle_of(env, "loss").get_state.remote())["total"] == 16
    kinds = [(d["kind"], d["outcome"]) for d in ray.get(sched.decisions.remote(20))]
    assert ("lost", "detected") in kinds and ("restore", "done") in kinds

    # Give later tests their worker back.
    extra = env["cluster"].add_node(**WORKER_ARGS)
    wait_for(lambda: extra.node_id in {n.node_id for n in ray_adapter.list_nodes()},
             what="replacement node up")


# --------------------------------------------------------------------------- drains


def test_drain_with_deadline_checkpoints_and_moves_stages(env: dict[str, Any]) -> None:
    sched = env["sched"]
    node = worker_nodes(env)[0].node_id
    for sid in ("d1", "d2"):
        ray.get(sched.launch.remote(spec(env, sid), node))
        ray.get(handle_of(env, sid).process_batch.remote([1, 2]))
    # A busy node cannot be drained for idle termination (the adapter surfaces Ray's no).
    with pytest.raises(DrainRejectedError):
        ray_adapter.drain_node(node, deadline=None, reason="idle_termination")

    # Unmanaged work on the node until Ray's drain table is read: once the stages have
    # moved the node is idle, and Ray may shut it down and forget it.
    busy = _Placeholder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False)).remote()
    assert ray.get(busy.ready.remote(), timeout=60)
    deadline = time.time() + 12.0
    assert ray.get(sched.drain_node.remote(node, deadline, True, "maintenance", False)) is None
    # Ray's own drain table shows the node with our deadline (ms precision).
    assert abs(ray_adapter.draining_nodes()[node] - deadline) < 0.01
    ray.kill(busy)
    result = wait_for(lambda: ray.get(sched.drain_result.remote(node)), what="drain result")
    assert result.ray_accepted is True
    # (Stages of earlier tests restored onto this node move too.)
    assert {"d1", "d2"} <= {m.stage_id for m in result.moved}
    assert {"d1", "d2"} <= set(result.checkpointed) and not result.failed
    # (Not asserted: that the moves *ended* before the deadline. They start at deadline -
    # budget, the budget estimated from checkpoint and restore times seen so far; a loaded
    # machine's restore can take longer than any seen before (11 s in one CI-like run),
    # and Ray 2.60 kills nothing at the deadline. What the drain promises is asserted:
    # each stage checkpointed, then moved, nothing lost or replayed.)
    for sid in ("d1", "d2"):
        s = stage(env, sid)
        assert s["status"] == "running" and s["node_id"] != node
        # Checkpointed just before moving: nothing is lost, nothing replayed.
        assert ray.get(handle_of(env, sid).process_batch.remote([4])) == [7]


def test_drain_reported_by_ray_is_noticed(env: dict[str, Any]) -> None:
    sched = env["sched"]
    node = worker_nodes(env)[0].node_id
    ray.get(sched.launch.remote(spec(env, "spot"), node))
    ray.get(handle_of(env, "spot").process_batch.remote([5]))
    # A spot notice: someone else (the autoscaler, `ray drain-node`) drains the node.
    deadline = time.time() + 12.0
    ray_adapter.drain_node(node, deadline=deadline, message="spot notice")
    wait_for(lambda: stage(env, "spot")["node_id"] != node
             and stage(env, "spot")["status"] == "running", timeout=120, what="moved")
    # Checkpointed before the move: nothing lost, nothing replayed. (When the moves end is
    # not asserted; see test_drain_with_deadline_checkpoints_and_moves_stages.)
    assert ray.get(handle_of(env, "spot").process_batch.remote([1])) == [6]
    result = wait_for(lambda: ray.get(sched.drain_result.remote(node)), what="drain result")
    assert "spot" in result.checkpointed and result.ray_accepted is None and not result.failed


def test_drain_closer_than_the_restore_allowance_checkpoints_first(
        env: dict[str, Any], tmp_path: Any) -> None:
    """A deadline closer than the restore allowance (>= 3 s): the checkpoint is given until
    the deadline, the restore on another node may end after it. (It was given 0.5 s, so a
    stage whose checkpoint takes a second was killed and its work replayed: under load,
    test_drain_reported_by_ray_is_noticed moved a stage with ``checkpointed=()``.)"""
    sched = env["sched"]
    extra = env["cluster"].add_node(**WORKER_ARGS)
    wait_for(lambda: extra.node_id in {n.node_id for n in ray_adapter.list_nodes()},
             what="a node for this drain")
    slower = tmp_path / "slower"
    sp = StageSpec(stage_id="slow", factory=functools.partial(SlowSummer, str(slower)),
                   store_url=env["store"], resources={"num_cpus": 0.1},
                   registrar=SchedulerRegistrar(env["name"]))
    ray.get(sched.launch.remote(sp, extra.node_id))
    ray.get(handle_of(env, "slow").process_batch.remote([5]))
    slower.touch()
    ray.get(sched.checkpoint.remote("slow"))        # measured: about three seconds
    slower.unlink()
    # The drain's checkpoint takes about a second: more than the 0.5 s it was once given,
    # well inside twice the measured one (it was given twice a second, which load broke).
    ray.get(handle_of(env, "slow").process_batch.remote([1]))   # only the drain saves this
    result = ray.get(sched.drain_node.remote(extra.node_id, time.time() + 3.0, True,
                                             "short notice"))
    assert "slow" in result.checkpointed and not result.failed
    assert stage(env, "slow")["node_id"] != extra.node_id
    assert ray.get(handle_of(env, "slow").process_batch.remote([0])) == [6]  # nothing replayed


# --------------------------------------------------------------------------- scheduler loss


def _saved_stages(store: str, name: str) -> Any:
    """The stages of scheduler ``name``'s registry as saved in ``store`` (``None``: none)."""
    from blockstore import open_store
    from scheduler.registry import RegistryStore

    with open_store(store) as st:
        lease = next((i.name for i in st.list_leases()
                      if i.name.startswith("_blockpoint/scheduler/")
                      and i.name.endswith(f"/{name}")), None)
        if lease is None:
            return None
        found = RegistryStore(st, lease).load()
    return None if found is None else found.document["manager"]["stages"]


def test_scheduler_node_lost_registry_reloaded_elsewhere(env: dict[str, Any]) -> None:
    """The scheduler's own node dies: Ray restarts it elsewhere and it reloads its registry
    from the store; the (detached) stages it launched keep running and stay managed."""
    cluster = env["cluster"]
    home = cluster.add_node(**WORKER_ARGS)
    work = cluster.add_node(**WORKER_ARGS)
    # (Not cluster.wait_for_nodes(): Ray shuts idle drained nodes down, which the Cluster
    # helper does not know and would wait for.)
    wait_for(lambda: {home.node_id, work.node_id}
             <= {n.node_id for n in ray_adapter.list_nodes()}, what="new nodes up")
    name = f"sched-{uuid.uuid4().hex[:8]}"
    sched = get_or_create(name, store_url=env["store"], node_id=home.node_id,
                          poll_interval=0.25)
    try:
        first = ray.get(sched.ping.remote())
        assert ray_adapter.actor_view(ray_adapter.actor_id_of(sched)).node_id == home.node_id
        sp = StageSpec(stage_id="survivor", factory=Summer, store_url=env["store"],
                       resources={"num_cpus": 0.2}, registrar=SchedulerRegistrar(name))
        ray.get(sched.launch.remote(sp, work.node_id))
        ray.get(handle_of({"sched": sched}, "survivor").process_batch.remote([2, 3]))
        ray.get(sched.checkpoint.remote("survivor"))
        before = ray.get(sched.snapshot.remote())
        # A change made only of progress (a new generation) is saved within a second
        # (watcher.SAVE_INTERVAL_S), not at once: the loss must come after the save, or the
        # reloaded registry rightly has the generation before (the test flaked on it).
        wait_for(lambda: _saved_stages(env["store"], name) == before["stages"],
                 what="the registry saved with the checkpoint")

        cluster.remove_node(home, allow_graceful=False)
        info = wait_for(lambda: _ping(sched, first["pid"]), timeout=120, what="scheduler back")
        assert info["reloaded_generation"] is not None
        assert ray.get(sched.snapshot.remote())["stages"] == before["stages"]
        s = ray.get(sched.stage.remote("survivor"))
        assert s["status"] == "running" and s["node_id"] == work.node_id and s["has_spec"]
        stage_handle = ray.get(sched.handle_of.remote("survivor"))
        assert ray.get(stage_handle.process_batch.remote([5])) == [10]
        # Its flushes reach the new scheduler incarnation (a newer generation is recorded).
        ray.get(sched.checkpoint.remote("survivor"))
        assert ray.get(sched.stage.remote("survivor"))["checkpoint"]["generation"] == 2
    finally:
        for sid in ("survivor",):
            try:
                ray.get(sched.unregister.remote(sid, True), timeout=10)
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
        ray.kill(sched)


def _ping(handle: Any, old_pid: int) -> dict[str, Any] | None:
    try:
        info = ray.get(handle.ping.remote(), timeout=2)
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
            ray.exceptions.GetTimeoutError):
        return None
    return info if info["pid"] != old_pid else None
