"""A scheduler on the head of the module's ``ray_cluster``, for the multi-node tests.

Three modules (scheduler, checkpointed actors, scheduler faults) each set up the same
thing: a fresh file store, the real scheduler actor pinned to the head node (the tests
remove and drain workers, never the head, so the scheduler outlives every fault), polling
fast. This is that setup, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray

from blockstore import open_store
from scheduler import get_or_create, ray_adapter

__all__ = ["scheduler_on_head"]


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
