"""Pipelines on a real local Ray: exactly-once output across killed stages (A8-style).

Committed output is compared record for record with a failure-free reference computed in
process (``run_reference``); failures are real: ``ray.kill`` of a stage actor mid-run, and a
stage SIGKILLed inside its own checkpoint flush.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import ray.cloudpickle

from blockstore import open_store
from stages.actors.actor import StageSpec
from stages.checkpoint.policy import CheckpointPolicy
from stages.errors import CheckpointEncodeError
from stages.pipeline.pipeline import (
    Pipeline,
    PipelineEvent,
    StageProcessError,
    run_reference,
)
from stages.pipeline.runs import RunClaimConflict, RunNotPausedError, RunStore
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray


def _specs(store: str, agg: Any = RunningAggregate) -> list[StageSpec]:
    return [StageSpec("agg", agg, store, block_size=64 * 1024, lease_ttl=30.0),
            StageSpec("seq", functools.partial(Enrich, True, "sum"), store, block_size=64 * 1024,
                      lease_ttl=30.0)]


def _pipeline(tmp_path: Path, n: int, **kw: Any) -> tuple[Pipeline, FileSink, GeneratedSource]:
    src = GeneratedSource(seed=11, n=n, keys=7)
    sink = FileSink(tmp_path / "out", fsync=False)
    kw.setdefault("policy", CheckpointPolicy(every_records=400))
    p = Pipeline(src, kw.pop("specs", None) or _specs(str(tmp_path / "store")), sink,
                 batch_size=50, max_in_flight=4, **kw)
    return p, sink, src


def test_failure_free_run_matches_reference_and_records_steps(ray_local: None,
                                                              tmp_path: Path) -> None:
    p, sink, src = _pipeline(tmp_path, 2000, run_id="ok", keep_steps=1000)
    res = p.run()
    ref = run_reference(src, p.specs)
    assert len(ref) > 500 and sink.read_all() == ref
    assert res.finished and res.recoveries == 0 and res.records_in == 2000
    n = res.committed_step
    assert res.records_out == len(ref) and n >= 3 and res.checkpoints == 2 * n
    runs = RunStore(open_store(str(tmp_path / "store")))
    steps = runs.list_steps("ok")
    assert [s.step for s in steps] == list(range(1, n + 1))
    positions = [s.source_position for s in steps]
    assert positions == sorted(positions) and positions[-1] == 2000 and positions[0] >= 400
    assert sum(s.meta["records_in"] for s in steps) == 2000
    assert sum(s.meta["records_out"] for s in steps) == len(ref)
    assert {c.stage_id for c in steps[-1].stages} == {"agg", "seq"}
    assert runs.status("ok").state == "finished"
    assert sink.committed_steps() == list(range(1, n + 1))


def test_storage_stays_bounded_over_many_steps(ray_local: None, tmp_path: Path) -> None:
    """A11 for pipelines: stage generations and run step records are both pruned, so the
    store stops growing however many steps commit."""
    p, sink, src = _pipeline(tmp_path, 6000, run_id="long",
                             policy=CheckpointPolicy(every_records=100))
    sizes: list[int] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step and ev.step % 3 == 0:
            with open_store(str(tmp_path / "store")) as st:
                sizes.append(st.stats().blocks)

    p.on_event = on_event
    res = p.run()
    assert res.finished and res.committed_step >= 15
    assert sink.read_all() == run_reference(src, p.specs)
    runs = RunStore(open_store(str(tmp_path / "store")))
    kept = [s.step for s in runs.list_steps("long")]
    assert kept == [res.committed_step - 1, res.committed_step]   # retention 2 (default)
    assert len(sizes) >= 5 and max(sizes[1:]) == sizes[1], sizes    # flat after warm-up


def test_killed_stage_mid_run_exactly_once(ray_local: None, tmp_path: Path) -> None:
    killed: list[int] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not killed:
            killed.append(ray.get(p.handles["agg"].info.remote())["pid"])
            ray.kill(p.handles["agg"], no_restart=True)

    p, sink, src = _pipeline(tmp_path, 3000, on_event=on_event)
    res = p.run()
    assert killed and res.recoveries >= 1 and res.relaunches >= 1
    assert sink.read_all() == run_reference(src, p.specs)  # none lost, none duplicated
    rollbacks = [e for e in res.events if e.kind == "rollback"]
    assert rollbacks and rollbacks[0].step >= 2
    assert res.records_in == 3000


def test_outputs_reach_the_sink_writer_not_the_driver_and_a_lost_writer_is_replaced(
        ray_local: None, tmp_path: Path) -> None:
    """A FileSink commits in the pipeline's sink writer (``stages/pipeline/sink_writer.py``):
    the last stage returns its output encoded for the sink, the driver sees none of it. The
    writer SIGKILLed after step 2's commit: the next commit fails, the driver starts a new
    writer at the rewind and replays from step 2, and the committed output is exact."""
    killed: list[int] = []
    seen: list[Any] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not killed:
            pid = ray.get(p._writer.__ray_call__.remote(lambda w: os.getpid()))
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    p, sink, src = _pipeline(tmp_path, 3000, on_event=on_event)
    assert p.remote_commit and set(p._encoders) == {"seq"}
    get = p._get

    def spying_get(ref: Any, sid: Any) -> Any:  # what the driver gets
        out = get(ref, sid)
        seen.append(out)
        return out

    p._get = spying_get  # type: ignore[method-assign]
    res = p.run()
    assert killed and res.recoveries >= 1
    assert sink.read_all() == run_reference(src, p.specs)
    assert res.records_in == 3000 and res.records_out == len(sink.read_all())
    # Counts, infos and the writer's answers; never a batch of records.
    assert not [x for x in seen if isinstance(x, list) and x and isinstance(x[0], dict)]


class ExplodesLast(Enrich):
    def process(self, state: dict[str, int], record: dict[str, Any]) -> Any:
        if record["i"] == 321:
            raise ValueError("bad record 321 in the last stage")
        return super().process(state, record)


def test_output_stage_exception_through_the_writer_names_it(ray_local: None,
                                                           tmp_path: Path) -> None:
    """The output stage's own error reaches the driver through the writer's take as the
    same ``StageProcessError`` a get of the output raised; nothing is committed."""
    store = str(tmp_path / "store")
    specs = [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=30.0),
             StageSpec("last", ExplodesLast, store, block_size=64 * 1024, lease_ttl=30.0)]
    p, sink, _ = _pipeline(tmp_path, 500, specs=specs, policy=CheckpointPolicy())
    with pytest.raises(StageProcessError, match="bad record 321"):
        p.run()
    assert sink.committed_steps() == []


class QuotaExceeded(OSError):
    """A sink error whose class cannot be rebuilt from a pickle (a keyword-only argument)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class FullDisk(FileSink):
    commit_anywhere = True  # opted in again: its commit runs in the sink writer

    def commit(self, step: int, records: Any, *, token: Any = None) -> None:
        if step >= 2:
            raise QuotaExceeded(f"quota exceeded writing step {step}", path="/x")
        super().commit(step, records, token=token)


