"""A ``@checkpointed`` actor whose node is lost resumes on another node from the store.

One 3-node ``ray.cluster_utils.Cluster`` (module-scoped, fast health checks, see
``tests/conftest.py``); the store is a directory every node of this one-machine cluster
reaches, as a shared filesystem would on a real one. Ray re-creates the actor
(``max_restarts``) on a live node; the new incarnation takes the lease by force and
restores the last committed generation, so no increment is lost or doubled.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import ray
import ray.cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from polling import wait_for
from stages import checkpointed

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

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
             timeout=60, what="the node declared dead")
    got = ray.get([h.add.remote() for _ in range(6)], timeout=120)
    assert got == list(range(21, 27))  # the restored state: nothing lost, nothing doubled
    info = ray.get(h.checkpoint_info.remote(), timeout=30)
    assert info["node_id"] != worker.node_id and info["epoch"] >= 2
    assert info["restored_from"] is not None
    assert ray.get(h.node.remote()) != worker.node_id
