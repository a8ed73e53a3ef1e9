"""Fault matrix, run rows: real pipeline drivers killed or raced on one run (issue 9).

Every case runs a real driver process (a ``Pipeline`` on the test's local Ray, through its
GCS address) on a real file store and ``FileSink``; the output is compared record for record
with ``run_reference``, and the run's step records with the source (every record in exactly
one committed step).

| row | cases tried | outcome |
|-----|-------------|---------|
| driver killed at every point of a step commit | SIGKILL of the driver process at step 1 and at step 2 (steps 1-4 with ``BLOCKPOINT_FAULTS_FULL=1``) at each of the 5 points of ``Committing._commit_step`` (``stages/pipeline/committing.py``, the committer thread): before the sink commit; after it, before the step record; after the step record, before the status write (the commit point, ``stages/pipeline/run_driver.py``); after the status write, before the sink's publish; after the publish. Then: a reader of the sink, and a restarted driver (after the dead one's control lease expired) | nothing lost: before the restart the sink shows only steps the run committed (a prefix of the reference); after it the output equals the reference exactly and the step records cover every source record once |
| two drivers on one run | a second driver while the first (another process) runs: (a) plain - refused with ``RunActiveError`` naming the holder, before it touched anything, the first finishes; (b) ``takeover=True`` - the first is fenced (its next commit or recovery fails with ``RunFencedError``, exit code 3) and the second finishes the run | nothing lost or duplicated: output equals the reference, step records cover every source record once |

Before the fix (issue 9, defect 2) the second driver was not refused and the sink showed
output of the step a driver was killed after committing to the sink only.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from blockstore import open_store
from stages.actors.actor import StageSpec
from stages.pipeline.run_errors import RunActiveError
from stages.pipeline.pipeline import Pipeline, run_reference
from stages.checkpoint.policy import CheckpointPolicy
from stages.pipeline.runs import RunStore
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
BS = 64 * 1024
RUN_TTL = 2.0  # where a dead driver's control lease is waited out
#: Where a driver must keep its run however slow its keepalive is under load.
HELD_TTL = 60.0
EVERY = 150  # records per step
#: The points of one step commit, in order (``Committing._commit_step``).
KILL_POINTS = ["before_sink_commit", "after_sink_commit", "after_step_record",
               "after_status_write", "after_publish"]
#: The steps killed at: the first one (nothing committed yet) and a later one; every step of
#: the run with ``BLOCKPOINT_FAULTS_FULL=1`` (the full size of the matrix).
KILL_STEPS = [1, 2, 3, 4] if os.environ.get("BLOCKPOINT_FAULTS_FULL") == "1" else [1, 2]

# A driver process: the pipeline of `_specs` on the Ray at argv[1]; SIGKILLs itself at the
# given point of the given step's commit, or reads its source slowly (seconds per batch).
# Once it has committed a step, its source blocks while the `hold` file exists (if named).
_DRIVER = textwrap.dedent("""
    import functools, os, signal, sys, time
    import ray
    from stages.actors.actor import StageSpec
    from stages.pipeline.run_errors import RunFencedError
    from stages.pipeline.pipeline import Pipeline
    from stages.checkpoint.policy import CheckpointPolicy
    from stages.pipeline.runs import RunStore
    from stages.pipeline.sink import FileSink
    from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

    address, store, out, run_id, n, kill_at, kill_step, delay, ttl, hold = sys.argv[1:11]
    n, kill_step, delay, ttl = int(n), int(kill_step), float(delay), float(ttl)
    committed = []

    def die(point, step):
        if point == kill_at and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    class KillingSink(FileSink):
        commit_anywhere = False  # the kill points are the driver's: commit in the driver

        def commit(self, step, records, *, token=None):
            die("before_sink_commit", step)
            super().commit(step, records, token=token)
            die("after_sink_commit", step)

        def publish(self, step, *, token):
            die("after_status_write", step)
            super().publish(step, token=token)
            die("after_publish", step)

    save_step = RunStore.save_step
    def killing_save_step(self, run_id, step, **kw):
        rec = save_step(self, run_id, step, **kw)
        die("after_step_record", step)
        return rec
    RunStore.save_step = killing_save_step

    class SlowSource(GeneratedSource):
        def read(self, position, max_n):
            time.sleep(delay)
            while committed and hold != "-" and os.path.exists(hold):
                time.sleep(0.01)
            return super().read(position, max_n)

    def on_event(ev):
        print(ev.kind.upper(), ev.step, flush=True)
        if ev.kind == "commit":
            committed.append(ev.step)

    ray.init(address=address, log_to_driver=False)
    specs = [StageSpec("agg", RunningAggregate, store, block_size=%(bs)d, lease_ttl=30.0),
             StageSpec("seq", functools.partial(Enrich, True, "sum"), store,
                       block_size=%(bs)d, lease_ttl=30.0)]
    p = Pipeline(SlowSource(seed=7, n=n, keys=5), specs, KillingSink(out, fsync=False),
                 run_id=run_id, batch_size=50, max_in_flight=2, keep_steps=1000,
                 policy=CheckpointPolicy(every_records=%(every)d), run_ttl=ttl,
                 on_event=on_event)
    try:
        res = p.run()
    except RunFencedError as exc:
        print("FENCED", type(exc).__name__, flush=True)
        sys.exit(3)
    print("FINISHED", res.finished, flush=True)
