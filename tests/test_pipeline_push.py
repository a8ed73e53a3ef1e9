"""The push data path (issue 20 item 5): stages send their output to the next stages and
to the sink writer themselves; the driver feeds the first stages, injects barriers, commits.

Every test compares the committed output record for record with ``run_reference`` (the
driver path's calls, in its order, in this process): a chain, the diamond of
``test_pipeline_dag.py`` (fan-out, a keyed parallel stage, a union, two sinks) with and
without an instance killed mid-run, the source split for a keyed first stage, async
checkpoints. Also: a stage's exception three hops from the driver names that stage and
commits nothing; a slow stage holds at most the edge's bound of calls from its sender
(backpressure per edge); a sink that commits in the driver is refused with a reason.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from stages import SourceFileChanged, StageProcessError
from stages.actors.actor import StageSpec
from stages.checkpoint.policy import CheckpointPolicy
from stages.pipeline.pipeline import Pipeline, PipelineEvent, run_reference
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SMALL = {"num_cpus": 0.25}


def _spec(store: str, sid: str, factory: Any, **kw: Any) -> StageSpec:
    return StageSpec(sid, factory, store, block_size=64 * 1024, lease_ttl=30.0,
                     resources=SMALL, **kw)


def _chain(store: str, **kw: Any) -> list[StageSpec]:
    return [_spec(store, "a", Enrich, **kw), _spec(store, "b", RunningAggregate, **kw),
            _spec(store, "c", Enrich, **kw)]


def _diamond(store: str) -> list[StageSpec]:
    return [
        _spec(store, "parse", Enrich),
        _spec(store, "agg", RunningAggregate, inputs=("parse",), parallelism=2, key="key",
              max_parallelism=16),
        _spec(store, "tag", functools.partial(Enrich, True, "value"), inputs=("parse",)),
        _spec(store, "join", Enrich, inputs=("agg", "tag")),
    ]


@pytest.mark.ray
@pytest.mark.parametrize("path", ["push", "driver"])
def test_a_chain_commits_the_reference_on_either_path(ray_local: None, tmp_path: Path,
                                                      path: str) -> None:
    src = GeneratedSource(seed=3, n=3000, keys=16)
    sink = FileSink(tmp_path / "out", fsync=False)
    pipe = Pipeline(src, _chain(str(tmp_path / "store")), sink, batch_size=100,
                    max_in_flight=4, policy=CheckpointPolicy(every_records=500),
                    data_path=path)
    res = pipe.run()
    assert res.finished and res.recoveries == 0 and res.records_in == 3000
    assert sink.read_all() == run_reference(src, pipe.specs, batch_size=100)
    assert sink.committed_steps() == list(range(1, 7))
    assert res.checkpoints == 3 * 6


@pytest.mark.ray
@pytest.mark.parametrize("victim", [None, "agg@0of2", "join", "parse"])
def test_a_pushed_diamond_is_exact_with_or_without_a_kill(ray_local: None, tmp_path: Path,
                                                          victim: str | None) -> None:
    killed: list[str] = []

    def on_event(ev: PipelineEvent) -> None:
        if victim and ev.kind == "commit" and ev.step == 2 and not killed:
            killed.append(victim)
            ray.kill(pipe.handles[victim], no_restart=True)

    src = GeneratedSource(seed=9, n=2400, keys=24)
    sinks = {"join": FileSink(tmp_path / "join", fsync=False),
             "tag": FileSink(tmp_path / "tag", fsync=False)}
    pipe = Pipeline(src, _diamond(str(tmp_path / "store")), sinks, batch_size=50,
                    max_in_flight=4, policy=CheckpointPolicy(every_records=300),
                    on_event=on_event, data_path="push")
    res = pipe.run()
    ref = run_reference(src, pipe.specs, batch_size=50, outputs=["join", "tag"])
    assert sinks["join"].read_all() == ref["join"]  # none lost, none duplicated, in order
    assert sinks["tag"].read_all() == ref["tag"]
    assert res.finished and res.records_in == 2400
    if victim is None:
        assert res.recoveries == 0 and res.checkpoints == 5 * res.committed_step
    else:
        assert killed and res.recoveries >= 1
        assert victim in {e.stage_id for e in res.events if e.kind == "relaunched"}


@pytest.mark.ray
def test_the_source_split_for_a_keyed_first_stage_and_merged_after_it(
        ray_local: None, tmp_path: Path) -> None:
    """The driver splits each batch by key group for the 3 instances of ``agg``; ``last``
    gets 3 parts per call, from 3 senders, and runs them merged in input order."""
    store = str(tmp_path / "store")
    specs = [_spec(store, "agg", RunningAggregate, parallelism=3, key="key",
                   max_parallelism=16),
             _spec(store, "last", Enrich)]
    src = GeneratedSource(seed=5, n=2000, keys=20)
    sink = FileSink(tmp_path / "out", fsync=False)
    pipe = Pipeline(src, specs, sink, batch_size=64, max_in_flight=3,
                    policy=CheckpointPolicy(every_records=400), data_path="push")
    res = pipe.run()
    assert res.finished and res.recoveries == 0
    assert sink.read_all() == run_reference(src, pipe.specs, batch_size=64)
    assert res.checkpoints == 4 * res.committed_step


@pytest.mark.ray
def test_async_checkpoints_on_the_push_path(ray_local: None, tmp_path: Path) -> None:
    src = GeneratedSource(seed=4, n=2000, keys=8)
    sink = FileSink(tmp_path / "out", fsync=False)
    pipe = Pipeline(src, _chain(str(tmp_path / "store"), async_checkpoints=True), sink,
                    batch_size=100, max_in_flight=4,
                    policy=CheckpointPolicy(every_records=400), data_path="push")
    res = pipe.run()
    assert res.finished and res.recoveries == 0 and res.committed_step == 5
    assert sink.read_all() == run_reference(src, pipe.specs, batch_size=100)


class ExplodesLast(Enrich):
    def process(self, state: dict[str, int], record: dict[str, Any]) -> Any:
        if record["i"] == 321:
            raise ValueError("bad record 321 in the last stage")
        return super().process(state, record)


@pytest.mark.ray
def test_a_stage_error_three_hops_away_names_the_stage(ray_local: None,
                                                       tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    specs = [*_chain(store), _spec(store, "last", ExplodesLast)]
    sink = FileSink(tmp_path / "out", fsync=False)
    pipe = Pipeline(GeneratedSource(seed=1, n=1000), specs, sink, batch_size=50,
                    max_in_flight=4, policy=CheckpointPolicy(every_records=100),
                    data_path="push")
    with pytest.raises(StageProcessError, match="bad record 321") as info:
        pipe.run()
    assert info.value.stage_id == "last"
    assert sink.committed_steps() == [1, 2, 3]  # the steps before record 321's


class Slow(Enrich):
    def process(self, state: dict[str, int], record: dict[str, Any]) -> Any:
        if record["i"] % 50 == 0:
            time.sleep(0.05)
        return super().process(state, record)


@pytest.mark.ray
def test_a_slow_stage_holds_at_most_the_edge_bound(ray_local: None, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    specs = [_spec(store, "fast", Enrich), _spec(store, "slow", Slow)]
    held: dict[str, int] = {}

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit":
            for sid, h in pipe.handles.items():
                held[sid] = max(held.get(sid, 0), ray.get(h.info.remote())["push_held"])

    sink = FileSink(tmp_path / "out", fsync=False)
    src = GeneratedSource(seed=2, n=3000)
    pipe = Pipeline(src, specs, sink, batch_size=50, max_in_flight=3,
                    policy=CheckpointPolicy(every_records=600), on_event=on_event,
                    data_path="push")
    res = pipe.run()
    assert res.finished and sink.read_all() == run_reference(src, pipe.specs, batch_size=50)
    # the driver's edge: max_in_flight batches; fast -> slow: the edge's bound (3), plus
    # the one call the sender waits past the bound for
    assert pipe.edge_bound == 3
    assert 1 <= held["slow"] <= 4 and 1 <= held["fast"] <= 4, held
    assert held["slow"] >= 2  # it did fill up: the slow stage was the bottleneck


class DriverSink(FileSink):
    """A subclass of FileSink: commits in the driver (``commit_anywhere`` not inherited)."""


def test_push_needs_a_sink_the_writer_commits(tmp_path: Path) -> None:
    specs = _chain(str(tmp_path / "store"))
    with pytest.raises(ValueError, match=r"data_path='push' sends the outputs to the sink "
                                         r"writer, but \['DriverSink'\] commit"):
        Pipeline(GeneratedSource(seed=1, n=10), specs, DriverSink(tmp_path / "o"),
                 data_path="push")
    with pytest.raises(ValueError, match="data_path must be one of"):
        Pipeline(GeneratedSource(seed=1, n=10), specs, FileSink(tmp_path / "o"),
                 data_path="stages")
    assert not (tmp_path / "store").exists()


@pytest.mark.ray
@pytest.mark.parametrize("victim", [None, "reader", "agg@1of2"])
def test_the_source_read_by_a_reader_actor(ray_local: None, tmp_path: Path,
                                           victim: str | None) -> None:
    """``source_reader=True``: the reader actor reads the source and pushes each batch (split
    for the keyed first stage) to the first stages; the driver gets counts and positions.
    A reader or an instance killed mid-run: recovered, exact."""
    store = str(tmp_path / "store")
    specs = [_spec(store, "agg", RunningAggregate, parallelism=2, key="key",
                   max_parallelism=16),
             _spec(store, "last", Enrich)]
    killed: list[str] = []

    def on_event(ev: PipelineEvent) -> None:
        if victim and ev.kind == "commit" and ev.step == 2 and not killed:
            killed.append(victim)
            ray.kill(pipe._reader if victim == "reader" else pipe.handles[victim],
                     no_restart=True)

    src = GeneratedSource(seed=8, n=2500, keys=20)
    sink = FileSink(tmp_path / "out", fsync=False)
    pipe = Pipeline(src, specs, sink, batch_size=64, max_in_flight=4, on_event=on_event,
                    policy=CheckpointPolicy(every_records=300), data_path="push",
                    source_reader=True)
    read_here: list[Any] = []
    pipe.source = _Spy(src, read_here)  # read by the reader actor: its copy logs, not ours
    res = pipe.run()
    assert res.finished and res.records_in == 2500
    assert sink.read_all() == run_reference(src, pipe.specs, batch_size=64)
    assert not read_here, "the driver read the source itself"
    # the policy's steps: 300 records -> a barrier after the 5th batch of 64 (320)
    commits = [e for e in res.events if e.kind == "commit"]
    assert commits[0].detail["records_in"] == 320
    if victim:
        assert killed and res.recoveries >= 1


class _Spy:
    """A source that records every read in the driver's process."""

    def __init__(self, inner: GeneratedSource, log: list[Any]) -> None:
        self.inner, self.log = inner, log

    def initial_position(self) -> Any:
        return self.inner.initial_position()

    def read(self, position: Any, max_n: int) -> Any:
        self.log.append(position)
        return self.inner.read(position, max_n)


