"""DAG pipelines (issue 20 items 3, 6): fan-out, fan-in, several sinks, on a real local Ray.

The diamond: ``parse`` feeds ``agg`` (keyed, 2 instances) and ``tag``; ``join`` reads both
(a union: per batch, agg's output then tag's); ``join`` and ``tag`` each have a sink. Every
stage after a fan-in numbers its records (``Enrich``'s running ``seq``), so the committed
output checks the order of the union, not only its set. Committed output is compared record
for record with ``run_reference`` (the same graph in this process, no Ray), without and with
an instance killed mid-run. Misconfigured graphs are refused when the pipeline is made,
naming the stage.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from stages import SOURCE, PipelineGraphError
from stages.actors.actor import StageSpec
from stages.checkpoint.policy import CheckpointPolicy
from stages.pipeline.graph import Graph
from stages.pipeline.pipeline import Pipeline, PipelineEvent, run_reference
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SMALL = {"num_cpus": 0.25}  # six actors fit the fixture's four CPUs


def _spec(store: str, sid: str, factory: Any, **kw: Any) -> StageSpec:
    return StageSpec(sid, factory, store, block_size=64 * 1024, lease_ttl=30.0,
                     resources=SMALL, **kw)


def _diamond(store: str) -> list[StageSpec]:
    return [
        _spec(store, "parse", Enrich),
        _spec(store, "agg", RunningAggregate, inputs=("parse",), parallelism=2, key="key",
              max_parallelism=16),
        _spec(store, "tag", functools.partial(Enrich, True, "value"), inputs=("parse",)),
        _spec(store, "join", Enrich, inputs=("agg", "tag")),
    ]


def _run(tmp_path: Path, n: int, **kw: Any) -> tuple[Pipeline, dict[str, FileSink], Any]:
    store = str(tmp_path / "store")
    src = GeneratedSource(seed=9, n=n, keys=24)
    sinks = {"join": FileSink(tmp_path / "join", fsync=False),
             "tag": FileSink(tmp_path / "tag", fsync=False)}
    pipe = Pipeline(src, _diamond(store), sinks, batch_size=50, max_in_flight=4,
                    policy=CheckpointPolicy(every_records=300), **kw)
    return pipe, sinks, src


def _reference(pipe: Pipeline, src: GeneratedSource) -> dict[str, list[Any]]:
    # the pipeline's batches: a union's order is per batch (graph.py)
    return run_reference(src, pipe.specs, batch_size=pipe.batch_size, outputs=["join", "tag"])


@pytest.mark.ray
def test_a_diamond_with_two_sinks_commits_the_reference(ray_local: None,
                                                        tmp_path: Path) -> None:
    pipe, sinks, src = _run(tmp_path, 1500)
    res = pipe.run()
    ref = _reference(pipe, src)
    # the union: agg's 1,500 records and tag's even ones, each batch agg's first
    assert len(ref["join"]) == 1500 + len(ref["tag"]) and 500 < len(ref["tag"]) < 1000
    assert ref["join"][:50] == [{**r, "seq": j + 1} for j, r in enumerate(ref["join"][:50])]
    assert "count" in ref["join"][0] and "count" not in ref["join"][50]
    assert sinks["join"].read_all() == ref["join"]
    assert sinks["tag"].read_all() == ref["tag"]
    assert res.finished and res.recoveries == 0 and res.records_in == 1500
    assert res.records_out == len(ref["join"]) + len(ref["tag"])
    # every instance of every stage checkpointed every step
    assert res.checkpoints == 5 * res.committed_step
    assert sinks["join"].committed_steps() == sinks["tag"].committed_steps() \
        == list(range(1, res.committed_step + 1))


@pytest.mark.ray
@pytest.mark.parametrize("victim", ["agg@0of2", "join"])
def test_a_diamond_under_a_kill_is_exact(ray_local: None, tmp_path: Path,
                                         victim: str) -> None:
    killed: list[str] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not killed:
            killed.append(victim)
            ray.kill(pipe.handles[victim], no_restart=True)

    pipe, sinks, src = _run(tmp_path, 2400, on_event=on_event)
    res = pipe.run()
    assert killed and res.recoveries >= 1 and res.relaunches >= 1
    assert victim in {e.stage_id for e in res.events if e.kind == "relaunched"}
    ref = _reference(pipe, src)
    assert sinks["join"].read_all() == ref["join"]  # none lost, none duplicated, in order
    assert sinks["tag"].read_all() == ref["tag"]
    assert res.records_in == 2400


def test_a_chain_is_the_default_graph(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    specs = [_spec(store, "a", Enrich), _spec(store, "b", Enrich)]
    g = Graph(specs, ["b"])
    assert g.is_chain and g.order == ("a", "b") and g.inputs == {"a": (SOURCE,), "b": ("a",)}
    # listed out of order, the order follows the edges
    specs = [_spec(store, "b", Enrich, inputs=("a",)), _spec(store, "a", Enrich,
                                                          inputs=(SOURCE,))]
    assert Graph(specs, ["b"]).order == ("a", "b") and not Graph(specs, ["b"]).is_chain


@pytest.mark.parametrize("make, sinks, message", [
    (lambda s: [_spec(s, "a", Enrich), _spec(s, "b", Enrich, inputs=("nope",))], ["b"],
     r"stage 'b' reads 'nope', which is not a stage of the pipeline"),
    (lambda s: [_spec(s, "a", Enrich, inputs=(SOURCE, "c")), _spec(s, "b", Enrich),
                _spec(s, "c", Enrich)], ["c"],
     r"the stages \['a', 'b', 'c', 'a'\] form a cycle"),
    (lambda s: [_spec(s, "a", Enrich, inputs=("a",))], ["a"], r"stage 'a' reads itself"),
    (lambda s: [_spec(s, "a", Enrich, inputs=(SOURCE, SOURCE))], ["a"],
     r"stage 'a' lists an input twice"),
    (lambda s: [_spec(s, "a", Enrich, inputs=())], ["a"], r"stage 'a' has no inputs"),
    (lambda s: [_spec(s, "source", Enrich)], ["source"], r"may not be named 'source'"),
    (lambda s: [_spec(s, "a", Enrich), _spec(s, "b", Enrich, inputs=("a",)),
                _spec(s, "c", Enrich, inputs=("a",))], ["c"],
     r"the output of \['b'\] goes nowhere"),
    (lambda s: [_spec(s, "a", Enrich)], ["a", "zz"],
     r"a sink takes the output of 'zz', which is not a stage"),
])
def test_a_misconfigured_graph_is_refused_naming_the_stage(tmp_path: Path, make: Any,
                                                           sinks: list[str],
                                                           message: str) -> None:
    specs = make(str(tmp_path / "s"))
    with pytest.raises(PipelineGraphError, match=message):
        Graph(specs, sinks)
    by_name = {sid: FileSink(tmp_path / f"out-{i}") for i, sid in enumerate(sinks)}
    with pytest.raises(PipelineGraphError, match=message):  # before anything runs
        Pipeline(GeneratedSource(seed=1, n=10), specs, by_name)
    assert not (tmp_path / "s").exists()  # nothing was created
    with pytest.raises(ValueError):  # a PipelineGraphError is a ValueError
        Graph(specs, sinks)


def test_one_sink_takes_the_last_listed_stage_and_a_branch_needs_its_own(
        tmp_path: Path) -> None:
    s = str(tmp_path / "s")
    specs = [_spec(s, "a", Enrich), _spec(s, "b", Enrich, inputs=("a",)),
             _spec(s, "c", Enrich, inputs=("a",))]
    with pytest.raises(PipelineGraphError, match=r"\['b'\] goes nowhere"):
        Pipeline(GeneratedSource(seed=1, n=10), specs, FileSink(tmp_path / "o"))
    with pytest.raises(PipelineGraphError, match="names no sink"):
        Pipeline(GeneratedSource(seed=1, n=10), specs, {})
    with pytest.raises(PipelineGraphError, match="the sink of 'b' is a str"):
        Pipeline(GeneratedSource(seed=1, n=10), specs, {"b": "out/", "c": FileSink(tmp_path)})
    with pytest.raises(TypeError, match="inputs is a list or tuple of stage ids"):
        _spec(s, "d", Enrich, inputs="a")


def test_the_reference_of_a_chain_is_unchanged_and_of_a_dag_follows_its_calls(
        tmp_path: Path) -> None:
    """The reference by hand: the union reads agg's output of a batch, then tag's."""
    s = str(tmp_path / "s")
    src = GeneratedSource(seed=3, n=120)
    specs = _diamond(s)
    got = run_reference(src, specs, batch_size=40, outputs=["join", "tag"])
    parse, tag, join = Enrich(), Enrich(True, "value"), Enrich()
    agg = RunningAggregate()
    st = {k: f.initial_state() for k, f in (("parse", parse), ("tag", tag), ("join", join))}
    st["agg"] = agg.initial_state()
    want_join, want_tag = [], []
    for b in range(0, 120, 40):
        parsed = [o for r in src.read(b, 40)[0] for o in parse.process(st["parse"], r)]
        aggd = [o for r in parsed for o in agg.process(st["agg"], r)]
        tagged = [o for r in parsed for o in tag.process(st["tag"], r)]
        want_tag += tagged
        want_join += [o for r in aggd + tagged for o in join.process(st["join"], r)]
    assert got == {"join": want_join, "tag": want_tag}
    chain = [_spec(s, "a", Enrich), _spec(s, "b", RunningAggregate)]
    assert run_reference(src, chain, batch_size=40) == run_reference(
        src, [Enrich, RunningAggregate], batch_size=40)


def test_inputs_are_ordered_and_each_output_has_a_sink_of_its_own(tmp_path: Path) -> None:
    """Found by a review: a set of inputs made the union's order follow the hash seed (a
    plain restart changed it); one sink (or one directory) for two stages let each step's
    second commit overwrite the first's output."""
    s = str(tmp_path / "s")
    for bad in ({"a", "b"}, {"a": 1}, (i for i in "a")):
        with pytest.raises(TypeError, match="list or tuple of stage ids"):
            _spec(s, "d", Enrich, inputs=bad)
    assert _spec(s, "d", Enrich, inputs=["a"]).inputs == ("a",)
    specs = [_spec(s, "a", Enrich), _spec(s, "b", Enrich, inputs=("a",)),
             _spec(s, "c", Enrich, inputs=("a",))]
    one = FileSink(tmp_path / "o")
    with pytest.raises(PipelineGraphError, match="outputs of 'b' and 'c' go to one sink"):
        Pipeline(GeneratedSource(seed=1, n=10), specs, {"b": one, "c": one})
    with pytest.raises(PipelineGraphError, match=r"go to one sink \(one place\)"):
        Pipeline(GeneratedSource(seed=1, n=10), specs,
                 {"b": FileSink(tmp_path / "o"), "c": FileSink(tmp_path / "x" / ".." / "o")})