""") % {"bs": BS, "every": EVERY}


def _specs(store: str) -> list[StageSpec]:
    return [StageSpec("agg", RunningAggregate, store, block_size=BS, lease_ttl=30.0),
            StageSpec("seq", functools.partial(Enrich, True, "sum"), store, block_size=BS,
                      lease_ttl=30.0)]


def _source(n: int) -> GeneratedSource:
    return GeneratedSource(seed=7, n=n, keys=5)


def _driver(tmp_path: Path, n: int, *, kill_at: str = "-", kill_step: int = 0,
            delay: float = 0.0, ttl: float = RUN_TTL,
            hold: Path | None = None) -> subprocess.Popen[str]:
    address = ray.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, address, str(tmp_path / "store"), str(tmp_path / "out"),
         "run", str(n), kill_at, str(kill_step), str(delay), str(ttl),
         "-" if hold is None else str(hold)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))


def _pipeline(tmp_path: Path, n: int, ttl: float = RUN_TTL,
              **kw: Any) -> tuple[Pipeline, FileSink]:
    sink = FileSink(tmp_path / "out", fsync=False)
    p = Pipeline(_source(n), _specs(str(tmp_path / "store")), sink, run_id="run",
                 batch_size=50, max_in_flight=2, keep_steps=1000, run_ttl=ttl,
                 policy=CheckpointPolicy(every_records=EVERY), **kw)
    return p, sink


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 120.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"driver exited ({proc.returncode}) before {prefix!r}: {err}")
        if line.startswith(prefix):
            return line
    raise AssertionError(f"driver printed no {prefix!r} in {timeout}s")


def _wait_released(runs: RunStore, timeout: float = 120.0) -> None:
    """Until the dead driver's control lease expired (its keepalive died with it)."""
    deadline = time.monotonic() + timeout
    while (info := runs.store.find(runs.status_name("run"))) is not None and info.is_held():
        assert time.monotonic() < deadline, "the dead driver's control lease never expired"
        time.sleep(0.1)


def _assert_exact(tmp_path: Path, sink: FileSink, n: int) -> None:
    """Output equals the reference; the committed steps cover each source record once."""
    ref = run_reference(_source(n), _specs(str(tmp_path / "store")))
    assert sink.read_all() == ref
    runs = RunStore(open_store(str(tmp_path / "store")))
    steps = runs.list_steps("run")
    assert [s.step for s in steps] == list(range(1, len(steps) + 1))
    assert sum(s.meta["records_in"] for s in steps) == n
    assert sum(s.meta["records_out"] for s in steps) == len(ref)
    assert sink.committed_steps() == [s.step for s in steps]


