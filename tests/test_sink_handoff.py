"""A step's outputs handed to the sink writer in chunks as batches finish
(stages/pipeline/sink_writer.py, ``Handoff``): exact output across stage, writer and rollback,
stage errors inside a chunk, and a commit that names a chunk the writer does not hold."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from stages.actors.actor import StageSpec
from stages.checkpoint.policy import CheckpointPolicy
from stages.errors import SinkCommitError
from stages.pipeline import sink_writer
from stages.pipeline.pipeline import Pipeline, PipelineEvent, StageProcessError, run_reference
from stages.pipeline.sink import FenceToken, FileSink
from stages.pipeline.sink_writer import SinkWriter
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _specs(store: str, last: Any = None) -> list[StageSpec]:
    return [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=30.0),
            StageSpec("seq", last or functools.partial(Enrich, True, "sum"), store,
                      block_size=64 * 1024, lease_ttl=30.0)]


class ExplodesLast(Enrich):
    def process(self, state: dict[str, int], record: dict[str, Any]) -> Any:
        if record["i"] == 321:
            raise ValueError("bad record 321 in the last stage")
        return super().process(state, record)


@pytest.mark.ray
def test_chunks_commit_exact_output_across_a_stage_kill_and_a_writer_kill(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 3 outputs, 8 batches a step: a stage killed after step 2's commit (chunks of
    step 3 handed over, then rolled back) and the writer SIGKILLed after step 5's: the
    committed output is exact, and after each commit the writer holds only chunks of the
    batches still in flight (a rolled-back attempt's were dropped)."""
    monkeypatch.setattr(sink_writer, "HAND_OVER_EVERY", 3)
    src = GeneratedSource(seed=5, n=4000, keys=7)
    sink = FileSink(tmp_path / "out", fsync=False)
    acts: list[str] = []
    held: list[int] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind != "commit":
            return
        held.append(len(ray.get(p._writer.__ray_call__.remote(lambda w: list(w._chunks)))))
        if ev.step == 2 and "stage" not in acts:
            acts.append("stage")
            ray.kill(p.handles["agg"], no_restart=True)
        elif ev.step == 5 and "writer" not in acts:
            acts.append("writer")
            os.kill(ray.get(p._writer.__ray_call__.remote(lambda w: os.getpid())),
                    signal.SIGKILL)

    p = Pipeline(src, _specs(str(tmp_path / "store")), sink, batch_size=50, max_in_flight=4,
                 policy=CheckpointPolicy(every_records=400), on_event=on_event)
    res = p.run()
    assert acts == ["stage", "writer"] and res.recoveries >= 2
    assert sink.read_all() == run_reference(src, p.specs)
    assert res.records_out == len(sink.read_all())
    # at most 4 batches in flight past a commit: at most 2 chunks of 3 held
    assert held and max(held) <= 2, held


@pytest.mark.ray
def test_a_stage_error_inside_a_chunk_names_the_stage(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record 321 is in the 7th batch of the only step, inside the third chunk of 2: the
    hand-over fails with the stage's error, the commit naming it fails the same way."""
    monkeypatch.setattr(sink_writer, "HAND_OVER_EVERY", 2)
    sink = FileSink(tmp_path / "out", fsync=False)
    p = Pipeline(GeneratedSource(seed=11, n=500, keys=7),
                 _specs(str(tmp_path / "store"), ExplodesLast), sink, batch_size=50,
                 max_in_flight=4, policy=CheckpointPolicy())
    with pytest.raises(StageProcessError, match="bad record 321") as got:
        p.run()
    assert got.value.stage_id == "seq"
    assert sink.committed_steps() == []


def test_a_commit_naming_a_chunk_the_writer_lacks_commits_nothing(tmp_path: Path) -> None:
    """The writer in process: chunks kept until a commit names them; a missing one is a
    ``SinkCommitError`` and no file; a commit drops every chunk up to the highest it names."""
    sink = FileSink(tmp_path / "out", fsync=False)
    w = SinkWriter(sink, ["x"])
    token = FenceToken("run", 1)
    sink.fence(token, 0)
    assert w.hand_over(0, [("x", 1)], [{"a": 1}]) == 0
    assert w.hand_over(1, [("x", 1)], [{"a": 2}]) == 1
    rows, err = w.commit(1, token, 2, [("x", 1)], 0, 7, [{"a": 3}])
    assert rows == 0 and isinstance(err, SinkCommitError) and "[7]" in str(err)
    assert sink.committed_steps() == [] and sorted(w._chunks) == [0, 1]
    w.hand_over(2, [("x", 1)], [{"a": 4}])  # a later step's chunk
    rows, err = w.commit(1, token, 2, [("x", 1)], 0, 1, [{"a": 3}])
    assert err is None and rows == 3
    sink.publish(1, token=token)
    assert sink.read_step(1) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert sorted(w._chunks) == [2]  # the later step's stays
    w.reset()
    assert w._chunks == {}
