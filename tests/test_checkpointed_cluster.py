"""A ``@checkpointed`` actor whose node is lost resumes on another node from the store.

One 3-node ``ray.cluster_utils.Cluster`` (module-scoped, fast health checks, see
``tests/conftest.py``); the store is a directory every node of this one-machine cluster
reaches, as a shared filesystem would on a real one. Either Ray re-creates the actor
(``max_restarts``) on a live node, or - for an actor without ``max_restarts`` - the real
scheduler actor does, from the recipe the actor registered; either way the new incarnation
takes the lease by force and restores the last committed generation. The scheduler tests
also hold a flush open (``tests/gates.py``) while a preemption asks for the actor's CPU, and
restart the scheduler before the actor is lost, and remove a node while a committed call
waits for its reply (request ids, ``call_once``). Tests run in file order; those that remove
a node add a replacement.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import gates
from aftercommit import AfterCommitOnce
from clusters import add_worker, scheduler_on_head
from blockstore import StaleLeaseError, open_store
from blockstore.lease import Lease
from gates import Gate
from polling import wait_for
from scheduler import PreemptionCheckpointObserver, PreemptionRequest
from scheduler import ray_adapter
from scheduler.hooks import SchedulerRegistrar
from scheduler.registry import RegistryStore, registry_name
from scheduler.reasons import NonPreemptibleReason
from stages import ActorFenced, CheckpointFailed, call_once, checkpointed

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(gates)

CIP = NonPreemptibleReason.CHECKPOINT_IN_PROGRESS.value

pytestmark = pytest.mark.ray


class Tally:
    def __init__(self) -> None:
        self.state = {"n": 0, "nodes": []}

    def add(self) -> int:
        self.state["n"] += 1
        node = ray.get_runtime_context().get_node_id()
        if node not in self.state["nodes"]:
            self.state["nodes"].append(node)
        return self.state["n"]

    @checkpointed.readonly
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def test_node_loss_resumes_elsewhere(ray_cluster: Any, store_dir: str) -> None:
    cluster = ray_cluster
    worker = sorted(cluster.worker_nodes, key=lambda n: n.node_id)[0]
    cls = ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=1,
                     concurrency_groups=checkpointed.GROUPS)(
        checkpointed(store=store_dir, key="tally", every_calls=1)(Tally))
    h = cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        worker.node_id, soft=True)).remote()
    assert ray.get([h.add.remote() for _ in range(20)]) == list(range(1, 21))
    assert ray.get(h.node.remote()) == worker.node_id
    cluster.remove_node(worker, allow_graceful=False)
    # The actor's process may outlive its raylet for a moment (a zombie: its late writes
    # would be fenced); wait for Ray to declare the node dead, which restarts the actor.
    wait_for(lambda: not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == worker.node_id),
             timeout=120, what="the node declared dead")
    got = ray.get([h.add.remote() for _ in range(6)], timeout=120)
    # The restored state: nothing lost, nothing doubled. (Calls sent while Ray restarts the
    # actor may run in any order: Ray orders per attempt, not across its retries.)
    assert sorted(got) == list(range(21, 27))
    info = ray.get(h.checkpoint_info.remote(), timeout=30)
    assert info["node_id"] != worker.node_id and info["epoch"] >= 2
    assert info["restored_from"] is not None
    assert ray.get(h.node.remote()) != worker.node_id
    ray.kill(h)                                       # frees its CPU for the tests below


# --------------------------------------------------------------------------- the scheduler


class Ledger:
    """A plain actor class: a counter, with an optional gate that holds a flush open."""

    def __init__(self, start: int, gate: str | None = None) -> None:
        self.state = {"n": start, "gate": Gate(gate) if gate else None}

    def add(self, k: int = 1) -> int:
        self.state["n"] += k
        return self.state["n"]

    def crash(self) -> None:
        os._exit(1)

    @checkpointed.readonly
    def value(self) -> int:
        return self.state["n"]


@pytest.fixture(scope="module")
def env(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The real scheduler actor, pinned to the head node (never removed here)."""
    with scheduler_on_head(ray_cluster, tmp_path_factory.mktemp("ckpt-sched"), "sched") as e:
        yield e

