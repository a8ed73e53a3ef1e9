"""Stage actors: lease by force (fencing), restore, rollback, control group, registration.

In-process first (the actor is a plain class), then on a real local Ray: launch, process,
checkpoint, ray.kill, relaunch from the spec -> state restored under a higher epoch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import ray
import ray.cloudpickle

from blockstore import open_store
from polling import wait_for
from scheduler.hooks import SchedulerRegistrar
from stages import CheckpointFailed
from stages.actors.actor import (
    RollbackUnavailable,
    StageActor,
    StageRegistration,
    StageSpec,
    actor_options,
    launch_stage,
)
from stages.pipeline.source import GeneratedSource, RunningAggregate

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SRC = GeneratedSource(seed=7, n=400, keys=5)


def _spec(store_dir: str, stage_id: str = "agg", **kw: object) -> StageSpec:
    return StageSpec(stage_id=stage_id, factory=RunningAggregate, store_url=store_dir,
                     block_size=4096, lease_ttl=30.0, **kw)  # type: ignore[arg-type]


def _expected(upto: int) -> dict[str, list[int]]:
    st: dict[str, list[int]] = {}
    agg = RunningAggregate()
    for r in SRC.read(0, upto)[0]:
        list(agg.process(st, r))
    return st


def test_in_process_restore_fencing_rollback(store_dir: str) -> None:
    spec = _spec(store_dir)
    a = StageActor(spec)
    assert a.info()["restored_from"] is None and a.get_state() == {}
    out = a.process_batch(SRC.read(0, 100)[0])
    assert [o["i"] for o in out] == list(range(100))
    info1 = a.checkpoint(step=1, meta={"source_position": 100})
    assert info1["step"] == 1 and a.info()["records_since_checkpoint"] == 0
    a.process_batch(SRC.read(100, 100)[0])
    a.checkpoint(step=2, meta={"source_position": 200})
    a.process_batch(SRC.read(200, 50)[0])
    assert a.info()["records_since_checkpoint"] == 50

    b = StageActor(spec)  # a new incarnation: steals the lease, fences a
    assert b.info()["epoch"] == a.info()["epoch"] + 1
    assert b.get_state() == _expected(200) and b.info()["restored_step"] == 2
    assert b.info()["meta"] == {"source_position": 200}
    with pytest.raises(CheckpointFailed):
        a.checkpoint(step=3)  # the zombie cannot write
    assert StageActor(spec).get_state() == _expected(200)  # a's attempt left nothing behind

    c = StageActor(spec)
    c.process_batch(SRC.read(200, 10)[0])
    c.rollback(1)  # pipeline rollback to committed step 1
    assert c.get_state() == _expected(100) and c.info()["restored_step"] == 1
    c.process_batch(SRC.read(100, 100)[0])
    c.checkpoint(step=2)  # rewrites step 2 over the stale generation, keeps step 1
    assert c.rollback(1)["restored_step"] == 1
    assert c.rollback(0)["restored_from"] is None and c.get_state() == {}
    assert c.shutdown(checkpoint=True) is None  # aligned, and no barrier since step 0
    assert c.shutdown() is None  # twice is harmless
    with pytest.raises(Exception, match="stopped"):
        c.process_batch([])
    assert StageActor(spec, restore_step=0).get_state() == {}
    assert StageActor(spec).info()["restored_step"] == 2  # newest, for a non-pipeline restore


def test_rollback_unavailable_when_retention_dropped_it(store_dir: str) -> None:
    spec = _spec(store_dir, retention=2)
    a = StageActor(spec)
    for step in (1, 2, 3):
        a.process_batch(SRC.read((step - 1) * 10, 10)[0])
        a.checkpoint(step=step)
    with pytest.raises(RollbackUnavailable) as e:
        a.rollback(1)
    assert e.value.step == 1 and e.value.stage_id == "agg"
    assert a.rollback(2)["restored_step"] == 2


def test_actor_options() -> None:
    spec = StageSpec("s", RunningAggregate, "/x", resources={"num_cpus": 0.5, "memory": 1e6,
                                                            "special": 1})
    opts = actor_options(spec, name="n")
    assert opts["num_cpus"] == 0.5 and opts["memory"] == 1e6
    assert opts["resources"] == {"special": 1.0} and opts["max_restarts"] == 0
    assert opts["name"] == "n" and "scheduling_strategy" not in opts
    pinned = actor_options(spec, node_id="ab" * 28, soft=True)
    assert pinned["scheduling_strategy"].soft is True


class BlockingObserver:
    """Blocks the flush start until ``release`` exists; records calls in ``log``."""

    def __init__(self, release: str, log: str) -> None:
        self.release = release
        self.log = log

    def on_flush_start(self, lease_id: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"start {lease_id}\n")
        while not os.path.exists(self.release):
            time.sleep(0.01)

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        with open(self.log, "a") as f:
            f.write(f"complete {lease_id} {ok}\n")


@ray.remote
class Registry:
    def __init__(self) -> None:
        self.seen: list[StageRegistration] = []

    def register(self, reg: StageRegistration) -> None:
        self.seen.append(reg)

    def get(self) -> list[StageRegistration]:
        return self.seen


@pytest.mark.ray
def test_launch_kill_relaunch_restores_and_fences(ray_local: None, store_dir: str) -> None:
    spec = _spec(store_dir)
    h = launch_stage(spec)
    out = ray.get([h.process_batch.remote(SRC.read(i, 50)[0]) for i in range(0, 200, 50)])
    assert [o["i"] for batch in out for o in batch] == list(range(200))  # in order
    ckpt = ray.get(h.checkpoint.remote(step=1, meta={"source_position": 200}))
    assert ckpt["step"] == 1
    first = ray.get(h.info.remote())
    assert first["node_id"] == ray.get_runtime_context().get_node_id()
    ray.get(h.process_batch.remote(SRC.read(200, 100)[0]))  # lost with the actor
    ray.kill(h, no_restart=True)

    h2 = launch_stage(spec)
    second = ray.get(h2.info.remote())
    assert second["epoch"] > first["epoch"] and second["pid"] != first["pid"]
    assert second["restored_step"] == 1 and second["meta"] == {"source_position": 200}
    assert ray.get(h2.get_state.remote()) == _expected(200)
    # A zombie incarnation (still alive) is fenced by the next one.
    h3 = launch_stage(spec)
    assert ray.get(h3.info.remote())["epoch"] == second["epoch"] + 1
    with pytest.raises(CheckpointFailed):
        ray.get(h2.checkpoint.remote(step=2))
    assert ray.get(h3.checkpoint.remote(step=2))["step"] == 2
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(h3.stop.remote(checkpoint=False))
    assert not open_store(store_dir).find("agg").is_held()  # stop released the lease
    ray.kill(h2, no_restart=True)


@pytest.mark.ray
def test_info_answers_during_flush_and_registration(ray_local: None, store_dir: str,
                                                    tmp_path: Path) -> None:
    registry = Registry.options(name="test-sched").remote()
    release, log = str(tmp_path / "release"), str(tmp_path / "log")
    spec = _spec(store_dir, stage_id="blk", registrar=SchedulerRegistrar("test-sched"),
                 priority=3)
    h = launch_stage(spec, observer=BlockingObserver(release, log))
    ray.get(h.process_batch.remote(SRC.read(0, 30)[0]))
    ref = h.checkpoint.remote(step=1)
    wait_for(lambda: os.path.exists(log) and "start" in Path(log).read_text(),
             what="the flush started (held by the observer)")
    info = ray.get(h.info.remote(), timeout=60)  # the control group answers mid-flush
    assert ray.wait([ref], timeout=0)[0] == []  # ...while the flush is still blocked
    assert info["records_since_checkpoint"] == 30
    Path(release).touch()
    assert ray.get(ref)["step"] == 1
    lines = Path(log).read_text().split()
    assert lines == ["start", info["lease_id"], "complete", info["lease_id"], "True"]
    # The registration is sent fire-and-forget from the stage: wait until it landed.
    regs = wait_for(lambda: ray.get(registry.get.remote()), what="the registration landed")
    assert len(regs) == 1
    reg = regs[0]
    assert (reg.stage_id, reg.priority, reg.lease_id, reg.epoch) == \
        ("blk", 3, info["lease_id"], info["epoch"])
    assert ray.get(reg.actor.ping.remote()) == "blk"
    ray.kill(h, no_restart=True)


@pytest.mark.ray
def test_plain_ray_remote_of_stage_actor_works(ray_local: None, store_dir: str) -> None:
    spec = _spec(store_dir, stage_id="plain")
    h = ray.remote(StageActor).options(**actor_options(spec)).remote(spec, None)
    assert len(ray.get(h.process_batch.remote(SRC.read(0, 5)[0]))) == 5
    assert ray.get(h.info.remote())["records_total"] == 5
    ray.kill(h, no_restart=True)


def test_aligned_stage_skips_out_of_band_checkpoints(store_dir: str) -> None:
    plain = StageActor(_spec(store_dir, stage_id="plain"))
    assert not plain.aligned and plain.checkpoint()["generation"] == 1  # plain: writes
    spec = _spec(store_dir, stage_id="al")
    a = StageActor(spec, restore_step=0)  # launched by a pipeline
    assert a.aligned and a.checkpoint() == {}  # nothing at a barrier yet: nothing written
    a.process_batch(SRC.read(0, 40)[0])
    barrier = a.checkpoint(step=1, meta={"source_position": 40})
    a.process_batch(SRC.read(40, 40)[0])
    oob = a.checkpoint()  # e.g. the scheduler's before a preemption
    assert oob["skipped"] and oob["generation"] == barrier["generation"]
    assert a.shutdown(checkpoint=True)["generation"] == barrier["generation"]
    b = StageActor(spec)  # restores the barrier state, not the 80-record state
    assert b.get_state() == _expected(40) and b.info()["restored_step"] == 1
    assert [g.step for g in b._css.generations()][:1] == [1]


@pytest.mark.parametrize("stage_id", ["agg\u202egnp", "agg\u200b", "a\u2067b\u2069", "a\nb"])
def test_stage_id_with_an_invisible_or_control_character_refused(store_dir: str,
                                                                 stage_id: str) -> None:
    """A stage id names its lease and tags its metrics and logs: refused when the spec is
    made (naming the code point), not by the store inside a Ray actor later."""
    from blockstore import LeaseNameError

    point = next(f"U+{ord(c):04X}" for c in stage_id if not c.isprintable())
    with pytest.raises(LeaseNameError) as err:
        StageSpec(stage_id, RunningAggregate, store_dir)
    assert str(err.value).startswith("stage id ") and point in str(err.value)


def test_stage_spec_max_state_bytes_bounds_its_restores(store_dir: str) -> None:
    """``StageSpec(max_state_bytes=N)`` reaches every restore of the stage (start, rollback):
    a generation declaring more is refused with ``CheckpointTooLarge`` before anything is
    allocated (the spec had no way to set the bound)."""
    from stages import CheckpointTooLarge

    a = StageActor(_spec(store_dir))
    a.process_batch(SRC.read(0, 200)[0])
    size = a.checkpoint(step=1)["data_length"]
    a.process_batch(SRC.read(200, 100)[0])
    a.checkpoint(step=2)
    with pytest.raises(CheckpointTooLarge) as e:
        StageActor(_spec(store_dir, max_state_bytes=size - 1), restore_step=1)
    assert e.value.limit == size - 1 and e.value.data_length == size
    assert StageActor(_spec(store_dir, max_state_bytes=size), restore_step=1).get_state() == \
        _expected(200)
    b = StageActor(_spec(store_dir, max_state_bytes=10 * size))
    assert b.get_state() == _expected(300) and b.info()["restored_step"] == 2
    with pytest.raises(ValueError, match="max_state_bytes"):
        StageActor(_spec(store_dir, max_state_bytes=-1))
