"""The scheduler's flush-start acknowledgement under load, against a no-op Ray call (issue 20).

Every checkpoint flush waits for the scheduler's acknowledgement (``flush_started``) before
its first data block is written (``scheduler/observer.py``), so the acknowledgement's latency
is paid by every checkpoint of every stage. This bench puts the scheduler under the load of
the fault matrix's load row (``tests/faults/test_faults_load.py``): N stages launched by the
scheduler, every one of them running a batch and a checkpoint round after round (each
checkpoint is one acknowledged mark and one completion), a few random stage kills the
scheduler's watcher notices and restores - and meanwhile a probe in the driver times, in
turn:

* ``flush-start ack``: ``ray.get(sched.flush_started.remote(...))`` for a registered probe
  stage (the real path: the mark is set, a fire-and-forget ``flush_completed`` clears it);
* ``no-op call``: ``ray.get(noop.ping.remote())`` on a plain Ray actor (no options, a method
  that returns ``None``) - what any round trip to an actor costs on this machine under the
  same load, in the same run.

Rows: one per (stages, call) with p50 / p90 / p99 in milliseconds, the number of samples,
and ``/ no-op`` (the ack's percentile over the no-op call's). Target (issue 20 item 7): the
ack within 2x of the no-op call at 100 stages.

Needs Ray; starts a local one (4 logical CPUs, like the tests) when none is running and
shuts it down after. ``python -m bench.bench_scheduler [--quick]``; ``blockpoint bench
--only scheduler``. Full: 12 and 100 stages; quick: 4 stages, 3 rounds, 1 kill.
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

import numpy as np

__all__ = ["Tally", "run", "run_load"]

BLOCK = 16 * 1024


class Tally:
    """The load row's stage: a running total and a payload of 0-6 blocks."""

    def initial_state(self) -> dict[str, Any]:
        return {"total": 0, "n": 0, "payload": np.zeros(0, dtype=np.uint8)}

    def process(self, state: dict[str, Any], record: int) -> list[int]:
        state["total"] += record
        state["n"] += 1
        size = (state["n"] * 7919) % (6 * BLOCK)
        state["payload"] = np.full(size, state["n"] % 251, dtype=np.uint8)
        return []


class _Noop:
    """A plain Ray actor's no-op method: the baseline round trip."""

    def ping(self) -> None:
        return None


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] * 1e3

    return {"p50_ms": statistics.median(s) * 1e3, "p90_ms": at(0.90), "p99_ms": at(0.99)}


def _running_handle(sched: Any, sid: str, not_actor: str | None, timeout: float = 120.0
                    ) -> tuple[Any, str]:
    import ray

    end = time.time() + timeout
    while time.time() < end:
        st = ray.get(sched.stage.remote(sid))
        if st["status"] == "running" and st["actor_id"] and st["actor_id"] != not_actor:
            handle = ray.get(sched.handle_of.remote(sid))
            try:
                ray.get(handle.ping.remote(), timeout=10)
                return handle, st["actor_id"]
            except ray.exceptions.RayError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"{sid} was not restored within {timeout} s")


