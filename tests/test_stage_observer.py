"""The flush observer guard: exactly one start and one complete on every path (A6, local part)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from polling import wait_for

from blockstore import FileStore
from blockstore.faults import FaultyStore
from stages import CheckpointedStageState, CheckpointFailed, CheckpointFlushObserver, flush_guard


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)


NOISE = os.urandom(50000)


class Recorder:
    """Records calls; optionally notes how many blocks were written when start was called."""

    def __init__(self, store: FaultyStore | None = None) -> None:
        self.calls: list[tuple[str, str, bool | None]] = []
        self.writes_at_start: list[int] = []
        self.store = store

    def on_flush_start(self, lease_id: str) -> None:
        self.calls.append(("start", lease_id, None))
        if self.store is not None:
            self.writes_at_start.append(self.store.block_writes)

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        self.calls.append(("complete", lease_id, ok))

    def counts(self) -> tuple[int, int]:
        return (sum(c[0] == "start" for c in self.calls),
                sum(c[0] == "complete" for c in self.calls))


class Explodes:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self):
        raise self.exc


@pytest.fixture
def faulty(tmp_path: Path):
    store = FaultyStore(FileStore(tmp_path / "s", 4096))
    yield store
    store.close()


def test_protocol_is_runtime_checkable() -> None:
    assert isinstance(Recorder(), CheckpointFlushObserver)


def test_success_start_before_first_write_and_complete_ok(faulty: FaultyStore) -> None:
    lease = faulty.acquire("st")
    obs = Recorder(faulty)
    css = CheckpointedStageState.with_observer({"a": b"x" * 20000}, lease, "stage-7", obs)
    css.checkpoint()
    assert obs.calls == [("start", "stage-7", None), ("complete", "stage-7", True)]
    assert obs.writes_at_start == [0]
    assert faulty.block_writes > 0
    css.checkpoint()
    assert obs.counts() == (2, 2)


def test_serialization_error(faulty: FaultyStore) -> None:
    lease = faulty.acquire("st")
    obs = Recorder()
    css = CheckpointedStageState.with_observer({"bad": Explodes(ValueError("nope"))}, lease,
                                               lease.lease_id, obs)
    with pytest.raises(CheckpointFailed) as ei:
        css.checkpoint()
    assert isinstance(ei.value.__cause__, ValueError)
    assert obs.calls == [("start", lease.lease_id, None), ("complete", lease.lease_id, False)]
    assert faulty.block_writes == 0


def test_write_failure(faulty: FaultyStore) -> None:
    lease = faulty.acquire("st")
    obs = Recorder()
    css = CheckpointedStageState.with_observer({"a": NOISE}, lease, "s", obs)
    faulty.crash_after(3)
    with pytest.raises(CheckpointFailed):
        css.checkpoint()
    assert obs.counts() == (1, 1) and obs.calls[-1][2] is False
    faulty.crash_after(None)
    css.checkpoint()  # and the next one works
    assert obs.counts() == (2, 2) and obs.calls[-1][2] is True


def test_keyboard_interrupt_propagates_unwrapped(faulty: FaultyStore) -> None:
    lease = faulty.acquire("st")
    obs = Recorder()
    css = CheckpointedStageState.with_observer({"k": Explodes(KeyboardInterrupt())}, lease, "s",
                                               obs)
    with pytest.raises(KeyboardInterrupt):
        css.checkpoint()
    assert obs.calls == [("start", "s", None), ("complete", "s", False)]


def test_generator_closed_inside_the_guard() -> None:
    obs = Recorder()

    def stage():
        with flush_guard(obs, "g"):
            yield "flushing"
            yield "never"

    gen = stage()
    assert next(gen) == "flushing"
    assert obs.counts() == (1, 0)
    gen.close()  # cancellation: GeneratorExit inside the guard
    assert obs.calls == [("start", "g", None), ("complete", "g", False)]


def test_generator_driving_checkpoints_cancelled(faulty: FaultyStore) -> None:
    lease = faulty.acquire("st")
    obs = Recorder()
    css = CheckpointedStageState.with_observer({"i": 0}, lease, "s", obs)

    def driver():
        for i in range(10):
            css.state = {"i": i}
            yield css.checkpoint()

    gen = driver()
    next(gen)
    next(gen)
    gen.close()
    assert obs.counts() == (2, 2)


def test_async_task_cancelled_inside_the_guard() -> None:
    obs = Recorder()
    entered = asyncio.Event()

    async def flush() -> None:
        with flush_guard(obs, "a"):
            entered.set()
            await asyncio.sleep(30)

    async def main() -> None:
        task = asyncio.create_task(flush())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert obs.calls == [("start", "a", None), ("complete", "a", False)]


def test_checkpoint_in_a_thread_from_a_cancelled_task(faulty: FaultyStore) -> None:
    """Cancelling the awaiting task does not cut the flush short: it completes, once."""
    lease = faulty.acquire("st")
    obs = Recorder()
    css = CheckpointedStageState.with_observer({"a": b"z" * 100000}, lease, "s", obs)
    gate = threading.Event()
    started = threading.Event()
    orig = obs.on_flush_start

    def slow_start(lease_id: str) -> None:
        orig(lease_id)
        started.set()
        gate.wait(60)

    obs.on_flush_start = slow_start  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.ensure_future(asyncio.to_thread(css.checkpoint))
        # Cancel only once the flush runs in its thread (a job not yet started would be
        # cancelled before it runs, which is another case).
        assert await asyncio.to_thread(started.wait, 60), "the flush never started"
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    wait_for(lambda: obs.counts() == (1, 1), timeout=60, what="the flush completed, once")
    assert obs.calls[-1] == ("complete", "s", True)
    assert CheckpointedStageState.restore(lease).state == {"a": b"z" * 100000}


class Raising:
    def __init__(self) -> None:
        self.n = 0

    def on_flush_start(self, lease_id: str) -> None:
        self.n += 1
        raise ConnectionError("scheduler unreachable")

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        self.n += 1
        raise TimeoutError("no ack")


def test_raising_observer_does_not_break_the_flush(faulty: FaultyStore, caplog) -> None:
    lease = faulty.acquire("st")
    obs = Raising()
    css = CheckpointedStageState.with_observer({"v": 42}, lease, "s", obs)
    with caplog.at_level(logging.ERROR, logger="stages.checkpoint.observer"):
        info = css.checkpoint()
    assert info.generation == 1 and obs.n == 2
    assert "scheduler unreachable" in caplog.text and "no ack" in caplog.text
    assert CheckpointedStageState.restore(lease).state == {"v": 42}


def test_no_observer_is_fine(faulty: FaultyStore) -> None:
    lease = faulty.acquire("st")
    assert CheckpointedStageState.with_observer(1, lease, "s", None).checkpoint().generation == 1
