"""Exactly once across node loss (A8) on a 3-node ``ray.cluster_utils.Cluster``.

The node running a stateful stage is removed without grace mid-run; the stage is relaunched
on another live node from its lease, every stage rolls back to the last committed step and
the source is replayed. The committed output must equal the failure-free reference.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from stages.actor import StageSpec
from stages.pipeline import Pipeline, PipelineEvent, run_reference
from stages.policy import CheckpointPolicy
from stages.sink import FileSink
from stages.source import Enrich, GeneratedSource, RunningAggregate

pytestmark = [pytest.mark.ray, pytest.mark.multinode]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_node_of_stateful_stage_removed_mid_run(s3_server: Any, ray_cluster: Any,
                                                tmp_path: Path, backend: str) -> None:
    """With the store in a directory, and on an S3-compatible server on loopback (no shared
    filesystem: the restored stage reads its checkpoint from the object store). The server
    (session-scoped) starts before the cluster, so every node has its credentials in the
    environment."""
    cluster = ray_cluster
    store = (s3_server.url(f"pipeline-{tmp_path.name}") if backend == "s3"
             else str(tmp_path / "store"))
    # An object store is shared: pickle checkpoints there need a key or an explicit opt-out
    # (the cluster's nodes were started without a key in their environment).
    unauth = backend == "s3"
    specs = [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=5.0,
                       allow_unauthenticated=unauth),
             StageSpec("seq", functools.partial(Enrich, False), store, block_size=64 * 1024,
                       lease_ttl=5.0, allow_unauthenticated=unauth)]
    head_id = cluster.head_node.node_id
    workers = [n for n in cluster.list_all_nodes() if n.node_id != head_id]
    victim = workers[0]
    removed: list[str] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not removed:
            assert p.node_of("agg") == victim.node_id
            removed.append(victim.node_id)
            cluster.remove_node(victim, allow_graceful=False)
            # Its actors may answer for a moment; let Ray declare the node dead first so the
            # loss lands mid-run rather than after a short stream has already finished.
            deadline = time.monotonic() + 30
            while any(n["NodeID"] == victim.node_id and n["Alive"] for n in ray.nodes()):
                assert time.monotonic() < deadline, "node never declared dead"
                time.sleep(0.1)

    src = GeneratedSource(seed=5, n=4000, keys=9)
    sink = FileSink(tmp_path / "out", fsync=False)
    p = Pipeline(src, specs, sink, batch_size=50, max_in_flight=4,
                 policy=CheckpointPolicy(every_records=400),
                 placement={"agg": victim.node_id, "seq": workers[1].node_id},
                 on_event=on_event, ping_timeout=5.0, call_timeout=30.0)
    try:
        res = p.run()
    finally:
        cluster.add_node(num_cpus=2, object_store_memory=100 * 1024 * 1024)
    assert removed
    relaunched = [e for e in res.events if e.kind == "relaunched" and e.stage_id == "agg"]
    assert relaunched and relaunched[0].detail["from_node"] == victim.node_id
    assert p.node_of("agg") not in (None, victim.node_id)  # restored on another live node
    assert res.finished and res.records_in == 4000
    assert sink.read_all() == run_reference(src, specs)  # record for record
