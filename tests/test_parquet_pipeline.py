"""Parquet in, Parquet out, on a real local Ray (A22): exact across a killed stage.

A ``ParquetSource`` over real files feeds a keyed aggregation (a record stage, or the same
aggregation as a batch stage) into a ``ParquetSink``; a stage actor is killed mid-run. The
output, read back by ``pyarrow.dataset`` and by ``ray.data.read_parquet`` (which know
nothing of blockpoint), equals the failure-free reference row for row; while the run goes
on, every read sees exactly the committed steps (checked at each commit, and by a reader
thread reading all along). A followed directory's files added during the run are read
exactly once; a file changed under the position stops the run with the error naming it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle
from parquet_stages import KeyedSum, KeyedSumBatch, ReadAlong, write_input

from stages import (
    CheckpointPolicy,
    ParquetSink,
    ParquetSource,
    Pipeline,
    PipelineEvent,
    SourceFileChanged,
    StageSpec,
    run_reference,
)

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray


def _spec(store: Path, factory: Any) -> StageSpec:
    return StageSpec("agg", factory, str(store), block_size=64 * 1024, lease_ttl=30.0)


def _read(directory: Path) -> list[dict[str, Any]]:
    """All rows a plain Parquet reader sees now (step directories in name order)."""
    for _ in range(20):
        try:
            table = ds.dataset(directory, format="parquet").to_table()
        except FileNotFoundError:  # listed, then gone: only a fallback removes steps
            continue
        return table.to_pylist() if table.num_rows else []
    raise AssertionError(f"{directory} kept changing under the reader")


def _batch_numpy() -> KeyedSumBatch:
    return KeyedSumBatch("numpy")


@pytest.mark.parametrize(("factory", "path"), [
    (KeyedSum, {}), (_batch_numpy, {}), (KeyedSum, {"data_path": "push"}),
    (_batch_numpy, {"data_path": "push", "source_reader": True})],
    ids=["records", "numpy-batches", "records-push", "numpy-batches-push-reader"])
def test_parquet_keyed_aggregation_killed_mid_run_is_exact(ray_local: None, tmp_path: Path,
                                                           factory: Any,
                                                           path: dict[str, Any]) -> None:
    """On the push path (``data_path="push"``) the output stage pushes its tables to the
    sink writer, which writes the step's files: no row passes the driver."""
    write_input(tmp_path / "in", files=6, rows=500, row_group_size=128)
    src = ParquetSource(tmp_path / "in")
    spec = _spec(tmp_path / "store", factory)
    ref = run_reference(src, [KeyedSum])  # the record stage's output is the reference
    assert len(ref) == 3000
    out = tmp_path / "out"
    sink = ParquetSink(out, rows_per_file=300, fsync=False)
    seen_at_commit: list[int] = []
    committed_rows = [0]
    killed: list[int] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind != "commit":
            return
        committed_rows[0] += ev.detail["records_out"]
        rows = _read(out)  # a reader now sees exactly the committed steps
        assert rows == ref[:committed_rows[0]], ev.step
        seen_at_commit.append(len(rows))
        if ev.step == 2 and not killed:
            killed.append(ev.step)
            ray.kill(p.handles["agg"], no_restart=True)

    p = Pipeline(src, [spec], sink, batch_size=100, max_in_flight=4,
                 policy=CheckpointPolicy(every_records=400), on_event=on_event, **path)
    assert p.remote_commit == bool(path)
    with ReadAlong(lambda: _read(out), ref) as along:
        res = p.run()
    assert killed and res.recoveries >= 1 and res.relaunches >= 1 and res.finished
    assert res.records_in == 3000 and res.records_out == 3000
    assert _read(out) == ref  # none lost, none duplicated
    assert len(seen_at_commit) == res.committed_step and seen_at_commit[-1] == 3000
    assert not along.wrong and along.observed  # whole steps:
    assert set(along.observed) <= {0, *seen_at_commit}
    assert [p.name for p in sorted(out.iterdir()) if p.name.startswith("_step")] == []
    data = ray.data.read_parquet(str(out)).take_all()
    assert sorted((r["i"], r["count"], r["sum"]) for r in data) == sorted(
        (r["i"], r["count"], r["sum"]) for r in ref)


@pytest.mark.parametrize("path", [{}, {"data_path": "push", "source_reader": True}],
                         ids=["driver", "push-reader"])
def test_followed_directory_reads_files_added_while_running_exactly_once(
        ray_local: None, tmp_path: Path, path: dict[str, Any]) -> None:
    landing = tmp_path / "landing"
    write_input(landing, files=1, rows=300)
    src = ParquetSource(landing, follow=True, poll_interval=0.05)
    out = tmp_path / "out"
    sink = ParquetSink(out, fsync=False)
    added = [1]

    def on_event(ev: PipelineEvent) -> None:
        # Each commit lands one more file, until 5; then the end marker.
        if ev.kind == "commit" and added[0] < 5:
            write_input(landing, files=1, rows=300, start_file=added[0])
            added[0] += 1
        elif ev.kind == "commit" and not (landing / "_DONE").exists():
            (landing / "_DONE").write_text("")

    p = Pipeline(src, [_spec(tmp_path / "store", KeyedSum)], sink, batch_size=128,
                 policy=CheckpointPolicy(every_records=10_000), on_event=on_event, **path)
    res = p.run()
    assert res.finished and added[0] == 5 and res.records_in == 1500
    ref = run_reference(ParquetSource(landing), [KeyedSum])
    assert len(ref) == 1500 and _read(out) == ref
    assert res.committed_step >= 5  # every file arrived after a commit of what came before


def test_file_changed_under_the_position_stops_the_run_naming_it(ray_local: None,
                                                                 tmp_path: Path) -> None:
    files = write_input(tmp_path / "in", files=3, rows=400, row_group_size=100)
    src = ParquetSource(tmp_path / "in")
    sink = ParquetSink(tmp_path / "out", fsync=False)
    changed: list[str] = []

    def on_event(ev: PipelineEvent) -> None:
        pos = ev.detail.get("source_position") or {}
        if ev.kind == "commit" and pos.get("file") and not changed:
            victim = tmp_path / "in" / pos["file"]
            table = pq.read_table(victim)
            pq.write_table(table.slice(0, 399), victim)  # rewritten under the position
            changed.append(str(victim))

    p = Pipeline(src, [_spec(tmp_path / "store", KeyedSum)], sink, batch_size=50,
                 max_in_flight=2, policy=CheckpointPolicy(every_records=150),
                 on_event=on_event)
    with pytest.raises(SourceFileChanged) as err:
        p.run()
    assert changed and err.value.path == changed[0] and changed[0] in str(err.value)
    assert changed[0] in {str(f) for f in files}
    committed = _read(tmp_path / "out")  # what was committed stays, exactly
    assert committed == run_reference(src, [KeyedSum])[:len(committed)] and committed
