"""Runs: steps saved/loaded/listed in the store; pause and resume exactly once (A10).

Claims are raced by real processes and a claimer is SIGKILLed; no mocks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from blockstore import open_store
from blockstore.faults import FaultyStore, InjectedCrash
from polling import wait_for
from stages.pipeline.runs import (
    RunClaimConflict,
    RunClaimLost,
    RunNotFoundError,
    RunNotPausedError,
    RunStepExistsError,
    RunStore,
    StageCommit,
)

BS = 512


#: A claim that stays held however slow its keepalive is under load.
HELD_TTL = 30.0
#: A claim whose expiry a test waits out (by condition).
SHORT_TTL = 1.0


@pytest.fixture
def runs(store_dir: str) -> RunStore:
    return RunStore(open_store(store_dir, block_size=BS), claim_ttl=HELD_TTL)


def _save(runs: RunStore, run_id: str, step: int, t: float, **kw: object) -> None:
    runs.save_step(run_id, step, source_position={"offset": step * 10}, committed_at=t,
                   stages=[StageCommit("a", lease_id="x" * 32, epoch=2, generation=step)],
                   **kw)  # type: ignore[arg-type]


def test_save_load_latest_and_by_step(runs: RunStore) -> None:
    runs.create_run("r1")
    big = ["item-%04d" % i for i in range(300)]  # payload spans many 512-byte blocks
    _save(runs, "r1", 1, 100.0)
    _save(runs, "r1", 2, 200.0, in_flight=big, meta={"outputs": 7})
    latest = runs.load_step("r1")
    assert latest.step == 2 and latest.in_flight == tuple(big) and latest.meta == {"outputs": 7}
    assert latest.source_position == {"offset": 20}
    assert latest.stage("a") == StageCommit("a", lease_id="x" * 32, epoch=2, generation=2)
    assert runs.load_step("r1", 1).committed_at == 100.0
    with pytest.raises(RunNotFoundError) as e:
        runs.load_step("r1", 3)
    assert e.value.step == 3
    with pytest.raises(RunNotFoundError):
        runs.load_step("nope")
    with pytest.raises(RunStepExistsError):
        _save(runs, "r1", 2, 300.0)
    assert runs.load_step("r1", 2).committed_at == 200.0  # immutable


def test_list_filters(runs: RunStore) -> None:
    for s in range(10):
        _save(runs, "r", s, 1000.0 + s)
    _save(runs, "other", 0, 1000.0)
    steps = lambda **kw: [r.step for r in runs.list_steps("r", **kw)]  # noqa: E731
    assert steps() == list(range(10))
    assert steps(min_step=3, max_step=5) == [3, 4, 5]
    assert steps(after=1006.0) == [7, 8, 9]
    assert steps(before=1002.0) == [0, 1]
    assert steps(after=1001.0, before=1004.0) == [2, 3]
    assert steps(limit=2) == [0, 1]
    assert steps(limit=3, newest_first=True) == [9, 8, 7]
    assert steps(min_step=4, after=1007.0, limit=1) == [8]
    assert runs.list_steps("missing") == []
    assert runs.prune_steps("r", keep=3) == list(range(7))
    assert steps() == [7, 8, 9]


def test_torn_step_save_is_invisible_then_rewritable(store_dir: str) -> None:
    inner = open_store(store_dir, block_size=BS)
    faulty = FaultyStore(inner)
    runs = RunStore(faulty)
    _save(runs, "r", 1, 1.0)
    faulty.crash_after(faulty.block_writes + 3, torn=True)  # dies among the payload blocks
    with pytest.raises(InjectedCrash):
        _save(runs, "r", 2, 2.0, in_flight=["x" * 50] * 40)
    faulty.crash_after(None)
    fresh = RunStore(open_store(store_dir))
    assert fresh.load_step("r").step == 1  # never a partial document
    _save(fresh, "r", 2, 2.0)
    assert fresh.load_step("r").step == 2


def test_claim_once_complete_idempotent_and_abort(runs: RunStore) -> None:
    runs.create_run("r")
    _save(runs, "r", 4, 1.0)
    with pytest.raises(RunNotPausedError):
        runs.claim("r")  # running, not paused
    assert runs.pause("r").step == 4
    claim = runs.claim("r", driver="A")
    with pytest.raises(RunClaimConflict):
        runs.claim("r", driver="B")  # A holds the control lease
    assert claim.step == 4
    st = claim.complete()
    assert st.state == "running" and st.resumes == 1 and st.driver == "A"
    assert claim.complete().resumes == 1  # idempotent
    with pytest.raises(RunNotPausedError):
        runs.claim("r", driver="B")  # no double resume
    runs.pause("r")
    with pytest.raises(ValueError), runs.claim("r", driver="C"):
        raise ValueError("resume failed")
    assert runs.status("r").state == "paused"  # an aborted claim re-arms
    with runs.claim("r", driver="D") as c:
        c.complete()
    assert runs.status("r").resumes == 2


def test_fenced_claimer_cannot_complete(runs: RunStore) -> None:
    runs.create_run("r")
    runs.pause("r", 0)
    a = RunStore(runs.store, claim_ttl=SHORT_TTL).claim("r", driver="A")
    a._lease._stop.set()  # A hangs: its keepalive stops, as in a long GC pause
    _wait_not_held(runs, "r")
    assert runs.recover_orphaned() == ["r"]
    b = runs.claim("r", driver="B")
    with pytest.raises(RunClaimLost):
        a.complete()
    assert b.complete().resumes == 1
    assert runs.status("r").orphans_recovered == 1


def _wait_not_held(runs: RunStore, run_id: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while runs.store.find(runs.status_name(run_id)).is_held():  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "claim lease never expired"
        time.sleep(0.1)


_CLAIMER = textwrap.dedent("""
    import sys, time, os
    from pathlib import Path
    from blockstore import open_store
    from stages.pipeline.runs import RunStore, RunError
    store_dir, go, name, mode = sys.argv[1:5]
    # A short claim only where its expiry is waited for (a hung claimer is SIGKILLed).
    runs = RunStore(open_store(store_dir), claim_ttl=1.0 if mode == "hang" else 30.0)
    Path(go + "." + name + ".ready").touch()
    while not os.path.exists(go):
        time.sleep(0.002)
    results = []
    for run_id in sys.argv[5:]:
        try:
            c = runs.claim(run_id, driver=name)
        except RunError as exc:
            results.append(f"{run_id}:lost:{type(exc).__name__}")
            continue
        results.append(f"{run_id}:won")
        if mode == "hang":
            print("CLAIMED", flush=True)
            time.sleep(600)
        time.sleep(0.05)
        c.complete()
    print(" ".join(results), flush=True)
