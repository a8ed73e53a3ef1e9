"""Asynchronous checkpoints where users meet them: the stage actor and ``@checkpointed``.

In process, without Ray (a ``StageActor`` and a decorated class are plain classes):

* ``StageSpec(async_checkpoints=True)``: a barrier ``checkpoint`` returns ``pending`` while
  its flush is still held open (a gate in the flush observer), the stage goes on processing,
  ``flushed(step)`` returns the durable generation - which holds the snapshot, not what was
  processed after it; a background flush that fails (an injected crash in the store) makes
  ``flushed`` raise ``CheckpointFailed`` and leaves the previous step as the newest one on
  the lease; ``rollback`` waits for a flush in flight before it replaces the state.
* ``@checkpointed(async_checkpoint=True)``: refused with ``every_calls=1`` (and without a
  policy); a call that makes a checkpoint due returns before its flush ends, a new
  incarnation restores it; a background flush refused for a stale epoch makes the zombie's
  next calls raise ``ActorFenced``.

(The same through real Ray pipelines: ``tests/test_pipeline.py``; the scheduler's flush mark
over a background flush: ``tests/test_scheduler_marks.py``.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blockstore import FileStore
from blockstore.faults import FaultyStore
from polling import thread_inside, wait_for
from stages import (
    ActorFenced,
    CheckpointedConfigError,
    CheckpointedStageState,
    CheckpointFailed,
    checkpointed,
)
from stages.actors.actor import StageActor, StageSpec


class ArrayStage:
    """A stage whose state is a 1 MiB array (8 blocks of 128 KiB) plus a counter."""

    def initial_state(self) -> dict[str, Any]:
        return {"n": 0, "arr": np.zeros(1 << 17)}

    def process(self, state: dict[str, Any], record: int) -> list[int]:
        state["n"] += 1
        state["arr"][:] = state["n"]          # in place, also while a flush runs
        return [state["n"]]


class GateObserver:
    """Holds every flush open in ``on_flush_start`` while ``gate`` is set; records calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.calls: list[tuple[str, Any]] = []

    def on_flush_start(self, lease_id: str) -> None:
        self.calls.append(("start", threading.current_thread().name))
        self.started.set()
        while self.gate.is_set():
            time.sleep(0.005)

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        self.calls.append(("complete", ok))


def _restored(store: Any, name: str) -> CheckpointedStageState[Any]:
    return CheckpointedStageState.restore(store.open_reader(name))