class SlowDisk(FileSink):
    commit_anywhere = True

    def _write_step(self, step: int, records: Any, *, visible: bool) -> None:
        import time
        time.sleep(6.0)  # longer than the pipeline's call_timeout below
        super()._write_step(step, records, visible=visible)


class Audited(FileSink):
    """A subclass that does not say commit_anywhere: its commit stays in the driver."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.audit: list[int] = []

    def commit(self, step: int, records: Any, *, token: Any = None) -> None:
        self.audit.append(step)
        super().commit(step, records, token=token)


def test_the_sink_writer_keeps_the_driver_s_semantics(ray_local: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review of the sink writer: (1) a relative sink directory was resolved in
    the writer's working directory (output written elsewhere, or lost); (2) a FileSink
    subclass inherited commit_anywhere, so its commit's side effects happened in the
    writer's copy; (3) a sink error that cannot be rebuilt from a pickle came back as an
    unreadable reply, taken for a lost writer and replayed until max_recoveries; (4) a
    commit slower than call_timeout was taken for a lost stage. Now: the directory is
    absolute, a subclass commits in the driver unless it opts in, such an error is a
    SinkCommitError naming it (not replayed), and a slow commit just takes its time."""
    from stages.errors import SinkCommitError

    def store(name: str) -> str:  # a store per run: each run's stages start afresh
        return str(tmp_path / f"store-{name}")

    monkeypatch.chdir(tmp_path)
    rel = FileSink("relative-out", fsync=False)
    assert rel.directory == tmp_path / "relative-out"
    src = GeneratedSource(seed=11, n=600, keys=7)
    p = Pipeline(src, _specs(store("rel")), rel, batch_size=50, max_in_flight=4, run_id="rel",
                 policy=CheckpointPolicy(every_records=200))
    assert p.remote_commit
    res = p.run()
    assert res.finished and rel.read_all() == run_reference(src, p.specs)

    audited = Audited(tmp_path / "audited", fsync=False)
    p = Pipeline(src, _specs(store("aud")), audited, batch_size=50, max_in_flight=4, run_id="aud",
                 policy=CheckpointPolicy(every_records=200))
    assert not p.remote_commit
    res = p.run()
    assert audited.audit == list(range(1, res.committed_step + 1))

    p = Pipeline(src, _specs(store("full")), FullDisk(tmp_path / "full", fsync=False), batch_size=50,
                 max_in_flight=4, run_id="full", policy=CheckpointPolicy(every_records=200))
    assert p.remote_commit
    with pytest.raises(SinkCommitError, match="QuotaExceeded: quota exceeded writing step 2"):
        p.run()

    slow = SlowDisk(tmp_path / "slow", fsync=False)
    p = Pipeline(src, _specs(store("slow")), slow, batch_size=50, max_in_flight=4, run_id="slow",
                 policy=CheckpointPolicy(), call_timeout=5.0)
    res = p.run()
    assert res.finished and res.recoveries == 0
    assert slow.read_all() == run_reference(src, p.specs)