def test_the_reference_refuses_what_it_cannot_compute_as_the_pipeline_would(
        tmp_path: Path) -> None:
    s = str(tmp_path / "s")
    src = GeneratedSource(seed=1, n=10)
    with pytest.raises(ValueError, match="needs specs for every stage"):
        run_reference(src, [Enrich, _spec(s, "b", Enrich, inputs=("stage-0",))])
    with pytest.raises(ValueError, match="stage ids must be unique"):
        run_reference(src, [_spec(s, "stage-1", Enrich), Enrich])
    with pytest.raises(ValueError, match="outputs must be distinct stages"):
        run_reference(src, [_spec(s, "a", Enrich)], outputs=["a", "a"])
    with pytest.raises(ValueError, match="outputs must be distinct stages"):
        run_reference(src, [Enrich], outputs=["zz"])


@pytest.mark.ray
def test_a_run_resumed_with_another_graph_is_refused(ray_local: None,
                                                     tmp_path: Path) -> None:
    """Found by a review: the same stages rewired (the union read in the other order, an
    input dropped, a sink added) were accepted on resume and committed output matching no
    graph. The step record keeps the graph; another is refused before anything runs."""
    pipe, sinks, src = _run(tmp_path, 900, run_id="rewire")
    first = pipe.run(max_steps=2)
    assert first.committed_step == 2 and not first.finished
    store = str(tmp_path / "store")
    rewired = _diamond(store)
    rewired[3] = _spec(store, "join", Enrich, inputs=("tag", "agg"))
    for specs, sink_map in ((rewired, sinks), (_diamond(store), {**sinks, "agg": FileSink(
            tmp_path / "agg", fsync=False)})):
        again = Pipeline(src, specs, sink_map, run_id="rewire", batch_size=50,
                         policy=CheckpointPolicy(every_records=300))
        with pytest.raises(PipelineGraphError, match="committed step 2 was made by another "
                                                     "graph"):
            again.run()
    assert sinks["join"].committed_steps() == [1, 2]  # nothing was touched
    res = Pipeline(src, _diamond(store), sinks, run_id="rewire", batch_size=50,
                   policy=CheckpointPolicy(every_records=300)).run()
    assert res.finished
    ref = _reference(pipe, src)
    assert sinks["join"].read_all() == ref["join"] and sinks["tag"].read_all() == ref["tag"]
