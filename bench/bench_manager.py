"""Benchmark: victim selection over a large registry.

Issue 4 asks for a selection over 10,000 stages in well under 10 ms. This measures
:meth:`scheduler.PreemptionManager.select_victims` for the request shapes the scheduler
actor issues (a few victims by count, resources to free, a node to clear, and a request
that must wait for flushing stages), on a registry with a realistic mix: priorities 0-9,
random work since the last checkpoint, ~1% of stages flushing and ~0.5% pinned, 100 nodes.

Run ``python -m bench.bench_manager`` for a table; :func:`run` returns the numbers.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from scheduler import NonPreemptibleReason, PreemptionManager, PreemptionRequest

__all__ = ["build_manager", "run"]


def build_manager(n_stages: int, *, seed: int = 0, n_nodes: int = 100) -> PreemptionManager:
    """Return a manager holding ``n_stages`` random stages (deterministic for a seed)."""
    rng = random.Random(seed)
    manager = PreemptionManager(clock=lambda: 1_000.0, max_decisions=100)
    for i in range(n_stages):
        sid = f"stage-{i:06d}"
        resources = {"CPU": float(rng.choice((1, 2, 4)))}
        if rng.random() < 0.1:
            resources["GPU"] = 1.0
        manager.register(
            sid,
            node_id=f"node-{rng.randrange(n_nodes):03d}",
            priority=rng.randrange(10),
            lease_id=f"lease-{i}",
            resources=resources,
        )
        manager.record_work(sid, rng.randrange(100_000), rng.random() * 600)
        roll = rng.random()
        if roll < 0.01:
            manager.set_reason(sid, NonPreemptibleReason.CHECKPOINT_IN_PROGRESS)
        elif roll < 0.015:
            manager.set_reason(sid, NonPreemptibleReason.PINNED)
    return manager


def _time(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {
        "median_ms": statistics.median(samples) * 1e3,
        "p90_ms": samples[min(len(samples) - 1, int(len(samples) * 0.9))] * 1e3,
        "max_ms": samples[-1] * 1e3,
    }


def run(n_stages: int = 10_000, repeats: int = 50) -> dict[str, Any]:
    """Time ``select_victims`` over ``n_stages`` stages for several request shapes.

    Returns:
        ``{"n_stages": ..., "repeats": ..., "cases": {name: {"median_ms", "p90_ms",
        "max_ms", "victims", "outcome"}}}``.
    """
    manager = build_manager(n_stages)
    total_cpu = sum(r.resources.get("CPU", 0.0) for r in manager.stages() if r.preemptible)
    requests = {
        "count=1": PreemptionRequest("bench", 2_000.0, count=1),
        "count=10": PreemptionRequest("bench", 2_000.0, count=10),
        "count=100": PreemptionRequest("bench", 2_000.0, count=100),
        "CPU=64": PreemptionRequest("bench", 2_000.0, resources={"CPU": 64}),
        "GPU=8": PreemptionRequest("bench", 2_000.0, resources={"GPU": 8}),
        "node": PreemptionRequest("bench", 2_000.0, nodes=frozenset({"node-007"})),
        "all CPU (wait)": PreemptionRequest("bench", 2_000.0, resources={"CPU": total_cpu + 1}),
    }
    cases: dict[str, Any] = {}
    for name, request in requests.items():
        timing = _time(lambda r=request: manager.select_victims(r), repeats)
        plan = manager.select_victims(request)
        cases[name] = {**timing, "victims": len(plan.victims), "outcome": plan.outcome.value}
    return {"n_stages": n_stages, "repeats": repeats, "cases": cases}


def main() -> None:
    """Print :func:`run` as a table."""
    result = run()
    print(f"select_victims over {result['n_stages']} stages, {result['repeats']} repeats")
    print(f"{'request':<16} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {'victims':>8}  outcome")
    for name, case in result["cases"].items():
        print(
            f"{name:<16} {case['median_ms']:>10.3f} {case['p90_ms']:>8.3f} "
            f"{case['max_ms']:>8.3f} {case['victims']:>8}  {case['outcome']}"
        )


if __name__ == "__main__":
    main()
