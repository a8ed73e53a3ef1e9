"""A keyed stage at parallelism 1, 2 and 4 on a 3-node local cluster, and the time to rescale
a run's 64 MiB keyed state (issue 20's closing rows).

The cluster: ``ray.cluster_utils.Cluster``, a head and two workers of 2 logical CPUs each, all
on this machine (so on a 2-core VM the curve flattens: the nodes share the same two cores,
and Ray's own daemons - three raylets - take their share). Ray places the instances (0.5 CPU
each) where it finds room.

* ``keyed parallelism P``: ``GeneratedSource`` (64 keys) -> ``RunningAggregate`` keyed by
  ``key`` at parallelism P (128 key groups) -> ``Enrich``, batches of 256, a barrier every
  15,000 records, file store, ``FileSink`` without fsync; records/s from the pipeline's
  ``started`` to ``done`` events, median of ``repeat``; ``vs P=1``.
* ``rescale 2 -> 4``: a keyed stage holding a 4 KiB float32 array per key (16,384 keys,
  64 MiB) runs at parallelism 2 until its first committed step and pauses; the run is
  resumed at parallelism 4, which restores each new instance's key groups from the two
  leases the committed step names. Seconds from the resumed ``run()`` to its ``started``
  event (four actors launched and restored), and the state's size.

``python -m bench.bench_parallel``; ``blockpoint bench --only parallel``.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

__all__ = ["run"]

BATCH = 256
M = 128


class ArrayPerKey:
    """Keeps a 4 KiB float32 array per key (the first record of a key makes it); emits the
    record with its key's first value."""

    def initial_state(self) -> dict[str, Any]:
        return {}

    def process(self, state: Any, record: dict[str, Any]) -> Any:
        import numpy as np

        arr = state.get(record["key"])
        if arr is None:
            arr = np.full(1024, float(record["value"]), dtype=np.float32)
            state[record["key"]] = arr
        yield {"i": record["i"], "key": record["key"], "first": float(arr[0])}


def _throughput(store: str, out: str, p: int, events: int, every: int) -> float:
    from stages import CheckpointPolicy, FileSink, GeneratedSource, Pipeline, StageSpec
    from stages.pipeline.source import Enrich, RunningAggregate

    res_opts = {"num_cpus": 0.5}
    specs = [StageSpec("agg", RunningAggregate, store, resources=res_opts, compression="none",
                       parallelism=p, key="key", max_parallelism=M),
             StageSpec("seq", functools.partial(Enrich, field="count"), store,
                       resources=res_opts, compression="none")]
    pipe = Pipeline(GeneratedSource(seed=7, n=events, keys=64), specs,
                    FileSink(out, fsync=False), batch_size=BATCH, max_in_flight=8,
                    policy=CheckpointPolicy(every_records=every), call_timeout=120.0)
    res = pipe.run()
    if not res.finished:
        raise RuntimeError(f"parallelism {p}: the run did not finish: {res}")
    t = {e.kind: e.at for e in res.events if e.kind in ("started", "done")}
    return events / (t["done"] - t["started"])


def _rescale(root: str, keys: int) -> dict[str, Any]:
    from blockstore import open_store
    from stages import CheckpointPolicy, FileSink, GeneratedSource, Pipeline, StageSpec
    from stages.pipeline.runs import RunStore

    store = os.path.join(root, "rescale-store")
    open_store(store, block_size=64 * 1024).close()
    events = keys * 5  # ~99 % of the keys seen before the first barrier
    src = GeneratedSource(seed=3, n=events * 2, keys=keys)

    def pipe(p: int) -> Pipeline:
        spec = StageSpec("arrays", ArrayPerKey, store, resources={"num_cpus": 0.5},
                         compression="none", parallelism=p, key="key", max_parallelism=M)
        return Pipeline(src, [spec], FileSink(os.path.join(root, "rescale-out"), fsync=False),
                        run_id="rescale", batch_size=1024, max_in_flight=4,
                        policy=CheckpointPolicy(every_records=events), call_timeout=300.0)

    first = pipe(2).run(max_steps=1, pause=True)
    if first.committed_step != 1:
        raise RuntimeError(f"the first run committed step {first.committed_step}, not 1")
    runs = RunStore(open_store(store))
    step = runs.load_step("rescale", 1)
    with open_store(store) as st:
        state_bytes = sum(st.open_reader(c.stage_id).info().num_blocks * st.block_size
                          for c in step.stages)
    claim = runs.claim("rescale", driver="p4")
    t0 = time.time()
    second = pipe(4).run(max_steps=1, pause=True, claim=claim)
    started = next(e.at for e in second.events if e.kind == "started")
    return {"seconds": started - t0, "lease_mib": state_bytes / (1 << 20),
            "state_mib": keys * 4096 / (1 << 20),
            "keys": keys, "committed_step": second.committed_step}


def run(quick: bool = False, repeat: int | None = None) -> list[dict[str, Any]]:
    """One row per parallelism (records/s, ratio to 1) and one for the rescale."""
    import ray
    from ray.cluster_utils import Cluster

    from blockstore import open_store

    repeat = repeat or (1 if quick else 3)
    events = 12_000 if quick else 300_000
    every = 6_000 if quick else 15_000
    keys = 1024 if quick else 16_384
    if ray.is_initialized():
        raise RuntimeError("bench_parallel starts its own 3-node cluster: call it without Ray")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 200 << 20})
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=200 << 20)
    root = tempfile.mkdtemp(prefix="bench-parallel-")
    rates: dict[int, list[float]] = {1: [], 2: [], 4: []}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        for r in range(repeat):
            for p in rates:
                work = os.path.join(root, f"p{p}-{r}")
                store = os.path.join(work, "store")
                open_store(store, block_size=64 * 1024).close()
                rates[p].append(_throughput(store, os.path.join(work, "out"), p, events,
                                            every))
                shutil.rmtree(work, ignore_errors=True)
        rescale = _rescale(root, keys)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(rates[1])
    rows: list[dict[str, Any]] = [
        {"case": f"keyed parallelism {p}", "events": events,
         "records_per_s": round(statistics.median(v)), "runs": [round(x) for x in v],
         "vs P=1": round(statistics.median(v) / base, 3)} for p, v in rates.items()]
    rows.append({"case": "rescale 2 -> 4", "seconds": round(rescale["seconds"], 2),
                 "state_mib": round(rescale["state_mib"], 1),
                 "leases_mib": round(rescale["lease_mib"], 1), "keys": rescale["keys"]})
    return rows


if __name__ == "__main__":
    from blockpoint.table import print_rows

    rows = run(quick="--quick" in sys.argv)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print_rows([{k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in r.items()}
                for r in rows], cols)
