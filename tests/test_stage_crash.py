"""Crash atomicity (A2): a crash at any write point leaves the old or the new state, complete.

``blockstore.faults.FaultyStore`` wraps a real FileStore and stops after the k-th block write
(optionally tearing that block) or at a flush; the test then reopens the *real* store, as a
new process would, and restores. A real child process SIGKILLed mid-checkpoint is restored by
this process.
"""

from __future__ import annotations

import random
import shutil
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from children import kill_child_writer
from blockstore import FileStore, MemoryStore, StaleLeaseError
from blockstore.faults import FaultyStore, InjectedCrash
from stages import (
    CheckpointCommitUnknown,
    CheckpointedStageState,
    CheckpointFailed,
    NoCheckpointError,
    verify_lease,
)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)


def _state(tag: int, nbytes: int, compressible: bool) -> dict:
    rng = np.random.default_rng(tag)
    data = rng.integers(0, 256, nbytes, dtype=np.uint8)
    if compressible:
        data[: nbytes // 2] = tag  # half runs of one byte, half noise: zstd and raw chunks
    return {"tag": tag, "data": data}


def _same(a: dict, b: dict) -> bool:
    return a["tag"] == b["tag"] and np.array_equal(a["data"], b["data"])


CASES = {
    # block size, payload blocks, compressible
    "4k-inline-map": (4096, 20, False),
    "1k-spilled-map": (1024, 40, False),
    "4k-zstd-packed": (4096, 24, True),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A store whose lease holds two committed generations (A1, A2); released."""
    bs, nblocks, comp = CASES[request.param]
    root = tmp_path_factory.mktemp("crash") / "template"
    store = FileStore(root, bs)
    lease = store.acquire("stage")
    css = CheckpointedStageState(_state(1, nblocks * bs, comp), lease)
    css.checkpoint(step=1)
    css.state = _state(2, nblocks * bs, comp)
    css.checkpoint(step=2)
    lease.release()
    store.close()
    return root, bs, nblocks, comp


def _attempt(template_root: Path, dest: Path, new_state: dict, *, crash_after: int | None = None,
             torn: bool = False, crash_on_flush: int | None = None) -> tuple[bool, FaultyStore]:
    shutil.copytree(template_root, dest)
    faulty = FaultyStore(FileStore(dest))
    lease = faulty.acquire("stage")
    css = CheckpointedStageState.restore(lease)
    css.state = new_state
    faulty.block_writes = 0
    faulty.flushes = 0
    faulty.crash_after(crash_after, torn=torn)
    faulty.crash_on_flush(crash_on_flush)
    faulty.last_error = None
    try:
        css.checkpoint(step=3)
        ok = True
    except CheckpointFailed as exc:
        ok = False
        faulty.last_error = exc
    faulty.close()
    return ok, faulty


def _restore_real(dest: Path) -> CheckpointedStageState:
    with FileStore(dest) as store:  # a fresh handle, as a restarted process would open it
        return CheckpointedStageState.restore(store.open_reader("stage"))


def test_crash_at_every_block_write(template, tmp_path: Path) -> None:
    root, bs, nblocks, comp = template
    a2, b = _state(2, nblocks * bs, comp), _state(3, nblocks * bs, comp)
    ok, counted = _attempt(root, tmp_path / "count", b)
    assert ok
    total = counted.block_writes
    assert total >= 16
    outcomes = []
    for k in range(total + 1):
        for torn in (False, True):
            dest = tmp_path / f"k{k}{'t' if torn else ''}"
            ok, attempt = _attempt(root, dest, b, crash_after=k, torn=torn)
            assert ok == (k >= total), (k, torn)
            # A crash at the header write (the last one) leaves the commit state unknown;
            # any earlier one certainly left the new generation uncommitted.
            if not ok:
                unknown = isinstance(attempt.last_error, CheckpointCommitUnknown)
                assert unknown == (k == total - 1), (k, torn, attempt.last_error)
            back = _restore_real(dest)
            # The header is the last write: until it is complete, the old state is the newest.
            # A torn header write may still carry the whole (short) header: then the new
            # state, complete.
            if k >= total or (torn and k == total - 1 and back.state["tag"] == 3):
                expected = b
            else:
                expected = a2
            assert _same(back.state, expected), (k, torn, back.state["tag"])
            # and a crash is never reported as corruption: erased or uncommitted slots only
            with FileStore(dest) as store:
                reports = verify_lease(store.open_reader("stage"))
            assert not any(r.corrupt for r in reports), (k, torn, reports)
            outcomes.append(back.state["tag"])
            if k % 5 == 0:  # and the lease stays usable: a new holder checkpoints and restores
                with FileStore(dest) as store, store.acquire("stage", steal=True) as lease:
                    css = CheckpointedStageState.restore(lease)
                    css.state = _state(4, 3 * bs, comp)
                    css.checkpoint(step=4)
                assert _restore_real(dest).state["tag"] == 4
            shutil.rmtree(dest)
    assert set(outcomes) == {2, 3}


def test_crash_at_every_flush(template, tmp_path: Path) -> None:
    root, bs, nblocks, comp = template
    a2, b = _state(2, nblocks * bs, comp), _state(3, nblocks * bs, comp)
    ok, counted = _attempt(root, tmp_path / "count", b)
    for n in range(counted.flushes):
        dest = tmp_path / f"f{n}"
        ok, attempt = _attempt(root, dest, b, crash_on_flush=n)
        assert not ok
        unknown = isinstance(attempt.last_error, CheckpointCommitUnknown)
        assert unknown == (n == counted.flushes - 1), (n, attempt.last_error)
        back = _restore_real(dest)
        # The header is written only after the data flush; the final flush's crash may leave
        # the (complete, written) header visible - the new state, never a mix.
        assert _same(back.state, a2) or (n == counted.flushes - 1 and _same(back.state, b))


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from blockstore import FileStore
    from stages import CheckpointedStageState, NoCheckpointError
    store = FileStore(sys.argv[1], 4096)
    lease = store.acquire("stage", steal=True)
    try:
        css = CheckpointedStageState.restore(lease)
        step = css.state["step"]
    except NoCheckpointError:
        css, step = CheckpointedStageState({"step": 0}, lease), 0
    while True:
        step += 1
        css.state = {"step": step, "data": np.full(600_000, step % 251, dtype=np.uint8),
                     "noise": np.random.default_rng(step).random(100_000)}
        css.checkpoint(step=step)
        print(step, flush=True)
""")


def test_sigkill_mid_checkpoint_restored_by_another_process(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FileStore(root, 4096).close()
    rng = random.Random(7)
    last_seen = 0
    for _ in range(4):
        # one commit done: now kill it somewhere later
        lines = kill_child_writer(CHILD, root, ready=bool, rng=rng, max_delay=0.25)
        committed = [int(x) for x in lines]
        back = _restore_real(root)
        step = back.state["step"]
        # every printed step was durable before the print; at most one more may have landed
        assert committed[-1] <= step <= committed[-1] + 1
        assert step > last_seen
        assert np.array_equal(back.state["data"], np.full(600_000, step % 251, dtype=np.uint8))
        assert np.array_equal(back.state["noise"], np.random.default_rng(step).random(100_000))
        last_seen = step


def test_same_writer_continues_after_a_failed_checkpoint(template, tmp_path: Path) -> None:
    """A failed checkpoint (at any write or flush) leaves the writer usable: the next one
    commits, and the previous committed generation is still retained behind it."""
    root, bs, nblocks, comp = template
    a2, b, c = (_state(t, nblocks * bs, comp) for t in (2, 3, 5))
    _, counted = _attempt(root, tmp_path / "count", b)
    points = [("write", k) for k in range(0, counted.block_writes, 3)]
    points += [("flush", n) for n in range(counted.flushes)]
    for kind, n in points:
        dest = tmp_path / f"{kind}{n}"
        shutil.copytree(root, dest)
        faulty = FaultyStore(FileStore(dest))
        lease = faulty.acquire("stage")
        css = CheckpointedStageState.restore(lease)
        css.state = b
        faulty.block_writes = faulty.flushes = 0
        if kind == "write":
            faulty.crash_after(n)
        else:
            faulty.crash_on_flush(n)
        with pytest.raises(CheckpointFailed) as failure:
            css.checkpoint(step=3)
        # A failure after the header write may have committed step 3 (commit unknown): the
        # writer then re-reads its slots and keeps that generation like any committed one.
        maybe_committed = isinstance(failure.value, CheckpointCommitUnknown)
        faulty.crash_after(None)
        faulty.crash_on_flush(None)
        css.state = c
        info = css.checkpoint(step=5)
        faulty.close()
        back = _restore_real(dest)
        assert _same(back.state, c) and back.restored.generation == info.generation
        gens = back.generations()
        behind = (2, 3) if maybe_committed else (2,)
        assert gens[0].step == 5 and gens[1].step in behind, (kind, n, [g.step for g in gens])
        shutil.rmtree(dest)


OPS = st.lists(st.tuples(st.integers(0, 12_000),            # payload bytes
                         st.booleans(),                      # compressible
                         st.one_of(st.none(), st.integers(0, 14)),  # crash after k writes
                         st.booleans(),                      # torn
                         st.booleans()),                     # restart (new writer) after
               min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, retention=st.integers(2, 4))
def test_property_restore_is_always_the_last_committed_state(ops, retention) -> None:
    """Any sequence of checkpoints, crashes and restarts: restore == the last committed state."""
    store = FaultyStore(MemoryStore(512))
    lease = store.acquire("p")
    css = CheckpointedStageState(None, lease, retention=retention)
    committed = None
    for i, (size, comp, crash, torn, restart) in enumerate(ops):
        data = np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8)
        if comp:
            data[: size * 3 // 4] = 7
        css.state = {"i": i, "data": data}
        store.crash_after(None if crash is None else store.block_writes + crash, torn=torn)
        failed = False
        try:
            css.checkpoint(step=i)
            committed = i
        except CheckpointFailed as exc:
            assert isinstance(exc.__cause__, InjectedCrash)
            failed = True
        store.crash_after(None)
        try:
            back = CheckpointedStageState.restore(store.open_reader("p"))
        except NoCheckpointError:
            assert committed is None
            continue
        if failed and back.state["i"] == i:
            # The crash hit the header write itself and the (short) header landed whole
            # before the tear: the new generation is committed, complete. Old or new, never
            # a mix.
            committed = i
        assert back.state["i"] == committed
        expect = np.random.default_rng(committed).integers(0, 256, ops[committed][0],
                                                           dtype=np.uint8)
        if ops[committed][1]:
            expect[: ops[committed][0] * 3 // 4] = 7
        assert np.array_equal(back.state["data"], expect)
        if restart:  # a new process takes the lease over and goes on from the restored state
            lease = store.acquire("p", steal=True)
            css = CheckpointedStageState.restore(lease, retention=retention)
    # storage stays bounded: K slots + K generations of at most 12 KB (+ map) in 512-byte blocks
    assert lease.num_blocks <= retention + retention * (12_064 // 512 + 2 + 4)


def test_torn_first_header_is_an_uncommitted_write(tmp_path: Path) -> None:
    """A crash tearing the very first header write leaves no checkpoint, not a corrupt one.

    (12 KiB in 1 KiB blocks: the inline map makes the header longer than the half block a
    tear writes.)"""
    faulty = FaultyStore(FileStore(tmp_path / "s", 1024))
    lease = faulty.acquire("stage")
    css = CheckpointedStageState(_state(1, 12 * 1024, False), lease, compression="none")
    _, counted = _attempt_first(tmp_path / "count")
    faulty.crash_after(counted - 1, torn=True)  # tear the header (the last block write)
    with pytest.raises(CheckpointFailed):
        css.checkpoint()
    faulty.crash_after(None)
    reader = faulty.open_reader("stage")
    with pytest.raises(NoCheckpointError):
        CheckpointedStageState.restore(reader)
    reports = verify_lease(reader)
    assert [r.status.split(":")[0] for r in reports if not r.status == "empty"] == ["uncommitted"]
    assert not any(r.corrupt for r in reports)
    css.checkpoint()  # the writer goes on; the torn slot is reused
    assert _same(CheckpointedStageState.restore(reader).state, _state(1, 12 * 1024, False))
    faulty.close()


def _attempt_first(root: Path) -> tuple[bool, int]:
    faulty = FaultyStore(FileStore(root, 1024))
    lease = faulty.acquire("stage")
    CheckpointedStageState(_state(1, 12 * 1024, False), lease, compression="none").checkpoint()
    n = faulty.block_writes
    faulty.close()
    return True, n


class _StealBeforeFinalFlush(FaultyStore):
    """A real store whose lease is taken over by another holder just before the flush that
    follows the header write (a takeover racing the commit)."""

    def __init__(self, inner: FileStore, root: Path, at_flush: int) -> None:
        super().__init__(inner)
        self._root = root
        self._at_flush = at_flush

    def _flush(self, lease_id: str, epoch: int) -> None:
        if self.flushes == self._at_flush:
            with FileStore(self._root) as other:
                other.acquire("stage", holder="usurper", steal=True)
        super()._flush(lease_id, epoch)


def test_takeover_between_header_write_and_flush_is_commit_unknown(tmp_path: Path) -> None:
    """A takeover after the header write cannot un-write it: the error says "unknown", and
    the generation it may have committed restores complete (issue 9, defect 8)."""
    root = tmp_path / "s"
    FileStore(root, 4096).close()
    store = _StealBeforeFinalFlush(FileStore(root), root, at_flush=1)
    lease = store.acquire("stage")
    css = CheckpointedStageState({"v": 1}, lease)
    with pytest.raises(CheckpointCommitUnknown) as err:
        css.checkpoint(step=1)          # flush 0: data; header; flush 1: stolen first
    assert err.value.generation == 1
    assert isinstance(err.value.__cause__, StaleLeaseError)
    back = _restore_real(root)
    assert back.state == {"v": 1} and back.restored.generation == 1
    store.close()


def test_takeover_before_header_write_is_not_committed(tmp_path: Path) -> None:
    """A takeover before the header write (refused at the data flush): certainly not
    committed - a plain CheckpointFailed."""
    root = tmp_path / "s"
    FileStore(root, 4096).close()
    store = _StealBeforeFinalFlush(FileStore(root), root, at_flush=0)
    lease = store.acquire("stage")
    css = CheckpointedStageState({"v": 1}, lease)
    with pytest.raises(CheckpointFailed) as err:
        css.checkpoint(step=1)
    assert not isinstance(err.value, CheckpointCommitUnknown)
    with FileStore(root) as fresh, pytest.raises(NoCheckpointError):
        CheckpointedStageState.restore(fresh.open_reader("stage"))
    store.close()


def _header_sectors(header: bytes) -> int:
    """Sectors the header and its trailer occupy."""
    from stages.checkpoint import format as fmt
    (length,) = struct.unpack_from("<Q", header, 96)
    return -(-(length + fmt.TRAILER.size) // fmt.SECTOR)


@pytest.mark.parametrize("previous", [False, True], ids=["first-header", "over-older-generation"])
def test_power_loss_tearing_any_header_sectors_is_an_uncommitted_write(
        tmp_path: Path, previous: bool) -> None:
    """Power loss may drop any subset of a multi-sector header's sectors, not only its tail:
    every such tear reads as an uncommitted write (no checkpoint yet, or the older
    generation), never as corruption, and the stage can start (issue 9, defect 9)."""
    from stages.checkpoint import format as fmt
    root = tmp_path / "s"
    store = FileStore(root, 4096)
    lease = store.acquire("stage")
    if previous:
        CheckpointedStageState({"v": 0}, lease).checkpoint(step=1)
    # ~1.4 KiB of metadata: the new header spans 3+ sectors.
    css = CheckpointedStageState.restore(lease) if previous else CheckpointedStageState({}, lease)
    css.state = {"v": 1}
    info = css.checkpoint(step=2, meta={"note": "x" * 1400})
    slot = next(s for s in range(2) if struct.unpack_from("<Q", lease.read_block(s), 16)[0]
                == info.generation)
    header = bytes(lease.read_block(slot))
    n = _header_sectors(header)
    assert n >= 3
    tried = 0
    for mask in range(1, (1 << n) - 1):        # every proper, non-empty subset landed
        torn = bytearray(len(header))
        for i in range(n):
            if mask >> i & 1:
                torn[i * fmt.SECTOR:(i + 1) * fmt.SECTOR] = header[i * fmt.SECTOR:
                                                                   (i + 1) * fmt.SECTOR]
        lease.write_blocks({slot: bytes(torn)})
        lease.flush()
        reader = store.open_reader("stage")
        if previous:
            back = CheckpointedStageState.restore(reader)
            assert back.state == {"v": 0}, mask
        else:
            with pytest.raises(NoCheckpointError):
                CheckpointedStageState.restore(reader)
        reports = verify_lease(reader)
        assert not any(r.corrupt for r in reports), (mask, reports)
        tried += 1
    assert tried == (1 << n) - 2
    # The stage starts and checkpoints over the torn slot.
    lease.write_blocks({slot: header[:n * fmt.SECTOR // 2]})  # and a plain cut, for good measure
    lease.flush()
    again = CheckpointedStageState.restore(lease) if previous else CheckpointedStageState({}, lease)
    again.state = {"v": 2}
    again.checkpoint(step=3)
    assert CheckpointedStageState.restore(store.open_reader("stage")).state == {"v": 2}
    store.close()
