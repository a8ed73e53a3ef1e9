"""Asynchronous checkpoints (``CheckpointedStageState.checkpoint_async``, ``stages/checkpoint/background.py``).

Checked: the flush writes the snapshot, not the live state (arrays mutated in place right
after the call); at most one flush in flight, generations in request order; a background
failure surfaces at ``wait()`` or, unobserved, at the next checkpoint - fail-closed; the flush
observer's guard spans the background flush; a crash at every block write of a background
flush, and a real process SIGKILLed while flushing in the background, leave the previous
generation or the new one, complete.
"""

from __future__ import annotations

import random
import shutil
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from children import kill_child_writer
from polling import wait_for
from blockstore import FileStore, MemoryStore
from blockstore.faults import FaultyStore, InjectedCrash
from stages import CheckpointedStageState, CheckpointFailed, NoCheckpointError


def _arr(tag: int, n: int = 300_000) -> np.ndarray:
    return np.random.default_rng(tag).random(n)


def test_flush_writes_the_snapshot_not_the_live_state(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", 64 * 1024) as store:
        lease = store.acquire("a")
        state = {"arr": _arr(1), "n": 1}
        css = CheckpointedStageState(state, lease)
        pending = css.checkpoint_async(step=1)
        state["arr"][:] = -1.0            # in place, while the flush may still run
        state["n"] = 99
        info = pending.wait()
        assert info.step == 1 and pending.stall_s >= 0
        back = CheckpointedStageState.restore(store.open_reader("a"))
        assert back.state["n"] == 1 and np.array_equal(back.state["arr"], _arr(1))
        # The buffers are reused by the next snapshot; the second generation is its own.
        state["arr"][:] = _arr(2)
        css.checkpoint_async(step=2).wait()
        back = CheckpointedStageState.restore(store.open_reader("a"))
        assert back.restored.step == 2 and np.array_equal(back.state["arr"], _arr(2))


def test_one_flush_in_flight_generations_in_request_order(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", 64 * 1024) as store:
        lease = store.acquire("a")
        css = CheckpointedStageState({"arr": _arr(0)}, lease, retention=3)
        first = css.checkpoint_async(step=1)
        css.state = {"arr": _arr(1)}
        second = css.checkpoint_async(step=2)      # waits for the first, then snapshots
        assert first.done()
        css.state = {"arr": _arr(2)}
        third = css.checkpoint(step=3)             # sync: waits for the second
        assert second.done()
        gens = [first.wait().generation, second.wait().generation, third.generation]
        assert gens == sorted(gens) and len(set(gens)) == 3
        assert css.wait() is None                  # nothing in flight any more
        back = CheckpointedStageState.restore(store.open_reader("a"))
        assert back.restored.step == 3


def test_background_failure_surfaces_fail_closed(tmp_path: Path) -> None:
    faulty = FaultyStore(FileStore(tmp_path / "s", 64 * 1024))
    lease = faulty.acquire("a")
    css = CheckpointedStageState({"arr": _arr(1)}, lease)
    css.checkpoint(step=1)
    # Observed at wait():
    faulty.crash_after(faulty.block_writes + 2)
    pending = css.checkpoint_async(step=2)
    with pytest.raises(CheckpointFailed) as err:
        pending.wait()
    assert isinstance(err.value.__cause__, InjectedCrash)
    faulty.crash_after(None)
    css.checkpoint(step=3)                          # seen already: not raised again
    # Unobserved: raised by the next checkpoint, once.
    faulty.crash_after(faulty.block_writes + 2)
    unobserved = css.checkpoint_async(step=4)
    wait_for(unobserved.done, what="the background flush of step 4 failed")  # not wait()
    faulty.crash_after(None)
    with pytest.raises(CheckpointFailed):
        css.checkpoint_async(step=5)
    info = css.checkpoint_async(step=6).wait()
    assert info.step == 6
    back = CheckpointedStageState.restore(faulty.open_reader("a"))
    assert back.restored.step == 6
    faulty.close()


class _HoldingObserver:
    """Records the guard's calls; its flush start blocks until released."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.release = threading.Event()

    def on_flush_start(self, lease_id: str) -> None:
        self.events.append(("start", threading.current_thread().name))
        self.release.wait(60)

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        self.events.append(("complete", ok))


def test_observer_guard_spans_the_background_flush() -> None:
    store = MemoryStore(4096)
    lease = store.acquire("a")
    obs = _HoldingObserver()
    css = CheckpointedStageState({"v": 1}, lease, observer=obs)
    pending = css.checkpoint_async(step=1)      # returns at once: the start blocks elsewhere
    wait_for(lambda: obs.events, what="the flush start, in the background thread")
    assert obs.events[0][0] == "start"
    assert obs.events[0][1].startswith("bp-flush")
    assert css.flushing and not pending.done()
    with pytest.raises(NoCheckpointError):      # nothing written before the start returned
        CheckpointedStageState.restore(store.open_reader("a"))
    obs.release.set()
    pending.wait()
    assert obs.events[1:] == [("complete", True)] and not css.flushing


def test_crash_at_every_block_write_of_a_background_flush(tmp_path: Path) -> None:
    root = tmp_path / "template"
    with FileStore(root, 4096) as store:
        lease = store.acquire("a")
        CheckpointedStageState({"arr": _arr(1, 20_000)}, lease).checkpoint(step=1)
        lease.release()
    counting = FaultyStore(FileStore(shutil.copytree(root, tmp_path / "count")))
    css = CheckpointedStageState.restore(counting.acquire("a", steal=True))
    counting.block_writes = 0
    css.state = {"arr": _arr(2, 20_000)}
    css.checkpoint_async(step=2).wait()
    total = counting.block_writes
    counting.close()
    for k in range(total):
        dest = shutil.copytree(root, tmp_path / f"k{k}")
        faulty = FaultyStore(FileStore(dest))
        css = CheckpointedStageState.restore(faulty.acquire("a", steal=True))
        faulty.block_writes = 0
        faulty.crash_after(k, torn=k % 2 == 1)
        css.state = {"arr": _arr(2, 20_000)}
        with pytest.raises(CheckpointFailed):
            css.checkpoint_async(step=2).wait()
        faulty.close()
        with FileStore(dest) as fresh:
            back = CheckpointedStageState.restore(fresh.open_reader("a"))
        tag = back.restored.step
        assert tag in (1, 2) and np.array_equal(back.state["arr"], _arr(tag, 20_000)), k
        shutil.rmtree(dest)


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from blockstore import FileStore
    from stages import CheckpointedStageState, NoCheckpointError
    store = FileStore(sys.argv[1], 65536)
    lease = store.acquire("stage", steal=True)
    try:
        css = CheckpointedStageState.restore(lease)
        step = css.state["step"]
    except NoCheckpointError:
        css, step = CheckpointedStageState({"step": 0}, lease), 0
    state = {"step": step, "data": np.zeros(2_000_000, dtype=np.uint8)}
    css.state = state
    while True:
        step += 1
        state["step"] = step
        state["data"][:] = step % 251          # in place: the snapshot must not see later steps
        pending = css.checkpoint_async(step=step)
        print("asked", step, flush=True)
        pending.wait()
        print("done", step, flush=True)
""")


def test_sigkill_during_a_background_flush(tmp_path: Path) -> None:
    root = tmp_path / "store"
    last = 0
    rng = random.Random(3)
    for _ in range(4):
        # let it commit a few, then kill it mid-flight (after it asked for another flush)
        lines = kill_child_writer(
            CHILD, root, rng=rng, max_delay=0.03,
            ready=lambda ls: bool(ls) and ls[-1].startswith("asked")
            and sum(x.startswith("done") for x in ls) >= 2)
        done = [int(x.split()[1]) for x in lines if x.startswith("done")]
        with FileStore(root) as store:
            back = CheckpointedStageState.restore(store.open_reader("stage"))
        step = back.state["step"]
        assert done[-1] <= step <= done[-1] + 1, (done, step)
        assert np.all(back.state["data"] == step % 251), "a mix of two steps"
        assert step > last
        last = step
