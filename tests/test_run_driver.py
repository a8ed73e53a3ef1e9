"""One driver per run, fenced (issue 9, defect 2), at the level of the run store and sink.

Without Ray: real file stores and sink directories, a second driver in a real process where
the point is cross-process. The pipeline-level cases (real drivers SIGKILLed at every point
of a step commit, two pipeline drivers on one run) are in ``tests/faults/test_faults_runs.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blockstore import open_store
from stages.pipeline.run_errors import RunActiveError, RunFencedError, SinkFencedError
from stages.pipeline.run_driver import RunDriver
from stages.pipeline.runs import RunStore
from stages.pipeline.sink import FenceToken, FileSink

BS = 512
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs(store_dir: str) -> RunStore:
    return RunStore(open_store(store_dir, block_size=BS), claim_ttl=5.0)


def _commit(hold: RunDriver, sink: FileSink, step: int) -> None:
    """One step commit in the pipeline's order (``stages/pipeline/committing.py`` ``_commit``)."""
    sink.commit(step, [{"step": step}], token=hold.token)
    hold.save_step(step, source_position=step * 10)
    sink.publish(step, token=hold.token)


_OTHER_DRIVER = textwrap.dedent("""
    import sys
    from blockstore import open_store
    from stages.pipeline.run_errors import RunActiveError
    from stages.pipeline.run_driver import RunDriver
    from stages.pipeline.runs import RunStore
    runs = RunStore(open_store(sys.argv[1]))
    try:
        RunDriver.acquire(runs, "r", driver="other-process")
    except RunActiveError as exc:
        print("refused", exc.run_id, exc.holder)
    else:
        print("acquired")
""")


def test_second_driver_in_another_process_is_refused(runs: RunStore, store_dir: str) -> None:
    runs.create_run("r")
    with RunDriver.acquire(runs, "r", driver="first") as hold:
        p = subprocess.run([sys.executable, "-c", _OTHER_DRIVER, store_dir],
                           capture_output=True, text=True, timeout=60, cwd=str(ROOT))
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["refused", "r", "first"]
        hold.check()  # the refusal touched nothing: still ours
        assert runs.status("r").driver_epoch == hold.epoch
    assert RunDriver.acquire(runs, "r", driver="next").epoch == hold.epoch + 1


def test_takeover_fences_the_first_driver_store_and_sink(runs: RunStore, tmp_path: Path) -> None:
    runs.create_run("r")
    sink = FileSink(tmp_path / "out", fsync=False)
    first = RunDriver.acquire(runs, "r", driver="A")
    sink.fence(first.token, 0)
    _commit(first, sink, 1)
    with pytest.raises(RunActiveError) as refused:
        RunDriver.acquire(runs, "r", driver="B")
    assert refused.value.holder == "A" and refused.value.run_id == "r"
    second = RunDriver.acquire(runs, "r", driver="B", takeover=True)
    assert second.epoch > first.epoch and second.committed_step == 1
    # Before the new driver fenced the sink, the old one can still stage output; it is
    # invisible (never published) and the new driver's fence drops it.
    sink.commit(2, [{"step": 2, "by": "A"}], token=first.token)
    with pytest.raises(RunFencedError) as fenced:
        first.save_step(2, source_position=20)  # the status write is refused by the store
    assert (fenced.value.epoch, fenced.value.current_epoch) == (first.epoch, second.epoch)
    assert sink.committed_steps() == [1]
    sink.fence(second.token, second.committed_step)
    with pytest.raises(SinkFencedError):
        sink.commit(2, [{"step": 2, "by": "A"}], token=first.token)
    with pytest.raises(SinkFencedError):
        sink.publish(2, token=first.token)
    with pytest.raises(RunFencedError):
        first.check()
    with pytest.raises(RunFencedError):
        first.forget_after(0)  # a fenced driver cannot un-commit either
    # A's uncommitted record of step 2 (saved before its status write was refused) is not a
    # committed step, and B's commit of step 2 replaces it.
    assert [s.step for s in runs.list_steps("r")] == [1]
    _commit(second, sink, 2)
    steps = runs.list_steps("r")
    assert [(s.step, s.epoch) for s in steps] == [(1, first.epoch), (2, second.epoch)]
    assert sink.read_all() == [{"step": 1}, {"step": 2}]
    second.finish()
    assert runs.status("r").state == "finished"


def test_late_record_of_a_fenced_driver_never_replaces_a_newer_one(runs: RunStore) -> None:
    runs.create_run("r")
    first = RunDriver.acquire(runs, "r", driver="A")
    second = RunDriver.acquire(runs, "r", driver="B", takeover=True)
    second.save_step(1, source_position=10)
    with pytest.raises(RunFencedError):  # committed by B: A may not touch it
        runs.save_step("r", 1, source_position=99, epoch=first.epoch)
    runs.save_step("r", 2, source_position=20, epoch=second.epoch)  # B's, not committed yet
    with pytest.raises(RunFencedError):  # saved by a newer driver: A is the stale one
        runs.save_step("r", 2, source_position=99, epoch=first.epoch)
    assert runs.load_step("r").source_position == 10  # step 2 is not committed