def test_stage_actor_barrier_returns_after_the_snapshot(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s", 128 * 1024)
    obs = GateObserver()
    spec = StageSpec("a", ArrayStage, store, async_checkpoints=True,
                     compression="none")  # type: ignore[arg-type]
    actor = StageActor(spec, observer=obs)
    actor.process_batch([1, 2, 3])
    ack = actor.checkpoint(step=1, meta={"source_position": 3})
    assert ack["pending"] and ack["step"] == 1 and ack["stall_s"] >= 0
    assert obs.started.wait(60) and obs.calls[0][1].startswith("bp-flush")
    assert actor.info()["flushing"]                  # the mark spans the background flush
    assert actor.process_batch([4, 5]) == [4, 5]     # the data path goes on meanwhile
    with pytest.raises(Exception):                   # nothing committed yet
        _restored(store, "a")
    obs.gate.clear()
    info = actor.flushed(1)
    assert info["step"] == 1 and info["generation"] == 1 and not actor.info()["flushing"]
    assert obs.calls[-1] == ("complete", True)
    back = _restored(store, "a")
    assert back.state["n"] == 3 and np.all(back.state["arr"] == 3)  # the snapshot's state
    assert actor.flushed(1) == info                   # asked again: the same answer
    with pytest.raises(CheckpointFailed, match="no checkpoint of step 7"):
        actor.flushed(7)
    # Out-of-band requests stay synchronous (and aligned stages answer with the last step).
    assert actor.checkpoint(step=0)["skipped"]
    actor.shutdown()
    store.close()


def test_stage_actor_failed_background_flush_fails_the_step(tmp_path: Path) -> None:
    faulty = FaultyStore(FileStore(tmp_path / "s", 128 * 1024))
    spec = StageSpec("a", ArrayStage, faulty, async_checkpoints=True,
                     compression="none")  # type: ignore[arg-type]
    actor = StageActor(spec)
    actor.process_batch([1])
    assert actor.checkpoint(step=1)["pending"]
    assert actor.flushed(1)["generation"] == 1
    actor.process_batch([2, 3])
    faulty.crash_after(faulty.block_writes + 3, torn=True)   # inside step 2's data blocks
    assert actor.checkpoint(step=2)["pending"]               # the snapshot itself is fine
    with pytest.raises(CheckpointFailed):
        actor.flushed(2)                                      # fail-closed: not durable
    faulty.crash_after(None)
    back = _restored(faulty, "a")
    assert back.restored.step == 1 and back.state["n"] == 1  # the previous step, complete
    # The pipeline's recovery: roll back to the committed step; the stage goes on from it.
    assert actor.rollback(1)["restored_step"] == 1
    assert actor.process_batch([2]) == [2]
    assert actor.checkpoint(step=2)["pending"] and actor.flushed(2)["step"] == 2
    actor.shutdown()
    faulty.close()


def test_stage_actor_rollback_waits_for_the_flush_in_flight(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s", 128 * 1024)
    obs = GateObserver()
    spec = StageSpec("a", ArrayStage, store, async_checkpoints=True,
                     compression="none")  # type: ignore[arg-type]
    actor = StageActor(spec, observer=obs)
    actor.process_batch([1])
    actor.checkpoint(step=1)
    assert obs.started.wait(60)
    done = threading.Event()
    t = threading.Thread(target=lambda: (actor.rollback(0), done.set()))
    t.start()
    # The rollback's handshake: it is waiting in the incarnation's drain of the flush.
    wait_for(lambda: thread_inside(t, "drain"), what="the rollback waiting for the flush")
    assert not done.is_set()              # held: the old state's flush has not ended
    obs.gate.clear()
    assert done.wait(60)
    t.join()
    assert actor.get_state()["n"] == 0     # rolled back to "before step 1"
    actor.shutdown()
    store.close()


# -- @checkpointed(async_checkpoint=True) ----------------------------------------------------
class Tally:
    def __init__(self) -> None:
        self.state = {"n": 0, "arr": np.zeros(1 << 16)}

    def add(self, k: int = 1) -> int:
        self.state["n"] += k
        self.state["arr"][:] = self.state["n"]
        return self.state["n"]


def test_async_decorator_refuses_exactly_once_and_no_policy(store_dir: str) -> None:
    with pytest.raises(CheckpointedConfigError, match="every_calls=1") as e:
        checkpointed(store=store_dir, every_calls=1, async_checkpoint=True)(Tally)
    assert "exactly-once" in str(e.value) and e.value.actor == "Tally"
    with pytest.raises(CheckpointedConfigError, match="policy checkpoints"):
        checkpointed(store=store_dir, async_checkpoint=True)(Tally)
    checkpointed(store=store_dir, every_seconds=5.0, async_checkpoint=True)(Tally)  # fine


def test_async_decorator_round_trip(store_dir: str) -> None:
    obs = GateObserver()
    cls = checkpointed(store=store_dir, key="t", every_calls=3, async_checkpoint=True,
                       observer=obs)(Tally)
    a = cls()
    a.add()
    a.add()
    obs.gate.set()
    assert a.add() == 3                     # due: snapshot taken, flush held open, returned
    assert obs.started.wait(60)
    info = a.checkpoint_info()
    assert info["flushing"] and info["async_checkpoint"] and info["generation"] is None
    assert a.add(10) == 13                  # mutates while the flush runs
    obs.gate.clear()
    a.add()                                 # not due (1 call since the snapshot)
    assert a.checkpoint()["generation"] == 2   # on demand: sync, after the one in flight
    assert cls().state["n"] == 14
    b = cls()                               # a new incarnation; restores generation 2
    assert b.state["n"] == 14 and np.all(b.state["arr"] == 14)


def test_async_decorator_background_failure_is_not_silent(store_dir: str) -> None:
    cls = checkpointed(store=store_dir, key="z", every_calls=2, async_checkpoint=True)(Tally)
    a = cls()
    a.add()
    a.add()                                 # generation 1, in the background
    a._bp_durable.inc.drain()
    assert a.checkpoint_info()["generation"] == 1
    b = cls()                               # takes the lease: a is a zombie now
    assert b.state["n"] == 2
    a.add()
    a.add()                                 # due: snapshot, flush refused (stale epoch)
    a._bp_durable.inc.drain()
    with pytest.raises(ActorFenced):
        a.add()
    assert cls().state["n"] == 2            # the zombie's snapshot never became visible


# -- snapshot strategies ---------------------------------------------------------------------
def test_parallel_snapshot_copy_and_no_copy_mode(tmp_path: Path) -> None:
    from stages.checkpoint import background

    big = np.random.default_rng(5).random((40 << 20) // 8 + 13)   # > PARALLEL_COPY_MIN, odd
    assert big.nbytes >= background.PARALLEL_COPY_MIN
    expect = big.copy()
    with FileStore(tmp_path / "s", 1 << 20) as store:
        lease = store.acquire("a")
        state = {"big": big}
        css = CheckpointedStageState(state, lease, compression="none")
        pending = css.checkpoint_async(step=1)          # copied by two threads
        big[:] = 0.0                                     # in place, right away
        pending.wait()
        back = _restored(store, "a")
        assert np.array_equal(back.state["big"], expect)
        # No-copy mode: the caller replaces the array instead of mutating it in place.
        css.state = {"big": expect}
        pending = css.checkpoint_async(step=2, copy=False)
        css.state = {"big": np.ones(3)}
        assert pending.stall_s >= 0 and pending.wait().step == 2
        back = _restored(store, "a")
        assert back.restored.step == 2 and np.array_equal(back.state["big"], expect)