def test_source_reader_needs_the_push_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source_reader=True .* needs data_path='push'"):
        Pipeline(GeneratedSource(seed=1, n=10), _chain(str(tmp_path / "store")),
                 FileSink(tmp_path / "o"), source_reader=True)


@pytest.mark.ray
def test_many_batches_in_flight_into_a_fan_in_of_the_source_and_a_stage(
        ray_local: None, tmp_path: Path) -> None:
    """``max_in_flight=100``: the driver's edge takes the bound of every other, so its
    pushes never hold every push thread of ``j`` while ``j`` waits for ``a``'s parts or a
    barrier message (a run that never ended before: review of session 18)."""
    store = str(tmp_path / "store")
    specs = [_spec(store, "a", Enrich),
             _spec(store, "j", RunningAggregate, inputs=("source", "a"))]
    src = GeneratedSource(seed=6, n=3000)
    sink = FileSink(tmp_path / "out", fsync=False)
    pipe = Pipeline(src, specs, sink, batch_size=10, max_in_flight=100,
                    policy=CheckpointPolicy(every_records=500), data_path="push",
                    call_timeout=60.0, max_recoveries=0)
    assert pipe.edge_bound == 27 and pipe._room == 27  # (64 threads - 8) / 2 senders - 1
    res = pipe.run()
    assert res.finished and res.recoveries == 0
    assert sink.read_all() == run_reference(src, pipe.specs, batch_size=10)