def test_uncommitted_step_record_is_invisible_and_replaced_on_restart(runs: RunStore,
                                                                      tmp_path: Path) -> None:
    """A driver that died between its step record and its status write (the commit point):
    readers do not count the step; the restarted driver commits it afresh."""
    runs.create_run("r")
    sink = FileSink(tmp_path / "out", fsync=False)
    dead = RunDriver.acquire(runs, "r", driver="dead")
    sink.fence(dead.token, 0)
    _commit(dead, sink, 1)
    sink.commit(2, [{"step": 2}], token=dead.token)
    runs.save_step("r", 2, source_position=20, epoch=dead.epoch)  # ... then it died
    dead._lease._stop.set()  # its keepalive stops with it
    assert runs.latest_step("r").step == 1  # type: ignore[union-attr]
    assert sink.committed_steps() == [1]  # its output is not reported either
    restarted = RunDriver.acquire(runs, "r", driver="restarted", takeover=True)
    assert restarted.committed_step == 1
    sink.fence(restarted.token, restarted.committed_step)
    assert sorted(p.name for p in sink.directory.glob("step-*")) == ["step-000000001.jsonl"]
    _commit(restarted, sink, 2)
    assert runs.load_step("r", 2).epoch == restarted.epoch
    assert sink.read_all() == [{"step": 1}, {"step": 2}]


def test_committed_but_unpublished_step_is_published_by_the_next_fence(
        runs: RunStore, tmp_path: Path) -> None:
    """A driver that died after its status write but before ``publish``: the step is
    committed, its output durable but hidden until the next driver's ``fence``."""
    runs.create_run("r")
    sink = FileSink(tmp_path / "out", fsync=False)
    dead = RunDriver.acquire(runs, "r", driver="dead")
    sink.fence(dead.token, 0)
    sink.commit(1, [{"step": 1}], token=dead.token)
    dead.save_step(1, source_position=10)  # ... then it died
    assert sink.committed_steps() == []
    restarted = RunDriver.acquire(runs, "r", takeover=True)
    sink.fence(restarted.token, restarted.committed_step)
    assert sink.read_all() == [{"step": 1}]


def test_sink_tokens_and_a_directory_reused_by_another_run(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "out", fsync=False)
    sink.commit(1, ["legacy"])  # never fenced: every step file shows
    assert sink.committed_steps() == [1]
    sink.fence(FenceToken("r", 3), 0)  # a run starts at step 0: the stray file goes
    assert sink.committed_steps() == [] and not sink.path(1).exists()
    with pytest.raises(SinkFencedError) as e:
        sink.fence(FenceToken("r", 2), 0)
    assert (e.value.epoch, e.value.current_epoch) == (2, 3) and e.value.run_id == "r"
    assert e.value.path == str(tmp_path / "out" / "fence.json")
    assert str(e.value) == (f"sink {tmp_path / 'out'} refused a write of run 'r' epoch 2: "
                            "it is fenced by run 'r' epoch 3")
    with pytest.raises(SinkFencedError):
        sink.commit(1, ["x"], token=FenceToken("other", 9))  # another run's token
    sink.commit(1, ["a"], token=FenceToken("r", 4))  # a newer epoch fences older ones
    with pytest.raises(SinkFencedError):
        sink.commit(1, ["b"], token=FenceToken("r", 3))
    sink.publish(1, token=FenceToken("r", 4))
    assert sink.read_all() == ["a"]
    assert sink.discard_after(0, token=FenceToken("r", 4)) == [1]
    assert sink.committed_steps() == []
    sink.fence(FenceToken("new-run", 1), 0)  # a new run takes the directory over
    sink.commit(1, ["n"], token=FenceToken("new-run", 1))
    sink.publish(1, token=FenceToken("new-run", 1))
    assert sink.read_all() == ["n"]


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_sink_files_are_private_like_the_store(tmp_path: Path) -> None:
    """Step files and the fencing record are 0600 in a 0700 directory (the store's modes);
    ``file_mode`` widens them on purpose, the directory getting the matching search bits."""
    old = os.umask(0o022)  # a typical umask: it must not be what makes them private
    try:
        sink = FileSink(tmp_path / "out" / "private", fsync=False)
        sink.fence(FenceToken("r", 1), 0)
        sink.commit(1, [{"a": 1}], token=FenceToken("r", 1))
        sink.publish(1, token=FenceToken("r", 1))
        sink.commit(1, [{"a": 2}], token=FenceToken("r", 1))  # a replacement keeps the mode
        assert _mode(sink.directory) == 0o700
        assert {p.name: _mode(p) for p in sink.directory.iterdir()} == {
            "step-000000001.jsonl": 0o600, "fence.json": 0o600, ".lock": 0o600}
        shared = FileSink(tmp_path / "out" / "shared", fsync=False, file_mode=0o644)
        shared.commit(1, ["x"])
        assert _mode(shared.directory) == 0o755 and _mode(shared.path(1)) == 0o644
        group = FileSink(tmp_path / "out" / "group", fsync=False, file_mode=0o640)
        group.commit(1, ["x"])
        assert _mode(group.directory) == 0o750 and _mode(group.path(1)) == 0o640
    finally:
        os.umask(old)
    for bad in (0o755, 0o400, 0o044, True, "0644"):
        with pytest.raises(ValueError, match="file_mode"):
            FileSink(tmp_path / "bad", file_mode=bad)