""")


def _spawn(store_dir: str, go: Path, name: str, mode: str, run_ids: list[str]
           ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _CLAIMER, store_dir, str(go), name, mode,
                             *run_ids], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(Path(__file__).resolve().parents[1]))


def _wait_ready(go: Path, names: tuple[str, ...], procs: list[subprocess.Popen[str]]) -> None:
    """Both claimers have opened the store and poll for ``go`` (their handshake)."""
    wait_for(lambda: all(Path(f"{go}.{n}.ready").exists() for n in names)
             or any(p.poll() is not None for p in procs),
             timeout=120, what="the claimers up and waiting at the gate")


def test_two_processes_race_exactly_one_wins(runs: RunStore, store_dir: str,
                                             tmp_path: Path) -> None:
    run_ids = [f"race{i}" for i in range(6)]
    for r in run_ids:
        runs.create_run(r)
        runs.pause(r, 0)
    go = tmp_path / "go"
    procs = [_spawn(store_dir, go, n, "complete", run_ids) for n in ("P1", "P2")]
    _wait_ready(go, ("P1", "P2"), procs)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(dict(tok.split(":", 1) for tok in out.split()))
    for r in run_ids:
        results = [o[r] for o in outs]
        assert sorted(results)[1] == "won" and results.count("won") == 1, (r, results)
        st = runs.status(r)
        assert st.state == "running" and st.resumes == 1


def test_sigkilled_claimer_is_recovered_once(runs: RunStore, store_dir: str,
                                             tmp_path: Path) -> None:
    runs.create_run("k")
    runs.pause("k", 3)
    go = tmp_path / "go"
    go.touch()
    p = _spawn(store_dir, go, "victim", "hang", ["k"])
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "CLAIMED"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert runs.status("k").state == "claimed"
    assert runs.recover_orphaned() == [] or runs.status("k").state == "paused"
    _wait_not_held(runs, "k")
    with pytest.raises(RunNotPausedError):
        runs.claim("k")  # an orphaned claim must be recovered first, not silently taken
    assert runs.recover_orphaned() == ["k"]
    assert runs.recover_orphaned() == []  # once
    assert runs.status("k").state == "paused"
    claim = runs.claim("k", driver="survivor")
    assert claim.step == 3
    assert claim.complete().resumes == 1
    assert runs.recover_orphaned() == []


def test_errors_pickle_with_their_attributes() -> None:
    """Errors cross Ray and process boundaries; they must unpickle intact."""
    import pickle

    from stages.actors.actor import RollbackUnavailable, StageStopped
    from stages.pipeline.pipeline import PipelineError, StageProcessError

    errors = [RunNotFoundError("a", run_id="r", step=2), RunClaimConflict("b", run_id="r",
              holder="h"), RunNotPausedError("c", run_id="r", state="paused"),
              RunStepExistsError("d", run_id="r", step=1), RunClaimLost("e", run_id="r"),
              StageStopped("f", stage_id="s"), RollbackUnavailable("g", stage_id="s", step=3),
              StageProcessError("h", stage_id="s"), PipelineError("i")]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.__dict__ == e.__dict__ and str(back) == str(e)


_DIES_IN_SAVE = textwrap.dedent("""
    import sys
    from blockstore import open_store
    from blockstore.faults import FaultyStore
    from stages.pipeline.runs import RunStore
    store = FaultyStore(open_store(sys.argv[1]))
    runs = RunStore(store)
    runs.save_step("r", 1, source_position=1)
    store.crash_after(store.block_writes + int(sys.argv[2]), kill=True)  # SIGKILL mid-save
    runs.save_step("r", 2, source_position=2, in_flight=["x" * 50] * 40)
    print("survived")
