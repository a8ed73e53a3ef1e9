"""The demo's job: three deterministic stages and one ordinary Ray actor made durable.

The stages are deterministic given ``(state, record)``, so the output of running them in
order over the whole source without Ray or storage (``stages.run_reference``) is what any
failure-free run must commit: the demo's exactness check compares against it. They live in
the installed ``blockpoint`` package (not the source tree only), since stage actors on other
nodes import them by name when they unpickle a ``StageSpec``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["KeyedAggregates", "Normalize", "Scorer", "tally_actor"]


class Normalize:
    """Stage 1: validates events and tags each with a per-key sequence number (small state)."""

    def initial_state(self) -> dict[str, int]:
        return {}

    def process(self, state: dict[str, int], record: dict[str, Any]) -> Iterable[dict[str, Any]]:
        key = record["key"]
        seq = state.get(key, 0) + 1
        state[key] = seq
        yield {"i": record["i"], "key": key, "seq": seq, "value": int(record["value"])}


class KeyedAggregates:
    """Stage 2: per-key running count/sum/min/max plus a value histogram per key.

    The histogram (``keys x bins`` float64, ~``sketch_mib`` MiB) makes this the big state of
    the job, so its checkpoints take long enough to be seen in flight.
    """

    def __init__(self, sketch_mib: int = 32, keys: int = 16) -> None:
        self.keys = keys
        self.bins = max(1, sketch_mib * 1024 * 1024 // 8 // keys)

    def initial_state(self) -> dict[str, Any]:
        return {"agg": {}, "hist": np.zeros((self.keys, self.bins), dtype=np.float64)}

    def process(self, state: dict[str, Any], record: dict[str, Any]) -> Iterable[dict[str, Any]]:
        key = record["key"]
        v = record["value"]
        a = state["agg"].setdefault(key, [0, 0, v, v])
        a[0] += 1
        a[1] += v
        a[2] = min(a[2], v)
        a[3] = max(a[3], v)
        row = int(key[1:]) % self.keys
        state["hist"][row, (v * 7919) % self.bins] += 1.0
        yield {"i": record["i"], "key": key, "seq": record["seq"], "value": v,
               "count": a[0], "sum": a[1], "min": a[2], "max": a[3]}


class Scorer:
    """Stage 3: an exponentially weighted mean per key and a flag when a value is unusual."""

    def initial_state(self) -> dict[str, float]:
        return {}

    def process(self, state: dict[str, float], record: dict[str, Any]) -> Iterable[dict[str, Any]]:
        key = record["key"]
        prev = state.get(key, float(record["value"]))
        ewma = round(0.9 * prev + 0.1 * record["value"], 6)
        state[key] = ewma
        out = dict(record)
        out["ewma"] = ewma
        out["unusual"] = abs(record["value"] - ewma) > 400
        yield out


def tally_actor(store_url: str) -> Any:
    """The demo's ordinary Ray actor made durable with ``@checkpointed`` (every call commits
    before it returns: Ray's restart after the node loss resumes it exactly)."""
    import ray

    from stages import checkpointed

    @checkpointed(store=store_url, state="state", every_calls=1)
    class Tally:
        def __init__(self) -> None:
            self.state = {"n": 0}

        def add(self, k: int) -> int:
            self.state["n"] += k
            return self.state["n"]

        @checkpointed.readonly
        def where(self) -> tuple[int, str]:
            return self.state["n"], ray.get_runtime_context().get_node_id()

        @checkpointed.readonly
        def pid(self) -> int:
            return os.getpid()

    return ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.1,
                      concurrency_groups=checkpointed.GROUPS)(Tally)
