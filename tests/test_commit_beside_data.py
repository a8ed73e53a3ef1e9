"""A step's commit in the driver's committer thread (stages/pipeline/committing.py), beside the
data path: steps keep their policy's size while a commit runs, after a recovery too; a stage
killed while a commit is held open; a batch output stage that returns nothing for some
batches; Ctrl-C while a commit is stuck. Findings of the review of a10d76b (review 37)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from stages.actors.actor import StageSpec
from stages.checkpoint.policy import CheckpointPolicy
from stages.pipeline.committing import Committer
from stages.pipeline.pipeline import Pipeline, PipelineEvent, run_reference
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

import gates
from polling import wait_for

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(gates)


class HeldCommitSink(FileSink):
    """The commit of ``step`` waits while the gate at ``gate`` is held (a slow disk the
    test controls); commits in the sink writer."""

    commit_anywhere = True

    def __init__(self, directory: Any, *, gate: str, step: int, **kw: Any) -> None:
        super().__init__(directory, **kw)
        self.gate, self.step = gate, step

    def commit(self, step: int, records: Any, *, token: Any = None) -> None:
        if step == self.step:
            Path(self.gate + ".entered").touch()
            end = time.monotonic() + gates.DEFAULT_LIMIT_S
            while os.path.exists(self.gate) and time.monotonic() < end:
                time.sleep(0.01)
        super().commit(step, records, token=token)


def _specs(store: str, last: Any = None) -> list[StageSpec]:
    return [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=30.0),
            StageSpec("seq", last or functools.partial(Enrich, True, "sum"), store,
                      block_size=64 * 1024, lease_ttl=30.0)]


def _sizes(events: list[PipelineEvent]) -> list[int]:
    return [e.detail["records_in"] for e in events if e.kind == "commit"]


@pytest.mark.ray
def test_steps_keep_their_size_while_a_commit_is_held_and_after_a_kill(
        ray_local: None, tmp_path: Path) -> None:
    """Step 2's commit held open: the driver reads the next step's 400 records and no more;
    'agg' killed while it is held: every step after the recovery has 400 records too (the
    first one after a rollback was a single batch), and the output is exact."""
    gate = str(gates.hold(tmp_path / "gate"))
    src = GeneratedSource(seed=9, n=4000, keys=7)
    sink = HeldCommitSink(tmp_path / "out", gate=gate, step=2, fsync=False)
    events: list[PipelineEvent] = []
    p = Pipeline(src, _specs(str(tmp_path / "store")), sink, batch_size=50, max_in_flight=4,
                 policy=CheckpointPolicy(every_records=400), on_event=events.append)

    def act() -> None:
        wait_for(lambda: gates.entered(gate), what="step 2's commit held")
        wait_for(lambda: p._open_records >= 400, what="the next step read")
        ray.kill(p.handles["agg"], no_restart=True)
        gates.release(gate)

    actor = threading.Thread(target=act, daemon=True)
    actor.start()
    res = p.run()
    actor.join()
    assert res.recoveries >= 1
    assert sink.read_all() == run_reference(src, p.specs)
    sizes = _sizes(events)
    assert sizes[:-1] == [400] * (len(sizes) - 1) and sizes[-1] <= 400, sizes


class TickingSource:
    """A ``GeneratedSource`` whose every read moves the test's clock one second on."""

    def __init__(self, ticks: list[float], **kw: Any) -> None:
        self.inner = GeneratedSource(**kw)
        self.ticks = ticks

    def initial_position(self) -> Any:
        return self.inner.initial_position()

    def read(self, position: Any, n: int) -> Any:
        self.ticks[0] += 1.0
        return self.inner.read(position, n)


@pytest.mark.ray
def test_a_time_policy_s_steps_keep_their_size_while_commits_run(
        ray_local: None, tmp_path: Path) -> None:
    """every_seconds=4 on a clock that reads move by a second: the steps between the first
    and the last hold the same records (they were twice the policy, then one, when the
    policy's timer restarted at the end of each commit)."""
    ticks = [0.0]
    src = TickingSource(ticks, seed=4, n=3000, keys=7)
    sink = FileSink(tmp_path / "out", fsync=False)
    events: list[PipelineEvent] = []
    p = Pipeline(src, _specs(str(tmp_path / "store")), sink, batch_size=50, max_in_flight=4,
                 policy=CheckpointPolicy(every_seconds=4.0), clock=lambda: ticks[0],
                 on_event=events.append)
    p.run()
    sizes = _sizes(events)
    assert len(sizes) >= 5 and len(set(sizes[1:-1])) == 1 and sizes[1] <= 250, sizes
    assert sink.read_all() == run_reference(src.inner, p.specs)