def run_load(n_stages: int, rounds: int, kills: int, *, seed: int = 5,
             probe_gap_s: float = 0.01) -> dict[str, Any]:
    """Run the load with ``n_stages`` stages for ``rounds`` rounds; time ack and no-op.

    Returns:
        ``{"n_stages", "rounds", "checkpoints", "kills", "ack": [s...], "noop": [s...]}``
        (latencies in seconds, in the order they were taken).
    """
    import ray

    from blockstore import open_store
    from scheduler import SchedulerRegistrar, get_or_create
    from stages.actors.actor import StageSpec

    root = tempfile.mkdtemp(prefix="bench-sched-")
    store_url = f"{root}/store"
    open_store(store_url, block_size=BLOCK).close()
    name = f"bench-sched-{uuid.uuid4().hex[:6]}"
    sched = get_or_create(name, store_url=store_url, poll_interval=0.2, retry_interval=0.5)
    noop = ray.remote(_Noop).remote()
    handles: dict[str, tuple[Any, str]] = {}
    try:
        registrar = SchedulerRegistrar(name)
        sids = [f"s{i:03d}" for i in range(n_stages)]
        specs = [StageSpec(stage_id=sid, factory=Tally, store_url=store_url,
                           resources={"num_cpus": 0.01}, registrar=registrar, lease_ttl=10.0)
                 for sid in sids]
        ray.get([sched.launch.remote(spec) for spec in specs])
        handles.update({sid: _running_handle(sched, sid, None) for sid in sids})
        ray.get(noop.ping.remote())
        node = ray.get_runtime_context().get_node_id()
        ray.get(sched.register.remote({"stage_id": "probe", "node_id": node, "epoch": 1,
                                       "lease_id": "probe-lease", "priority": 0}))
        acks: list[float] = []
        noops: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            seq = 0
            done: Any = None
            while not stop.is_set():
                seq += 1
                calls = [("ack", lambda s=seq: sched.flush_started.remote("probe",
                                                                          "probe-lease", s)),
                         ("noop", noop.ping.remote)]
                if seq % 2:
                    calls.reverse()  # neither call always goes first
                for what, call in calls:
                    t = time.perf_counter()
                    ray.get(call())
                    (acks if what == "ack" else noops).append(time.perf_counter() - t)
                done = sched.flush_completed.remote("probe", "probe-lease", True, seq)
                stop.wait(probe_gap_s)
            if done is not None:
                ray.get(done)  # none in flight when the scheduler is killed

        rng = random.Random(seed)
        kill_rounds = set(rng.sample(range(1, rounds + 1), min(kills, rounds)))
        prober = threading.Thread(target=probe, name="bench-sched-probe", daemon=True)
        prober.start()
        done = killed = 0
        try:
            for step in range(1, rounds + 1):
                refs = []
                for sid in sids:
                    h, _ = handles[sid]
                    h.process_batch.remote([1] * rng.randrange(1, 6))
                    refs.append(h.checkpoint.remote(step=step))
                if step in kill_rounds:
                    victim = rng.choice(sids)
                    old, old_actor = handles[victim]
                    ray.kill(old, no_restart=True)
                    handles[victim] = _running_handle(sched, victim, old_actor)
                    killed += 1
                for ref in refs:
                    try:
                        ray.get(ref, timeout=120)
                        done += 1
                    except ray.exceptions.RayError:
                        pass  # the killed one
        finally:
            stop.set()
            prober.join(timeout=60)
        return {"n_stages": n_stages, "rounds": rounds, "checkpoints": done, "kills": killed,
                "ack": acks, "noop": noops}
    finally:
        # Stages first, and gone before the scheduler: a stage's fire-and-forget completion
        # still in flight to a killed scheduler makes Ray print a retry notice on stdout.
        for h, _ in handles.values():
            ray.kill(h, no_restart=True)
        pings = [h.ping.remote() for h, _ in handles.values()]
        if pings:  # each fails once its actor died
            ray.wait(pings, num_returns=len(pings), timeout=30)
        ray.kill(noop)
        ray.kill(sched)
        shutil.rmtree(root, ignore_errors=True)


def rows_for(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The two rows (ack, no-op) of one :func:`run_load` result."""
    base = _percentiles(result["noop"])
    ack = _percentiles(result["ack"])
    common = {"stages": result["n_stages"], "checkpoints": result["checkpoints"],
              "kills": result["kills"]}
    return [
        {"call": "flush-start ack", **common, **ack, "samples": len(result["ack"]),
         "/ no-op p50": ack["p50_ms"] / base["p50_ms"],
         "/ no-op p99": ack["p99_ms"] / base["p99_ms"]},
        {"call": "no-op call (plain actor)", **common, **base, "samples": len(result["noop"]),
         "/ no-op p50": 1.0, "/ no-op p99": 1.0},
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure (``quick``: 4 stages, 3 rounds, 1 kill); returns the rows described above."""
    import ray

    started = not ray.is_initialized()
    if started:
        # A named namespace: the scheduler is detached, and Ray prints a warning on stdout
        # (which --json owns) for a detached actor in an anonymous one.
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 1024 * 1024, namespace="blockpoint-bench")
    sizes = [(4, 3, 1)] if quick else [(12, 30, 4), (100, 10, 10)]
    try:
        rows: list[dict[str, Any]] = []
        for n, rounds, kills in sizes:
            rows.extend(rows_for(run_load(n, rounds, kills)))
        return rows
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