def _assert_reader_sees_only_committed(tmp_path: Path, sink: FileSink,
                                       n: int) -> tuple[int, int]:
    """What a reader of the sink sees now: only committed steps, a prefix of the output.
    Returns the last committed step and the source records committed so far."""
    runs = RunStore(open_store(str(tmp_path / "store")))
    steps = runs.list_steps("run")
    committed = {s.step for s in steps}
    visible = sink.committed_steps()
    assert set(visible) <= committed, (visible, sorted(committed))
    ref = run_reference(_source(n), _specs(str(tmp_path / "store")))
    got = sink.read_all()
    assert got == ref[:len(got)]
    return max(committed, default=0), sum(s.meta["records_in"] for s in steps)


@pytest.mark.parametrize("step", KILL_STEPS)
@pytest.mark.parametrize("point", KILL_POINTS)
def test_driver_killed_at_every_point_of_a_step_commit(ray_local: None, tmp_path: Path,
                                                       point: str, step: int) -> None:
    n = 900
    proc = _driver(tmp_path, n, kill_at=point, kill_step=step)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == -9, (proc.returncode, err[-2000:])
    sink = FileSink(tmp_path / "out", fsync=False)
    committed, done = _assert_reader_sees_only_committed(tmp_path, sink, n)
    assert committed == (step - 1 if KILL_POINTS.index(point) < 3 else step)
    runs = RunStore(open_store(str(tmp_path / "store")))
    _wait_released(runs)
    p, sink = _pipeline(tmp_path, n)
    res = p.run()
    assert res.finished and res.records_in == n - done
    _assert_exact(tmp_path, sink, n)


def test_second_driver_is_refused_while_the_first_runs(ray_local: None, tmp_path: Path) -> None:
    n = 1200
    hold = tmp_path / "hold"  # the first driver waits after its first commit while it exists
    hold.touch()
    first = _driver(tmp_path, n, ttl=HELD_TTL, hold=hold)
    _wait_line(first, "COMMIT")
    p, _ = _pipeline(tmp_path, n, ttl=HELD_TTL)
    with pytest.raises(RunActiveError) as refused:
        p.run()
    assert refused.value.run_id == "run"
    assert f":{first.pid}:" in str(refused.value.holder)  # the first driver holds it
    hold.unlink()  # the first is still mid-run: let it finish
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0 and "FINISHED True" in out, err[-2000:]
    _assert_exact(tmp_path, FileSink(tmp_path / "out"), n)


def test_second_driver_taking_over_fences_the_first(ray_local: None, tmp_path: Path) -> None:
    n = 1500
    hold = tmp_path / "hold"  # the first driver waits after its first commit while it exists
    hold.touch()
    first = _driver(tmp_path, n, ttl=HELD_TTL, hold=hold)
    _wait_line(first, "COMMIT")
    p, sink = _pipeline(tmp_path, n, ttl=HELD_TTL, takeover=True)
    res = p.run()
    assert res.finished
    hold.unlink()  # the first, still mid-run and holding (its TTL has not run out), goes on
    out, err = first.communicate(timeout=180)
    assert first.returncode == 3, (first.returncode, out, err[-2000:])
    assert "FENCED" in out  # stopped by its next sink commit, step commit or recovery
    assert out.split("FENCED", 1)[1].split()[0] in {"RunFencedError", "SinkFencedError"}
    started = next(e for e in res.events if e.kind == "started")
    assert started.step >= 1  # it took over the first driver's committed steps
    _assert_exact(tmp_path, sink, n)
    assert RunStore(open_store(str(tmp_path / "store"))).status("run").state == "finished"
    assert os.path.exists(tmp_path / "out" / "fence.json")