class SometimesNothing:
    """A batch output stage that keeps the records whose ``i`` is a multiple of 97 and
    returns None (nothing) for a batch without one."""

    batch_format = "pyarrow"

    def initial_state(self) -> dict[str, int]:
        return {}

    def process_batch(self, state: dict[str, int], batch: Any) -> Any:
        import pyarrow as pa

        kept = batch.filter(pa.array(batch.column("i").to_numpy() % 97 == 0))
        return kept.select(["i", "key", "count"]) if kept.num_rows else None


@pytest.mark.ray
def test_a_batch_output_stage_that_returns_nothing_commits_through_the_writer(
        ray_local: None, tmp_path: Path) -> None:
    """Its None reached the writer as an empty list beside its tables, and every commit
    failed with "returned records and tables in one step" (the driver's commit took it)."""
    src = GeneratedSource(seed=2, n=1500, keys=5)
    sink = FileSink(tmp_path / "out", fsync=False)
    p = Pipeline(src, _specs(str(tmp_path / "store"), SometimesNothing), sink, batch_size=50,
                 max_in_flight=4, policy=CheckpointPolicy(every_records=300))
    assert p.remote_commit
    res = p.run()
    assert res.finished and sink.read_all() == run_reference(src, p.specs)


def test_the_committer_does_not_hold_the_process_past_its_bound() -> None:
    """A commit stuck for good: shutdown with a bound returns, and the thread is a daemon
    (the process may exit); calls run in order, their errors in their futures."""
    c = Committer("test-commit")
    order: list[int] = []
    first = c.submit(order.append, 1)
    failing = c.submit(lambda: 1 / 0)
    stuck = threading.Event()
    c.submit(stuck.wait)
    c.submit(order.append, 2)
    assert first.result(timeout=30) is None and order[:1] == [1]
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=30)
    c.shutdown(timeout=0.2)
    assert c._thread.daemon and c._thread.is_alive()
    stuck.set()
    c._thread.join(30)
    assert order == [1, 2] and not c._thread.is_alive()


_CHILD = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    import ray
    # An xdist worker ignores SIGINT, and a child inherits that (Python then installs no
    # KeyboardInterrupt handler): what an operator's shell gives a driver, given back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
    from test_commit_beside_data import HeldCommitSink, _specs
    from stages import CheckpointPolicy, GeneratedSource, Pipeline
    root = Path(sys.argv[1])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 1024 * 1024)
    sink = HeldCommitSink(root / "out", gate=str(root / "gate"), step=2, fsync=False)
    p = Pipeline(GeneratedSource(seed=3, n=100000, keys=7), _specs(str(root / "store")), sink,
                 batch_size=50, max_in_flight=4, policy=CheckpointPolicy(every_records=400),
                 ping_timeout=2.0)
    try:
        p.run()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
""")


@pytest.mark.ray
def test_ctrl_c_while_a_commit_is_stuck_stops_the_driver(tmp_path: Path) -> None:
    """One SIGINT while step 2's commit is stuck in the writer: the driver stops within its
    bound (ping_timeout), not when the commit ends (it waited for it: 46 s for a 45 s stall)."""
    gate = str(gates.hold(tmp_path / "gate"))
    repo = str(Path(__file__).resolve().parent.parent)
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # a socket path must be short
    env = {**os.environ, "PYTHONPATH": repo, "RAY_TMPDIR": ray_tmp}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), repo], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: gates.entered(gate) or child.poll() is not None, timeout=180,
                 what="step 2's commit held")
        assert child.poll() is None, child.communicate()[0][-3000:]
        child.send_signal(signal.SIGINT)
        # The gate stays held: the commit never ends by itself while the driver stops.
        out, _ = child.communicate(timeout=120)
    finally:
        gates.release(gate)
        if child.poll() is None:
            child.kill()
            child.communicate()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "interrupted" in out, out[-3000:]
    assert child.returncode != 0
