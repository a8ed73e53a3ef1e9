"""Fault matrix, load row: many stages checkpointing at once against one scheduler and one
store, with random stage kills (``docs/RELIABILITY.md``).

The scheduler launches every stage (detached, with its flush observer) and restores the ones
the test kills. The driver keeps every stage busy - a batch, then a checkpoint, round after
round - while a probe measures the scheduler's flush-start acknowledgement. Checked:

* every checkpoint a stage reported committed is restorable: after a kill the new
  incarnation restores a generation at least as new as the last one reported, with exactly
  the state that checkpoint held (nothing committed is lost);
* at the end every committed generation of every lease verifies (``verify_lease``), and each
  lease is bounded by retention (K slots + K generations of the largest state);
* the acknowledgement's p50 / p99 under that load are printed (a figure, not an assertion).

Default: 12 stages, 360 checkpoints, 4 kills (~30 s). ``--faults-full``: 100 stages, 1,000
checkpoints, 10 kills.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from blockstore import open_store
from scheduler import SchedulerRegistrar, get_or_create
from stages import CheckpointedStageState, verify_lease
from stages.actors.actor import StageSpec

pytestmark = pytest.mark.ray

# Workers cannot import this test module: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BLOCK = 16 * 1024


class Tally:
    """A stage whose state grows and shrinks: a running total and a payload of 0-6 blocks."""

    def initial_state(self) -> dict[str, Any]:
        return {"total": 0, "n": 0, "payload": np.zeros(0, dtype=np.uint8)}

    def process(self, state: dict[str, Any], record: int) -> list[int]:
        state["total"] += record
        state["n"] += 1
        size = (state["n"] * 7919) % (6 * BLOCK)
        state["payload"] = np.full(size, state["n"] % 251, dtype=np.uint8)
        return []


def _handle(sched: Any, sid: str, not_actor: str | None, timeout: float = 60.0) -> Any:
    """The stage's running incarnation (a new one, if ``not_actor`` names the old)."""
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
    raise AssertionError(f"{sid} was not restored within {timeout} s")


def test_many_stages_checkpointing_with_random_kills(ray_local: None, tmp_path: Path,
                                                     full: bool) -> None:
    n_stages, target, kills = (100, 1000, 10) if full else (12, 360, 4)
    store_url = str(tmp_path / "store")
    open_store(store_url, block_size=BLOCK).close()
    name = f"load-{uuid.uuid4().hex[:6]}"
    sched = get_or_create(name, store_url=store_url, poll_interval=0.2, retry_interval=0.5)
    registrar = SchedulerRegistrar(name)
    sids = [f"s{i:03d}" for i in range(n_stages)]
    specs = {sid: StageSpec(stage_id=sid, factory=Tally, store_url=store_url,
                            resources={"num_cpus": 0.01}, registrar=registrar,
                            lease_ttl=10.0) for sid in sids}
    ray.get([sched.launch.remote(spec) for spec in specs.values()])
    handles: dict[str, tuple[Any, str]] = {sid: _handle(sched, sid, None) for sid in sids}
    # Per stage: generation -> total, for every checkpoint it reported committed.
    committed: dict[str, dict[int, int]] = {sid: {} for sid in sids}
    totals = {sid: 0 for sid in sids}           # the live incarnation's total
    rng = random.Random(5)
    kill_at = sorted(rng.sample(range(target // 4, target), kills))
    acks: list[float] = []
    done = restores = step = 0
    while done < target:
        step += 1
        refs = {}
        for sid in sids:
            h, _ = handles[sid]
            k = rng.randrange(1, 6)
            totals[sid] += k
            h.process_batch.remote([1] * k)
            refs[sid] = h.checkpoint.remote(step=step)
        t = time.perf_counter()                 # the scheduler's ack under this load
        ray.get(sched.flush_started.remote("probe", "probe-lease", 0))
        acks.append(time.perf_counter() - t)
        for sid, ref in refs.items():
            try:
                info = ray.get(ref, timeout=60)
            except ray.exceptions.RayError:
                continue                         # killed: checked after its restore
            committed[sid][int(info["generation"])] = totals[sid]
            done += 1
            if kill_at and done >= kill_at[0]:
                kill_at.pop(0)
                victim = rng.choice(sids)
                old_handle, old_actor = handles[victim]
                ray.kill(old_handle, no_restart=True)
                handles[victim] = _handle(sched, victim, old_actor)
                restores += 1
                info = ray.get(handles[victim][0].info.remote())
                gen = info["generation"]
                last = max(committed[victim], default=None)
                # Nothing committed is lost: at least the last reported generation...
                assert last is None or (gen is not None and gen >= last), (victim, gen, last)
                state = ray.get(handles[victim][0].get_state.remote())
                if gen in committed[victim]:
                    # ...with exactly the state that checkpoint held.
                    assert state["total"] == committed[victim][gen], (victim, gen)
                totals[victim] = state["total"]
    assert restores == kills
    # Every committed generation of every lease verifies; storage is bounded by retention.
    with open_store(store_url) as store:
        for sid in sids:
            reports = verify_lease(store.open_reader(sid))
            assert not any(r.corrupt for r in reports), (sid, reports)
            assert any(r.status == "ok" for r in reports), sid
            info = store.lease_info(sid)
            largest = 6 * BLOCK // BLOCK + 2          # payload blocks + pickle framing + map
            assert info.num_blocks <= 2 + 2 * largest + 2, (sid, info.num_blocks)
            back = CheckpointedStageState.restore(store.open_reader(sid))
            assert back.state["total"] == committed[sid].get(back.restored.generation,
                                                             back.state["total"])
    acks.sort()
    p50 = statistics.median(acks)
    p99 = acks[min(len(acks) - 1, int(0.99 * len(acks)))]
    print(f"\nload: {n_stages} stages, {done} checkpoints in {step} rounds, {restores} kills "
          f"restored; flush-start ack under load p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    for sid in sids:
        ray.kill(handles[sid][0])
    ray.kill(sched)