class SelfCwdSink(FileSink):
    commit_anywhere = True  # opted in; its directory is another one in every process


def test_a_writer_that_sees_other_files_leaves_the_commit_to_the_driver(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the review: a driver whose view of the files differs from its node's
    processes (Ray Client, a container) would have its output committed where the writer
    sees the path. The writer's view of each sink directory (device, inode) is compared
    with the driver's first: ``/proc/self/cwd/out`` is this test's directory in the driver
    and another in the writer, so the driver commits, and the output is where it looks."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    sink = SelfCwdSink("/proc/self/cwd/out", fsync=False)
    src = GeneratedSource(seed=11, n=600, keys=7)
    p = Pipeline(src, _specs(str(tmp_path / "store")), sink, batch_size=50, max_in_flight=4,
                 policy=CheckpointPolicy(every_records=200))
    assert p.remote_commit
    res = p.run()
    assert not p.remote_commit and p._writer is None  # it fell back, once
    assert res.finished and sink.read_all() == run_reference(src, p.specs)
    assert sorted(x.name for x in (tmp_path / "out").glob("step-*"))


class BigAggregate(RunningAggregate):
    """RunningAggregate whose state also carries 2 MiB of incompressible bytes."""

    def initial_state(self) -> dict[str, Any]:
        return {"agg": {}, "pad": np.random.default_rng(0).bytes(2 << 20)}

    def process(self, state: dict[str, Any], record: dict[str, Any]) -> Any:
        return super().process(state["agg"], record)


class KillInFlush:
    """SIGKILLs the stage holding ``lease_id`` inside its ``at``-th flush, once (marker)."""

    def __init__(self, lease_id: str, at: int, marker: str) -> None:
        self.lease_id, self.at, self.marker = lease_id, at, marker
        self.flushes = 0

    def on_flush_start(self, lease_id: str) -> None:
        if lease_id != self.lease_id:
            return
        self.flushes += 1
        if self.flushes == self.at and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        pass


def test_stage_killed_in_its_own_flush_recovers_from_previous_step(ray_local: None,
                                                                    tmp_path: Path) -> None:
    store_dir = str(tmp_path / "store")
    specs = _specs(store_dir, agg=BigAggregate)
    store = open_store(store_dir, block_size=64 * 1024)
    with store.acquire("agg", ttl=1) as lease:  # learn the stage's lease id up front
        lease_id = lease.lease_id
    marker = str(tmp_path / "killed")
    p, sink, src = _pipeline(tmp_path, 2400, specs=specs,
                             observer=KillInFlush(lease_id, at=3, marker=marker))
    res = p.run()
    assert os.path.exists(marker)
    failure = next(e for e in res.events if e.kind == "failure")
    assert failure.step == 2  # step 3's flush was the one killed: back to step 2
    relaunch = next(e for e in res.events if e.kind == "relaunched")
    assert relaunch.stage_id == "agg" and relaunch.step == 2
    assert sink.read_all() == run_reference(src, specs)
    assert res.finished


class Exploding(RunningAggregate):
    def process(self, state: dict[str, list[int]], record: dict[str, Any]) -> Any:
        if record["i"] == 123:
            raise ValueError("bad record 123")
        return super().process(state, record)


def test_stage_exception_is_not_replayed_forever(ray_local: None, tmp_path: Path) -> None:
    p, sink, _ = _pipeline(tmp_path, 500, specs=_specs(str(tmp_path / "store"), Exploding))
    with pytest.raises(StageProcessError, match="bad record 123"):
        p.run()
    assert sink.committed_steps() == []


class GrabsALock(RunningAggregate):
    """Its state takes a lock at record 300: no checkpoint after that can be pickled."""

    def process(self, state: dict[str, Any], record: dict[str, Any]) -> Any:
        if record["i"] == 300:
            import threading
            state["lock"] = threading.Lock()
        return super().process(state, record)


def test_unencodable_state_fails_at_once_naming_the_stage(ray_local: None,
                                                          tmp_path: Path) -> None:
    """A state the codec refuses is the stage's code, not a lost stage: replaying the same
    records builds the same state. ``CheckpointEncodeError`` naming the stage at the first
    checkpoint that fails, with no relaunch or recovery (it was 20 recoveries)."""
    events: list[PipelineEvent] = []
    p, sink, _ = _pipeline(tmp_path, 2000, specs=_specs(str(tmp_path / "store"), GrabsALock),
                           policy=CheckpointPolicy(every_records=200), on_event=events.append)
    with pytest.raises(CheckpointEncodeError) as err:
        p.run()
    message = str(err.value)
    assert message.startswith("stage 'agg': checkpoint of "), message
    assert "TypeError: cannot pickle '_thread.lock' object" in message, message
    assert err.value.lease_id
    assert not [e for e in events if e.kind in ("failure", "relaunched", "recovered")], events
    assert sink.committed_steps() == [1]  # step 1 (records before 300) stays committed


def test_driver_restart_resumes_from_last_commit(ray_local: None, tmp_path: Path) -> None:
    p, sink, src = _pipeline(tmp_path, 2000, run_id="resume")
    first = p.run(max_steps=2)
    assert not first.finished and first.committed_step == 2
    sink.commit(3, [{"junk": True}])  # output of a step no run record committed
    p2, sink2, _ = _pipeline(tmp_path, 2000, run_id="resume")
    second = p2.run()
    assert second.finished and first.records_in + second.records_in == 2000
    assert sink2.read_all() == run_reference(src, p.specs)


def test_pause_then_resume_exactly_once(ray_local: None, tmp_path: Path) -> None:
    p, sink, src = _pipeline(tmp_path, 1600, run_id="pz")
    first = p.run(max_steps=1, pause=True)
    runs = p.runs
    st = runs.status("pz")
    assert (st.state, st.step) == ("paused", first.committed_step)
    with pytest.raises(RunNotPausedError):
        _pipeline(tmp_path, 1600, run_id="pz")[0].run()  # paused: only a claim resumes it
    claim = runs.claim("pz", driver="resumer")
    with pytest.raises(RunClaimConflict):
        runs.claim("pz", driver="other")  # ... once
    p2, sink2, _ = _pipeline(tmp_path, 1600, run_id="pz")
    res = p2.run(claim=claim)
    assert claim.done and res.finished
    st = runs.status("pz")
    assert st.state == "finished" and st.resumes == 1
    assert sink2.read_all() == run_reference(src, p.specs)
    with pytest.raises(RunNotPausedError):
        runs.claim("pz", driver="late")  # no double resume


class CountingSource:
    """Wraps a source; records how many batches the pipeline had outstanding at each read."""

    def __init__(self, inner: GeneratedSource) -> None:
        self.inner = inner
        self.pipeline: Pipeline | None = None
        self.outstanding: list[int] = []

    def initial_position(self) -> int:
        return self.inner.initial_position()

    def read(self, position: Any, max_n: int) -> tuple[list[Any], Any]:
        assert self.pipeline is not None
        self.outstanding.append(len(self.pipeline._batches))
        return self.inner.read(position, max_n)


class Slow(RunningAggregate):
    def process(self, state: dict[str, list[int]], record: dict[str, Any]) -> Any:
        import time
        time.sleep(0.0005)
        return super().process(state, record)


def test_backpressure_bounds_batches_in_flight(ray_local: None, tmp_path: Path) -> None:
    src = CountingSource(GeneratedSource(seed=3, n=1500))
    specs = _specs(str(tmp_path / "store"), Slow)
    sink = FileSink(tmp_path / "out", fsync=False)
    p = Pipeline(src, specs, sink, batch_size=20, max_in_flight=3,  # type: ignore[arg-type]
                 policy=CheckpointPolicy(every_records=300))
    src.pipeline = p
    p.run()
    assert max(src.outstanding) == 2  # a read happens only while fewer than 3 are in flight
    assert len(src.outstanding) >= 1500 // 20
    assert sink.read_all() == run_reference(src.inner, specs)


def test_scheduler_restores_lost_stage_for_the_pipeline(ray_local: None, tmp_path: Path) -> None:
    """With the scheduler actor as relaunch hook and flush observer (stages register)."""
    from scheduler.actor import get_or_create
    from scheduler.hooks import SchedulerRegistrar, SchedulerRestore
    from scheduler.observer import PreemptionCheckpointObserver

    store = str(tmp_path / "store")
    sched = get_or_create("pl-sched", store_url=store, auto_restore=False)
    try:
        specs = [StageSpec(s.stage_id, s.factory, store, block_size=s.block_size,
                           lease_ttl=30.0, registrar=SchedulerRegistrar("pl-sched"))
                 for s in _specs(store)]
        killed: list[bool] = []

        def on_event(ev: PipelineEvent) -> None:
            if ev.kind == "commit" and ev.step == 2 and not killed:
                killed.append(True)
                ray.kill(p.handles["agg"], no_restart=True)

        p, sink, src = _pipeline(
            tmp_path, 2400, specs=specs, on_event=on_event,
            on_stage_lost=SchedulerRestore("pl-sched", timeout=60),
            # a slow liveness probe of a surviving stage must not count as a second loss
            ping_timeout=30.0,
            observer_for=lambda spec: PreemptionCheckpointObserver(spec.stage_id, "pl-sched"))
        res = p.run()
        assert killed and res.relaunches == 1
        assert sink.read_all() == run_reference(src, specs)
        restores = [d for d in ray.get(sched.decisions.remote())
                    if d["kind"] == "restore" and d["outcome"] == "done"]
        assert [d["victims"] for d in restores] == [["agg"]]
    finally:
        ray.kill(sched, no_restart=True)


def test_barrier_triggers_time_manual_and_final(ray_local: None, tmp_path: Path) -> None:
    # No trigger at all: only the final barrier closes the stream -> one step.
    p, sink, src = _pipeline(tmp_path / "a", 600, policy=CheckpointPolicy())
    assert p.run().committed_step == 1 and sink.read_all() == run_reference(src, p.specs)

    # A manual request right at start: a barrier after the first batch, then the final one.
    def ask(ev: PipelineEvent) -> None:
        if ev.kind == "started":
            p2.request_checkpoint("before something risky")

    p2, sink2, _ = _pipeline(tmp_path / "b", 600, policy=CheckpointPolicy(), on_event=ask)
    res = p2.run()
    assert res.committed_step == 2
    first = next(e for e in res.events if e.kind == "barrier")
    assert first.detail["source_position"] == 50  # one batch in
    assert sink2.read_all() == run_reference(src, p.specs)

    # Time trigger with an injected clock that jumps 10 s per reading.
    ticks = iter(range(0, 10**6, 10))
    p3, sink3, _ = _pipeline(tmp_path / "c", 600, policy=CheckpointPolicy(every_seconds=5.0),
                             clock=lambda: float(next(ticks)))
    assert p3.run().committed_step >= 3
    assert sink3.read_all() == run_reference(src, p.specs)


def test_preempted_stage_checkpoint_then_stop_exactly_once(ray_local: None,
                                                          tmp_path: Path) -> None:
    """What the scheduler does to a victim: shutdown(checkpoint=True), then kill."""
    done: list[Any] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not done:
            victim = p.handles["agg"]
            done.append(ray.get(victim.shutdown.remote(checkpoint=True)))
            ray.get(p.handles["seq"].process_batch.remote([]))  # (other stage unaffected)

    p, sink, src = _pipeline(tmp_path, 2400, on_event=on_event)
    res = p.run()
    assert done and done[0]["skipped"] and done[0]["step"] == 2  # no mid-step generation
    assert res.recoveries >= 1 and res.relaunches >= 1
    assert sink.read_all() == run_reference(src, p.specs)


# -- asynchronous barrier checkpoints (StageSpec(async_checkpoints=True)) --------------------
def _async_specs(store: str, agg: Any = BigAggregate) -> list[StageSpec]:
    return [StageSpec(s.stage_id, s.factory if s.stage_id != "agg" else agg, store,
                      block_size=s.block_size, lease_ttl=s.lease_ttl, compression="none",
                      async_checkpoints=True) for s in _specs(store)]


class KillDuringFlush(KillInFlush):
    """SIGKILLs the stage in its ``at``-th flush - a background one: the barrier was
    acknowledged already - once (marker): at the flush's start (nothing written yet) or at
    its completion (the header is durable, but ``flushed`` never answered)."""

    def __init__(self, lease_id: str, at: int, marker: str, where: str) -> None:
        super().__init__(lease_id, at, marker)
        self.where = where

    def _maybe_kill(self, lease_id: str, where: str) -> None:
        if lease_id != self.lease_id or where != self.where:
            return
        self.flushes += 1
        if self.flushes == self.at and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_flush_start(self, lease_id: str) -> None:
        self._maybe_kill(lease_id, "start")

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        self._maybe_kill(lease_id, "complete")


def test_async_checkpoints_pipeline_exactly_once(ray_local: None, tmp_path: Path) -> None:
    specs = _async_specs(str(tmp_path / "store"))
    p, sink, src = _pipeline(tmp_path, 2400, specs=specs, run_id="async")
    res = p.run()
    assert res.finished and res.recoveries == 0
    assert sink.read_all() == run_reference(src, specs)
    n = res.committed_step
    # (The records trigger counts from each commit, which waits for the flushes, while the
    # source keeps being read: how many steps a run has depends on how long the flushes
    # take. Under load all records after the first barrier may land in the final step, so
    # two steps is all a run is sure to have - a loaded run once had exactly two.)
    assert n >= 2 and res.checkpoints == 2 * n
    commits = [e for e in res.events if e.kind == "commit"]
    # Every committed step names the durable generation of every stage (not an ack).
    assert all(set(e.detail["generations"]) == {"agg", "seq"}
               and None not in e.detail["generations"].values() for e in commits)
    steps = p.runs.list_steps("async")
    assert {c.stage_id: c.generation for c in steps[-1].stages}["agg"] is not None
    with open_store(str(tmp_path / "store")) as st:
        from stages import CheckpointedStageState
        back = CheckpointedStageState.restore(st.open_reader("agg"))
        assert back.restored.step == n


@pytest.mark.parametrize("where", ["start", "complete"])
def test_stage_killed_during_background_flush_recovers_previous_step(
        ray_local: None, tmp_path: Path, where: str) -> None:
    store_dir = str(tmp_path / "store")
    specs = _async_specs(store_dir)
    store = open_store(store_dir, block_size=64 * 1024)
    with store.acquire("agg", ttl=1) as lease:
        lease_id = lease.lease_id
    marker = str(tmp_path / "killed")
    p, sink, src = _pipeline(tmp_path, 2400, specs=specs,
                             observer=KillDuringFlush(lease_id, at=2, marker=marker,
                                                      where=where))
    res = p.run()
    assert os.path.exists(marker)
    failure = next(e for e in res.events if e.kind == "failure")
    # Step 2's background flush was the one killed: it was acknowledged, but never
    # committed (even when its header was durable: the driver had not heard so); every
    # stage went back to step 1 and the source replayed from there. (Step 2, not 3: how many
    # steps a run has depends on how long the flushes take - the records trigger counts from
    # each commit - but every run has at least two: the first barrier at 400 records and the
    # final one. Under load a third never came and the kill never happened.)
    assert failure.step == 1
    relaunch = next(e for e in res.events if e.kind == "relaunched")
    assert relaunch.stage_id == "agg" and relaunch.step == 1
    rollback = next(e for e in res.events if e.kind == "rollback")
    assert rollback.step == 1 and set(rollback.detail["restored_steps"].values()) == {1}
    assert sink.read_all() == run_reference(src, specs)
    assert res.finished and res.replayed_records > 0


def test_a_checkpoint_requested_while_a_barrier_runs_gets_a_barrier_of_its_own(
        ray_local: None, tmp_path: Path) -> None:
    """``request_checkpoint`` while a barrier is on its way covers what came after it: a
    barrier follows once that one commits (it was folded into the running one before, so
    nothing after it was committed until the end)."""
    asked: list[int] = []
    barriers: list[tuple[int, int]] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "barrier":
            barriers.append((ev.step, ev.detail["source_position"]))
            if not asked:
                asked.append(ev.step)
                p.request_checkpoint("after the first barrier")

    p, sink, src = _pipeline(tmp_path, 3000, policy=CheckpointPolicy(), on_event=on_event)
    p.request_checkpoint("at the start")
    res = p.run()
    assert res.finished and sink.read_all() == run_reference(src, p.specs)
    assert asked == [1] and len(barriers) == 3, barriers  # asked, asked again, the final one
    assert 0 < barriers[0][1] < barriers[1][1] < barriers[2][1] == 3000
