"""Parallel stages on a real local Ray (issue 20 items 1, 4, 6; A20): a keyed stage as N
instances gives the committed output of parallelism 1; an instance killed mid-run, a run
paused at one parallelism and resumed at another, and a keyless parallel stage stay exact;
another max_parallelism is refused.

Committed output is compared record for record with ``run_reference``; the stage after the
keyed one numbers its records (``Enrich``'s running ``seq``), so the order of the merged
outputs is checked too, not only their set. Every key's state is read back from the
instances' leases after the run and compared with the state of one plain aggregation.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from blockstore import open_store
from stages import KeyedState, KeylessRescaleRefused, MaxParallelismChanged
from stages.actors.actor import StageSpec
from stages.actors.instance import InstanceWork
from stages.actors.routing import Part, Splitting, merge_parts, split
from stages.checkpoint.keygroups import key_group, key_group_range
from stages.checkpoint.policy import CheckpointPolicy
from stages.errors import KeyGroupError, PipelineError, StageProcessError
from stages.pipeline.graph import SOURCE, Graph
from stages.pipeline.pipeline import Pipeline, PipelineEvent, run_reference
from stages.pipeline.runs import RunStore
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

M = 16  # key groups: few enough that every instance owns several, keys share groups
SMALL = {"num_cpus": 0.25}  # five actors fit the fixture's four CPUs


def _specs(store: str, p: int, *, m: int = M, key: Any = "key",
           seq_parallelism: int = 1) -> list[StageSpec]:
    return [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=30.0,
                      parallelism=p, key=key, max_parallelism=m, resources=SMALL),
            StageSpec("seq", functools.partial(Enrich, True, "sum"), store,
                      block_size=64 * 1024, lease_ttl=30.0, resources=SMALL,
                      parallelism=seq_parallelism)]


def _source(n: int) -> GeneratedSource:
    return GeneratedSource(seed=5, n=n, keys=40)


def _pipeline(tmp_path: Path, specs: list[StageSpec], n: int, **kw: Any
              ) -> tuple[Pipeline, FileSink, GeneratedSource]:
    src = _source(n)
    sink = FileSink(tmp_path / "out", fsync=False)
    kw.setdefault("policy", CheckpointPolicy(every_records=400))
    return Pipeline(src, specs, sink, batch_size=50, max_in_flight=4, **kw), sink, src


def _aggregate(src: GeneratedSource) -> dict[str, list[int]]:
    """Every key's state after the whole source, from one plain aggregation."""
    state: dict[str, list[int]] = {}
    stage = RunningAggregate()
    for record in src:
        list(stage.process(state, record))
    return state


def _keyed_state(store: str, p: int, m: int = M) -> dict[str, list[int]]:
    """The union of the instances' key groups, read from their leases; each instance holds
    only keys of its own groups."""
    out: dict[str, list[int]] = {}
    with open_store(store) as st:
        for i in range(p):
            ks = KeyedState.restore(st.open_reader(f"agg@{i}of{p}"), max_parallelism=m)
            own = key_group_range(i, p, m)
            assert all(key_group(k, m) in own for k in ks.keys())
            out.update(ks.to_dict())
    return out


@pytest.mark.parametrize("p", [1, 2, 4])
def test_keyed_stage_at_parallelism_p_commits_the_output_of_parallelism_1(
        ray_local: None, tmp_path: Path, p: int) -> None:
    store = str(tmp_path / "store")
    pipe, sink, src = _pipeline(tmp_path, _specs(store, p), 2000, run_id="kp",
                                keep_steps=1000)
    res = pipe.run()
    plain = [StageSpec("agg", RunningAggregate, store), _specs(store, 1)[1]]
    ref = run_reference(src, plain)  # parallelism 1, no key: the chain of today
    assert len(ref) > 500 and sink.read_all() == ref
    assert res.finished and res.recoveries == 0 and res.records_in == 2000
    assert set(pipe.handles) == {f"agg@{i}of{p}" for i in range(p)} | {"seq"}
    assert res.checkpoints == (p + 1) * res.committed_step  # every instance, every step
    steps = RunStore(open_store(store)).list_steps("kp")
    for step in steps:
        inst = sorted((c.index, c.parallelism, c.max_parallelism, c.stage_id)
                      for c in step.stages if c.stage == "agg")
        assert inst == [(i, p, M, f"agg@{i}of{p}") for i in range(p)]
        assert step.stage("seq").stage is None  # a plain stage's record is as before
    assert _keyed_state(store, p) == _aggregate(src)