def ledger(env: dict[str, Any], key: str, **remote: Any) -> Any:
    """``Ledger`` as a scheduler-managed ``@checkpointed`` actor class (half a CPU; no
    ``max_restarts`` unless ``remote`` says)."""
    return ray.remote(num_cpus=0.5, concurrency_groups=checkpointed.GROUPS, **remote)(
        checkpointed(store=env["store"], key=key, lease_ttl=30.0,
                     registrar=SchedulerRegistrar(env["name"]),
                     observer=PreemptionCheckpointObserver(key, env["name"]))(Ledger))


def registered(env: dict[str, Any], key: str, epoch: int = 0) -> dict[str, Any] | None:
    try:
        s = ray.get(env["sched"].stage.remote(key), timeout=10)
    except ray.exceptions.RayTaskError:  # UnknownStageError: not registered yet
        return None
    except ray.exceptions.GetTimeoutError:  # a busy scheduler: ask again
        return None
    return s if s["status"] == "running" and s["epoch"] > epoch else None


def persisted(env: dict[str, Any], key: str) -> bool:
    """Whether the scheduler's registry in the store holds ``key``'s recipe. A registration
    is in the scheduler's table (``stage()``) before its save lands: a scheduler killed in
    between reloads a registry without it (the registration, retried by Ray, comes back)."""
    ns = ray.get(env["sched"].ping.remote(), timeout=30)["namespace"]
    reg = RegistryStore(env["store"], registry_name(env["name"], ns))
    try:
        rec = reg.load()
    finally:
        reg.close()
    entry = (rec.document.get("entries") or {}).get(key) if rec is not None else None
    return bool(entry and entry.get("spec"))


def incarnation_after(name: str, epoch: int) -> tuple[Any, dict[str, Any]] | None:
    """The named actor's handle and info once an incarnation newer than ``epoch`` answers."""
    try:
        handle = ray.get_actor(name)
        info = ray.get(handle.checkpoint_info.remote(), timeout=5)
    except (ValueError, ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
            ray.exceptions.GetTimeoutError):
        return None
    return (handle, info) if info["epoch"] > epoch else None


def forget(env: dict[str, Any], key: str) -> None:
    try:
        ray.get(env["sched"].unregister.remote(key, True), timeout=10)
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


def test_scheduler_recreates_lost_actor_on_another_node(env: dict[str, Any]) -> None:
    """Two actors on the lost node: one without ``max_restarts`` (the scheduler re-creates
    it), one with (Ray restarts it; the scheduler must not start a second incarnation)."""
    cluster, sched = env["cluster"], env["sched"]
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    worker = next(n for n in cluster.worker_nodes if n.node_id in alive)
    pin = NodeAffinitySchedulingStrategy(worker.node_id, soft=True)
    h = ledger(env, "ledger-a").options(name="ledger-a", scheduling_strategy=pin).remote(5)
    r = ledger(env, "ledger-r", max_restarts=-1).options(name="ledger-r",
                                                        scheduling_strategy=pin).remote(7)
    assert ray.get([h.add.remote() for _ in range(10)]) == list(range(6, 16))
    ck = ray.get(h.checkpoint.remote())
    assert ray.get(h.add.remote(100)) == 115          # not checkpointed: lost with the node
    r_ck = ray.get(r.checkpoint.remote())
    st = wait_for(lambda: registered(env, "ledger-a"), what="registered")
    # Its real resources and a recipe to re-create it from.
    assert st["resources"] == {"CPU": 0.5} and st["has_spec"]
    r_before = wait_for(lambda: registered(env, "ledger-r"), what="registered")
    before = ray.get(h.checkpoint_info.remote())
    assert before["node_id"] == worker.node_id
    try:
        with open_store(env["store"]) as store:
            # The old incarnation's lease handle, kept past the takeover (a zombie writer).
            zombie = Lease(store, store.lease_info("ledger-a"), ttl=30.0, keepalive=False)
            cluster.remove_node(worker, allow_graceful=False)
            new, info = wait_for(lambda: incarnation_after("ledger-a", before["epoch"]),
                                 timeout=120, what="the actor re-created by the scheduler")
            assert info["node_id"] not in (None, worker.node_id)
            assert info["restored_from"] == ck["generation"]
            assert ray.get(new.value.remote()) == 15      # the last checkpoint, exactly
            with pytest.raises(StaleLeaseError):
                zombie.write_blocks({0: b"late write from the lost node"})
        # The old handle answers no more (RayActorError), or as a fenced zombie; not merely
        # late (its node is dead, so Ray answers at once; the timeout is only a bound).
        with pytest.raises((ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                            CheckpointFailed, ActorFenced)):
            ray.get(h.add.remote(), timeout=60)
        assert ray.get(new.add.remote()) == 16
        # The new incarnation registers fire-and-forget: wait until it landed.
        now = wait_for(lambda: registered(env, "ledger-a", before["epoch"]),
                       what="the re-created actor registered")
        assert now["node_id"] == info["node_id"]
        kinds = {(d["kind"], d["outcome"]) for d in ray.get(sched.decisions.remote(40))
                 if "ledger-a" in d["victims"]}
        assert {("lost", "detected"), ("restore", "done")} <= kinds
        # The restartable one: Ray's restart (same actor, one more epoch), not the scheduler's.
        r_new, r_info = wait_for(lambda: incarnation_after("ledger-r", r_before["epoch"]),
                                 timeout=120, what="the actor restarted by Ray")
        assert r_info["restored_from"] == r_ck["generation"]
        assert ray.get(r_new.value.remote()) == 7 and ray_adapter.actor_id_of(r_new) == \
            ray_adapter.actor_id_of(r)
        wait_for(lambda: registered(env, "ledger-r", r_before["epoch"]), what="re-registered")
        assert r_info["epoch"] == r_before["epoch"] + 1
        r_kinds = {d["kind"] for d in ray.get(sched.decisions.remote(40))
                   if "ledger-r" in d["victims"]}
        assert not r_kinds & {"lost", "restore"}, r_kinds
    finally:
        forget(env, "ledger-a")
        forget(env, "ledger-r")
        add_worker(cluster)