class ChangesAt500(GeneratedSource):
    """A source whose input changes under position 500 (as a file source finds it)."""

    def read(self, position: Any, max_n: int) -> Any:
        if int(position) >= 500:
            raise SourceFileChanged("the file under position 500 changed", path="/in/f1",
                                    recorded="size=10", found="size=9")
        return super().read(position, max_n)


@pytest.mark.ray
@pytest.mark.parametrize("reader", [False, True], ids=["driver-reads", "reader"])
def test_a_source_error_reaches_the_caller_as_itself(ray_local: None, tmp_path: Path,
                                                     reader: bool) -> None:
    """What the source raises reaches the caller as the driver reading would raise it -
    also from the reader actor (it came back as "stage ? cannot recover" before, review of
    session 19); what was committed stays."""
    sink = FileSink(tmp_path / "out", fsync=False)
    src = ChangesAt500(seed=5, n=1500)
    pipe = Pipeline(src, _chain(str(tmp_path / "store")), sink, batch_size=50,
                    policy=CheckpointPolicy(every_records=200), data_path="push",
                    source_reader=reader)
    with pytest.raises(SourceFileChanged) as err:
        pipe.run()
    assert err.value.path == "/in/f1" and err.value.found == "size=9"
    committed = sink.read_all()
    assert committed and committed == run_reference(
        GeneratedSource(seed=5, n=1500), pipe.specs)[:len(committed)]