def _kill_after_step_2(instance: str) -> tuple[list[str], Any, list[Pipeline]]:
    """An ``on_event`` that kills ``instance`` once step 2 committed; the kills it made; the
    list to put the pipeline in (made after the callback)."""
    killed: list[str] = []
    holder: list[Pipeline] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not killed:
            killed.append(instance)
            ray.kill(holder[0].handles[instance], no_restart=True)

    return killed, on_event, holder


def test_killed_instance_mid_run_is_restored_and_output_is_exact(ray_local: None,
                                                                 tmp_path: Path) -> None:
    killed, on_event, holder = _kill_after_step_2("agg@1of2")
    store = str(tmp_path / "store")
    pipe, sink, src = _pipeline(tmp_path, _specs(store, 2), 3000, on_event=on_event)
    holder.append(pipe)
    res = pipe.run()
    assert killed and res.recoveries >= 1 and res.relaunches >= 1
    relaunched = {e.stage_id for e in res.events if e.kind == "relaunched"}
    assert "agg@1of2" in relaunched
    assert sink.read_all() == run_reference(src, pipe.specs)  # none lost, none duplicated
    assert res.records_in == 3000
    assert _keyed_state(store, 2) == _aggregate(src)


def _resume(tmp_path: Path, store: str, p: int, n: int, *, last: bool) -> Any:
    runs = RunStore(open_store(store))
    claim = runs.claim("rs", driver=f"p{p}")
    pipe, sink, src = _pipeline(tmp_path, _specs(store, p), n, run_id="rs")
    res = pipe.run(claim=claim) if last else pipe.run(max_steps=1, pause=True, claim=claim)
    return res, sink, src, pipe