def test_preemption_waits_for_the_actors_flush(env: dict[str, Any], tmp_path: Path) -> None:
    sched = env["sched"]
    gate = tmp_path / "gate"
    h = ledger(env, "ledger-b").options(name="ledger-b").remote(0, str(gate))
    assert ray.get([h.add.remote() for _ in range(3)]) == [1, 2, 3]
    wait_for(lambda: registered(env, "ledger-b"), what="registered")
    try:
        # An earlier flush's completion report is fire-and-forget: its mark must be gone, or
        # it would pass for the mark of the held flush.
        wait_for(lambda: ray.get(sched.reasons.remote("ledger-b")) == [], what="no old mark")
        gates.hold(gate)
        flushing = h.checkpoint.remote()              # blocks inside the flush
        wait_for(lambda: gates.entered(gate), what="the flush held at the gate")
        wait_for(lambda: ray.get(sched.reasons.remote("ledger-b")) == [CIP],
                 what="the scheduler sees the flush")
        # Free half a CPU: only this actor holds that (its registered resources).
        reason = "need half a CPU"
        pending = sched.preempt.remote(PreemptionRequest(
            reason=reason, deadline=time.time() + 60, resources={"CPU": 0.5}))
        wait_for(lambda: any(d["kind"] == "select" and d["reason"] == reason
                             and d["outcome"] == "wait"
                             and "ledger-b" in ((d["plan"] or {}).get("wait_for") or ())
                             for d in ray.get(sched.decisions.remote(50))),
                 what="the preemption waiting for the actor's flush")
        assert not ray.wait([pending], timeout=0)[0], "preempted an actor mid-flush"
        assert not ray.wait([flushing], timeout=0)[0]
        gates.release(gate)
        gen = ray.get(flushing, timeout=60)["generation"]
        res = ray.get(pending, timeout=60)
        assert res.victims == ("ledger-b",) and res.freed.get("CPU") == 0.5
        kinds = [(d["kind"], d["outcome"]) for d in ray.get(sched.decisions.remote(50))]
        assert ("select", "wait") in kinds and ("preempt", "ready") in kinds
        # Restored on request from its recipe, with the state of that checkpoint.
        ray.get(sched.restore.remote("ledger-b"))
        new, info = wait_for(lambda: incarnation_after("ledger-b", 0), what="restored")
        assert info["restored_from"] == gen and ray.get(new.value.remote()) == 3
    finally:
        gate.unlink(missing_ok=True)
        forget(env, "ledger-b")


