"""The Parquet sink's protocol on real files: hidden until published, published once.

``ParquetSink`` (``stages/pipeline/parquet_sink.py``) driven through the sink protocol as the
pipeline drives it, with the crashes that matter simulated by stopping between calls (a
driver that died after ``commit`` or after the run's commit point, and its successor's
``fence``): ``pyarrow.dataset`` - which knows nothing of blockpoint - reads exactly the
published steps at every point. No Ray here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sinksteps import discard_after_first_of_four, expect, rows, seen_in

from stages import FenceToken, ParquetSink, SinkFencedError


def test_steps_are_hidden_until_published_then_seen_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ParquetSink(out, rows_per_file=2)
    t = FenceToken("run", 1)
    sink.fence(t, 0)
    sink.commit(1, rows(1), token=t)
    assert seen_in(out) == [] and sink.committed_steps() == []
    sink.publish(1, token=t)
    assert seen_in(out) == expect(1) and len(sink.files(1)) == 3  # 5 rows, 2 per file
    sink.commit(2, [{"step": 2, "j": j} for j in range(5)], token=t)  # records work too
    sink.commit(2, rows(2), token=t)  # a replayed step: rewritten while hidden
    assert seen_in(out) == expect(1)
    sink.publish(2, token=t)
    assert seen_in(out) == expect(1, 2) and sink.committed_steps() == [1, 2]
    assert sink.read_table().num_rows == 10 and sink.read_step(2)[0] == {"step": 2, "j": 0}


def test_crash_before_the_run_commit_drops_and_after_it_publishes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = ParquetSink(out)
    t1 = FenceToken("run", 1)
    first.fence(t1, 0)
    first.commit(1, rows(1), token=t1)
    first.publish(1, token=t1)
    first.commit(2, rows(2), token=t1)  # the run committed 2; the driver died before publish
    first.commit(3, rows(3), token=t1)  # never committed by the run
    (out / "_tmp-000000004-1-dead").mkdir()  # a write cut short
    assert seen_in(out) == expect(1)
    second = ParquetSink(out)
    t2 = FenceToken("run", 2)
    second.fence(t2, 2)  # the restarted driver: the run's committed step is 2
    assert seen_in(out) == expect(1, 2)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "_fence.json", "step-000000001",
                                                     "step-000000002"]
    second.commit(3, rows(3), token=t2)  # replayed
    second.publish(3, token=t2)
    assert seen_in(out) == expect(1, 2, 3)
    with pytest.raises(SinkFencedError):  # the first driver, taken over, changes nothing
        first.commit(4, rows(4), token=t1)
    with pytest.raises(SinkFencedError):
        first.publish(3, token=t1)
    assert seen_in(out) == expect(1, 2, 3) and not list(out.glob("_step-*"))


def test_discard_after_removes_later_steps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ParquetSink(out)
    discard_after_first_of_four(sink)
    assert seen_in(out) == expect(1) and sink.committed_steps() == [1]


def test_modes_are_the_stores(tmp_path: Path) -> None:
    out = tmp_path / "private"
    sink = ParquetSink(out)
    t = FenceToken("run", 1)
    sink.fence(t, 0)
    sink.commit(1, rows(1), token=t)
    sink.publish(1, token=t)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700 & ~_umask()
    assert stat.S_IMODE(os.stat(sink.path(1)).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in sink.files(1)} == {0o600}
    shared = ParquetSink(tmp_path / "shared", file_mode=0o644)
    shared.commit(1, rows(1))  # a directory no driver fenced: written visible
    assert stat.S_IMODE(os.stat(shared.path(1)).st_mode) == 0o755 & ~_umask()
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in shared.files(1)} == {0o644 & ~_umask()}
    assert seen_in(tmp_path / "shared") == expect(1)


def _umask() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022