def test_rescale_2_to_3_to_1_from_committed_steps_is_exact(ray_local: None,
                                                            tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    n = 2400
    pipe, sink, src = _pipeline(tmp_path, _specs(store, 2), n, run_id="rs")
    first = pipe.run(max_steps=1, pause=True)
    assert not first.finished and first.committed_step == 1
    second, _, _, _ = _resume(tmp_path, store, 3, n, last=False)  # 2 -> 3
    assert second.committed_step == 2
    runs = RunStore(open_store(store))
    assert sorted(c.stage_id for c in runs.load_step("rs", 2).stages
                  if c.stage == "agg") == ["agg@0of3", "agg@1of3", "agg@2of3"]
    third, sink, _, pipe = _resume(tmp_path, store, 1, n, last=True)  # 3 -> 1
    assert third.finished and third.recoveries == 0
    assert first.records_in + second.records_in + third.records_in == n
    assert sink.read_all() == run_reference(src, pipe.specs)
    layouts = [sorted(c.stage_id for c in s.stages if c.stage == "agg")
               for s in runs.list_steps("rs")]
    assert layouts[-1] == ["agg@0of1"]
    assert _keyed_state(store, 1) == _aggregate(src)  # every key's state carried


def test_rescale_3_to_1_then_back_to_2_is_exact(ray_local: None, tmp_path: Path) -> None:
    """Back to a layout used before: its leases hold older generations, which the
    restore must not take (it reads the leases the committed step names)."""
    store = str(tmp_path / "store")
    n = 2400
    pipe, _, src = _pipeline(tmp_path, _specs(store, 2), n, run_id="rs")
    pipe.run(max_steps=1, pause=True)
    _resume(tmp_path, store, 3, n, last=False)
    _resume(tmp_path, store, 1, n, last=False)
    res, sink, _, pipe = _resume(tmp_path, store, 2, n, last=True)
    assert res.finished
    assert sink.read_all() == run_reference(src, pipe.specs)
    assert _keyed_state(store, 2) == _aggregate(src)


def test_keyless_parallel_stage_round_robin_is_exact_across_a_kill(ray_local: None,
                                                                   tmp_path: Path) -> None:
    killed: list[str] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not killed:
            killed.append("seq@0of2")
            ray.kill(pipe.handles["seq@0of2"], no_restart=True)

    store = str(tmp_path / "store")
    specs = [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=30.0,
                       resources=SMALL), _specs(store, 1, seq_parallelism=2)[1]]
    pipe, sink, src = _pipeline(tmp_path, specs, 2400, on_event=on_event)
    res = pipe.run()
    assert killed and res.relaunches >= 1
    ref = run_reference(src, specs)  # two Enrich states, records alternating between them
    assert sink.read_all() == ref
    seqs = [r["seq"] for r in ref]
    assert max(seqs) < len(ref) - 10  # two counters: not the single sequence of one stage
    other = _pipeline(tmp_path / "b", specs, 1000, run_id="kl")[0]
    other.run(max_steps=1)
    with pytest.raises(KeylessRescaleRefused):  # per-instance state: no other parallelism
        _pipeline(tmp_path / "b", [specs[0], _specs(store, 1, seq_parallelism=3)[1]], 1000,
                  run_id="kl")[0].run()