def test_recipe_survives_a_scheduler_restart(env: dict[str, Any]) -> None:
    sched = env["sched"]
    h = ledger(env, "ledger-c").options(name="ledger-c").remote(40)
    assert ray.get(h.add.remote(2)) == 42
    ck = ray.get(h.checkpoint.remote())
    first = wait_for(lambda: registered(env, "ledger-c"), what="registered")
    wait_for(lambda: persisted(env, "ledger-c"), what="the registration saved")
    pid = ray.get(sched.ping.remote())["pid"]
    try:
        ray.kill(sched, no_restart=False)             # Ray restarts it; it reloads its registry

        def back() -> dict[str, Any] | None:
            try:
                info = ray.get(sched.ping.remote(), timeout=2)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.GetTimeoutError):
                return None
            return info if info["pid"] != pid else None
        assert wait_for(back, timeout=120, what="scheduler back")["reloaded_generation"]
        assert registered(env, "ledger-c")["has_spec"]
        assert ray.get(h.add.remote(1)) == 43  # not checkpointed: lost in the crash
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(h.crash.remote())                 # its worker process dies: a failure
        new, info = wait_for(lambda: incarnation_after("ledger-c", first["epoch"]),
                             timeout=120, what="re-created from the reloaded recipe")
        assert info["restored_from"] == ck["generation"] and ray.get(new.value.remote()) == 42
        # Ended on purpose (ray.kill): forgotten, not re-created.
        ray.kill(new)

        def forgotten() -> list[dict[str, Any]]:
            return [d for d in ray.get(sched.decisions.remote(50))
                    if d["outcome"] == "not relaunched" and "ledger-c" in d["victims"]]
        note = dict(wait_for(forgotten, what="forgotten")[0]["notes"])["ledger-c"]
        assert "RAY_KILL" in note
        with pytest.raises(ray.exceptions.RayTaskError, match="ledger-c"):
            ray.get(sched.stage.remote("ledger-c"))
    finally:
        forget(env, "ledger-c")


class HoldAfterCommitOnce(AfterCommitOnce):
    """A flush observer that, once, holds the call whose checkpoint just committed (before
    its reply leaves) until its node is removed: the first incarnation to remove the
    trigger file touches ``held`` and waits."""

    def __init__(self, trigger: str, held: str) -> None:
        super().__init__(trigger)
        self.held = held

    def act(self) -> None:
        Path(self.held).touch()
        time.sleep(300)                               # the node goes away meanwhile


def test_node_removed_mid_call_every_call_applied_once(env: dict[str, Any],
                                                       tmp_path: Path) -> None:
    """An every_calls=1 actor (no ``max_restarts``: the scheduler re-creates it) whose node
    is removed while a committed call waits for its reply: the caller sees the actor die;
    ``call_once`` resends under the same request id to the re-created incarnation, which
    answers from the record. 20 calls, each applied exactly once."""
    cluster = env["cluster"]
    trigger, held = tmp_path / "trigger", tmp_path / "held"
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    worker = next(n for n in cluster.worker_nodes if n.node_id in alive)
    cls = ray.remote(num_cpus=0.5, concurrency_groups=checkpointed.GROUPS)(
        checkpointed(store=env["store"], key="ledger-once", every_calls=1, lease_ttl=30.0,
                     registrar=SchedulerRegistrar(env["name"]),
                     observer=HoldAfterCommitOnce(str(trigger), str(held)))(Ledger))
    h = cls.options(name="ledger-once", scheduling_strategy=NodeAffinitySchedulingStrategy(
        worker.node_id, soft=True)).remote(0)
    got = [call_once("ledger-once", "add", 1, request_id=f"call-{i}") for i in range(10)]
    before = ray.get(h.checkpoint_info.remote())
    assert before["node_id"] == worker.node_id
    wait_for(lambda: registered(env, "ledger-once"), what="registered")
    rest: list[int] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            rest.extend(call_once("ledger-once", "add", 1, request_id=f"call-{i}",
                                  timeout=180) for i in range(10, 20))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
    trigger.touch()
    t = threading.Thread(target=caller, daemon=True)
    t.start()
    try:
        wait_for(held.exists, timeout=60, what="a committed call held before its reply")
        cluster.remove_node(worker, allow_graceful=False)
        t.join(timeout=240)
        assert not t.is_alive() and not errors, errors
        assert got + rest == list(range(1, 21))       # each answered once, in order
        new, info = wait_for(lambda: incarnation_after("ledger-once", before["epoch"]),
                             timeout=120, what="the re-created incarnation")
        assert info["node_id"] != worker.node_id
        assert ray.get(new.value.remote()) == 20      # nothing applied twice
        assert info["deduplicated"] >= 1              # the held call, answered from the record
        assert not trigger.exists()
    finally:
        forget(env, "ledger-once")
        add_worker(cluster)