WIDE = 12  # senders of j: (64 - 8) // 12 - 1 = a bound of 3 (with 32 threads and no - 1: 2)


class SlowLastInstance(Enrich):
    """Slow on the records only the last of ``WIDE`` round-robin instances gets, so the
    others run ahead and fill the receiver's push threads while it waits for that part."""

    def process(self, state: Any, record: Any) -> Any:
        if record["i"] % WIDE == WIDE - 1:
            time.sleep(0.05)
        return super().process(state, record)


@pytest.mark.ray
def test_a_wide_fan_in_behind_a_stage_never_fills_the_receiver_s_threads(
        ray_local: None, tmp_path: Path) -> None:
    """``a -> p (12 instances) -> j``: each instance of ``p`` may hold its bound plus one
    push at ``j``; the bound leaves room for that (with 12 senders or more the run never
    ended before: review of session 19). 29 senders fit no bound: refused at build time."""
    store = str(tmp_path / "store")
    def tiny(sid: str, factory: Any, **kw: Any) -> StageSpec:
        return StageSpec(sid, factory, store, block_size=64 * 1024, lease_ttl=30.0,
                         resources={"num_cpus": 0.1}, **kw)

    specs = [tiny("a", Enrich), tiny("p", SlowLastInstance, parallelism=WIDE),
             tiny("j", RunningAggregate)]
    src = GeneratedSource(seed=3, n=40 * WIDE, keys=8)
    sink = FileSink(tmp_path / "out", fsync=False)
    pipe = Pipeline(src, specs, sink, batch_size=WIDE, max_in_flight=8,
                    policy=CheckpointPolicy(every_records=10 * WIDE), data_path="push",
                    call_timeout=60.0, max_recoveries=0)
    assert pipe.edge_bound == 3
    res = pipe.run()
    assert res.finished and res.recoveries == 0
    assert sink.read_all() == run_reference(src, pipe.specs, batch_size=WIDE)
    too_wide = [_spec(store, "a", Enrich), _spec(store, "p", Enrich, parallelism=29),
                _spec(store, "j", RunningAggregate)]
    with pytest.raises(ValueError, match=r"stage 'j' reads 29 instances, more than the 28"):
        Pipeline(src, too_wide, sink, data_path="push")
    Pipeline(src, too_wide, sink)  # the driver path takes it