def test_another_max_parallelism_is_refused(ray_local: None, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    pipe, _, _ = _pipeline(tmp_path, _specs(store, 2, m=16), 2000, run_id="mp")
    pipe.run(max_steps=1)
    again, sink, _ = _pipeline(tmp_path, _specs(store, 2, m=32), 2000, run_id="mp")
    with pytest.raises(MaxParallelismChanged) as err:
        again.run()
    assert (err.value.stage_id, err.value.recorded, err.value.requested) == ("agg", 16, 32)
    assert not again.handles  # refused before any instance started
    assert sink.committed_steps() == [1]


def test_a_record_without_its_key_stops_the_run_naming_it(ray_local: None,
                                                          tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    pipe, _, _ = _pipeline(tmp_path, _specs(store, 2, key="customer"), 200)
    with pytest.raises(PipelineError, match="has no key field 'customer'") as err:
        pipe.run()
    assert "'i': 0" in str(err.value)
    # A key function that raises is the stage's own error, as it was in an instance before
    # the driver split the source's batches (review of issue 20: a bare KeyError escaped).
    pipe, _, _ = _pipeline(tmp_path / "fn", _specs(store, 2, key=lambda r: r["customer"]), 200,
                           run_id="kf")
    with pytest.raises(StageProcessError, match="stage agg raised.*KeyError") as err2:
        pipe.run()
    assert err2.value.stage_id == "agg"


def test_parallel_options_are_checked_when_the_spec_is_made(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    with pytest.raises(KeyGroupError, match="parallelism 17 is outside 1..16"):
        StageSpec("a", RunningAggregate, store, parallelism=17, key="key", max_parallelism=16)
    with pytest.raises(ValueError, match="parallelism must be an int >= 1"):
        StageSpec("a", RunningAggregate, store, parallelism=0)
    with pytest.raises(ValueError, match="synchronously"):
        StageSpec("a", RunningAggregate, store, key="key", async_checkpoints=True)
    assert StageSpec("a", RunningAggregate, store).instances()[0].stage_id == "a"


def test_parts_merge_back_into_input_order() -> None:
    a = Part(4, (0, 3), (["a0"], ["a3", "a3'"]))
    b = Part(4, (1, 2), ([], ["b2"]))
    assert merge_parts([b, a]) == ["a0", "b2", "a3", "a3'"]
    assert merge_parts([[1, 2]]) == [1, 2]
    with pytest.raises(ValueError):
        merge_parts([a, Part(3, (), ())])


def test_a_split_gives_each_instance_the_records_of_its_key_groups() -> None:
    records = list(_source(300))
    how = Splitting("key", 3, M)
    shares = split(records, how)
    assert [s.index for s in shares] == [0, 1, 2] and all(s.n == 300 for s in shares)
    for s in shares:
        own = key_group_range(s.index, 3, M)
        assert s.records == [records[j] for j in s.indices]
        assert list(s.groups) == [key_group(r["key"], M) for r in s.records]
        assert all(g in own for g in s.groups) and list(s.indices) == sorted(s.indices)
    assert sorted(j for s in shares for j in s.indices) == list(range(300))
    # the instances' parts of the shares merge back into the batch's order
    parts = [Part(s.n, s.indices, tuple([r] for r in s.records)) for s in shares]
    assert merge_parts(parts[::-1]) == records
    with pytest.raises(KeyGroupError, match="has no key field 'customer'"):
        split(records, Splitting("customer", 2, M))


def test_a_share_for_another_instance_is_refused(tmp_path: Path) -> None:
    spec = _specs(str(tmp_path / "store"), 2)[0].instances()[1]
    share = split(list(_source(20)), Splitting("key", 2, M))[0]
    with pytest.raises(KeyGroupError, match="a share of instance 0 reached instance 1"):
        InstanceWork(spec).process(RunningAggregate(), None, (share,))  # type: ignore[arg-type]


def test_which_producers_split_their_output(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    agg = _specs(store, 3)[0]
    pre = StageSpec("pre", Enrich, store)
    after = StageSpec("agg", RunningAggregate, store, parallelism=3, key="key",
                      max_parallelism=M, inputs=("pre",))
    # the source, for a keyed first stage of 3 instances
    assert set(Graph([agg, _specs(store, 3)[1]], ["seq"]).splits) == {SOURCE}
    # a single-instance stage, for its only reader; not at parallelism 1, not keyless
    assert set(Graph([pre, after], ["agg"]).splits) == {"pre"}
    assert not Graph(_specs(store, 1), ["seq"]).splits
    assert not Graph(_specs(store, 1, key=None, seq_parallelism=2), ["seq"]).splits
    # not a stage a sink (or a second reader) also takes
    assert not Graph([pre, after], ["agg", "pre"]).splits
    other = StageSpec("other", Enrich, store, inputs=("pre",))
    assert not Graph([pre, after, other], ["agg", "other"]).splits


def test_a_stage_splitting_for_its_keyed_reader_is_exact_across_a_kill(ray_local: None,
                                                                      tmp_path: Path) -> None:
    killed, on_event, holder = _kill_after_step_2("agg@2of3")
    store = str(tmp_path / "store")
    pre = StageSpec("pre", Enrich, store, block_size=64 * 1024, lease_ttl=30.0,
                    resources=SMALL)
    agg, seq = _specs(store, 3)
    agg = dataclasses.replace(agg, inputs=("pre",))
    seq = dataclasses.replace(seq, inputs=("agg",))
    pipe, sink, src = _pipeline(tmp_path, [pre, agg, seq], 3000, on_event=on_event)
    holder.append(pipe)
    assert set(pipe.graph.splits) == {"pre"}
    res = pipe.run()
    assert killed and res.recoveries >= 1 and res.records_in == 3000
    plain = [pre, StageSpec("agg", RunningAggregate, store, inputs=("pre",)), seq]
    assert sink.read_all() == run_reference(src, plain)  # parallelism 1: the same output
    assert _keyed_state(store, 3) == _aggregate(src)
