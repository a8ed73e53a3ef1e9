"""What the multi-node tests set up on the module's ``ray_cluster``: a scheduler on the head,
and a replacement worker.

Three modules (scheduler, checkpointed actors, scheduler faults) each set up the same
thing: a fresh file store, the real scheduler actor pinned to the head node (the tests
remove and drain workers, never the head, so the scheduler outlives every fault), polling
fast. This is that setup, once; and :func:`add_worker` gives a later test the worker an
earlier one removed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from polling import wait_for

from blockstore import open_store
from scheduler import get_or_create, ray_adapter

__all__ = ["WORKER_ARGS", "add_worker", "scheduler_on_head"]

#: A worker node as the ``ray_cluster`` fixture adds them (2 CPUs, 100 MiB object store).
WORKER_ARGS: dict[str, Any] = {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024}


@contextmanager
def scheduler_on_head(cluster: Any, root: Path, prefix: str) -> Iterator[dict[str, Any]]:
    """Yield ``{"cluster", "sched", "name", "store", "head"}``: a new store under ``root``
    and a scheduler named ``<prefix>-<random>`` on the head node; the scheduler is killed
    on exit."""
    store = str(root / "store")
    open_store(store, block_size=64 * 1024).close()
    head = ray_adapter.head_node_id()
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    sched = get_or_create(name, store_url=store, node_id=head, poll_interval=0.25,
                          retry_interval=0.5)
    # The scheduler must live on the head, the one node no test takes away.
    assert ray_adapter.actor_view(ray_adapter.actor_id_of(sched)).node_id == head
    try:
        yield {"cluster": cluster, "sched": sched, "name": name, "store": store, "head": head}
    finally:
        ray.kill(sched)


def add_worker(cluster: Any) -> Any:
    """Add a worker like the fixture's (a replacement for one a test removed) and return it
    once Ray reports it alive."""
    extra = cluster.add_node(**WORKER_ARGS)
    wait_for(lambda: any(n["NodeID"] == extra.node_id and n["Alive"] for n in ray.nodes()),
             what="replacement node up")
    return extra