""")


@pytest.mark.parametrize("cut", [0, 1, 3])
def test_driver_killed_inside_save_step_is_recovered(store_dir: str, cut: int) -> None:
    """A driver SIGKILLed inside save_step leaves the step's lease held (its TTL); the
    restarted driver saves that step at once instead of failing with RunStepExistsError."""
    open_store(store_dir, block_size=BS).close()
    p = subprocess.run([sys.executable, "-c", _DIES_IN_SAVE, store_dir, str(cut)],
                       capture_output=True, text=True, timeout=60,
                       cwd=str(Path(__file__).resolve().parents[1]))
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr)
    runs = RunStore(open_store(store_dir))
    assert runs.store.find(runs.step_name("r", 2)).is_held()  # type: ignore[union-attr]
    assert runs.load_step("r").step == 1  # the torn save is invisible
    rec = runs.save_step("r", 2, source_position=2)
    assert runs.load_step("r") == rec and rec.step == 2
    with pytest.raises(RunStepExistsError):  # and a saved step stays immutable
        runs.save_step("r", 2, source_position=3)


@pytest.mark.parametrize("run_id", ["nightly\u202e1", "\u200brun", "r\u2066x\u2069", "r\x1b[2J"])
def test_run_id_with_an_invisible_or_control_character_refused(runs: RunStore,
                                                                run_id: str) -> None:
    """A run id is shown in logs, metrics (``run`` tag) and dashboards: a bidirectional
    override or a zero-width character made another run's id there. Refused as a run id,
    naming the code point, before any lease is taken."""
    from blockstore import LeaseNameError

    point = next(f"U+{ord(c):04X}" for c in run_id if not c.isprintable())
    for call in (lambda: runs.create_run(run_id), lambda: _save(runs, run_id, 1, 1.0),
                 lambda: runs.claim(run_id)):
        with pytest.raises(LeaseNameError) as err:
            call()
        assert str(err.value).startswith("run id ") and point in str(err.value)
    assert runs.list_runs() == [] and runs.store.list_leases() == []
