"""Incremental checkpoints (issue 13 item 2, A18; ``stages/checkpoint/incremental.py``).

Checked on real files (FileStore), a real child process SIGKILLed mid-checkpoint, and the
loopback S3 server: unchanged chunks are reused, not rewritten, and every retained
generation still restores exactly its own state; a crash at every block write and flush of
an incremental commit leaves the old or the new state, complete; a bit flip in a shared
block is reported for every generation that shares it, naming lease, generation and block,
and restore falls back to one that does not share it; shrink and discard never free a
shared block (every retained generation verifies after random sequences); the first
checkpoint of a writer that did not write or restore the newest generation is full;
version 2 leases are still read.
"""

from __future__ import annotations

import random
import shutil
import struct
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from children import kill_child_writer
from blockstore import FileStore, crc32c, open_store
from blockstore.faults import FaultyStore
from stages import (
    CheckpointCommitUnknown,
    CheckpointedStageState,
    CheckpointFailed,
    verify_lease,
)
from stages.checkpoint import format as fmt
from stages.checkpoint.reader import load_map, scan_slots


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)


def _data(nbytes: int, seed: int, compressible: bool) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
    if compressible:  # every other 1 KiB run of one byte: a mix of zstd and raw chunks
        for i in range(0, nbytes, 2048):
            a[i:i + 1024] = (i // 2048) % 7
    return a


def _touch(a: np.ndarray, positions: list[int]) -> None:
    for p in positions:
        a[p % a.size] ^= 0x5A


def _maps(reader) -> dict[int, list[fmt.MapEntry]]:
    _, scans = scan_slots(reader)
    return {s.header.generation: load_map(reader, s.header)[0] for s in scans if s.header}


# -- reuse, reports, policy ---------------------------------------------------------------
@pytest.mark.parametrize("compression", ["none", "auto"])
def test_unchanged_chunks_are_reused_and_reported(tmp_path: Path, compression: str) -> None:
    bs = 4096
    with FileStore(tmp_path / "s", bs) as store, store.acquire("inc") as lease:
        a = _data(64 * bs, 1, compressible=compression == "auto")
        css = CheckpointedStageState({"a": a}, lease, incremental=True, retention=3,
                                     compression=compression)
        full = css.checkpoint(step=1)
        assert full.depth == 0 and full.chunks_reused == 0
        assert full.chunks_written > 0
        _touch(a, [10 * bs + 5])
        inc = css.checkpoint(step=2)
        assert inc.depth == 1 and inc.chunks_written == 1
        assert inc.chunks_reused == full.chunks_written - 1
        # one data block (a changed packed chunk gets a new pack block), erase + header
        assert inc.bytes_written <= 3 * bs < full.bytes_written / 10
        same = css.checkpoint(step=3)          # nothing changed: nothing but the header
        assert same.chunks_written == 0 and same.depth == 2
        assert same.bytes_written == bs         # the header (the third slot was empty)
        reader = store.open_reader("inc")
        maps = _maps(reader)
        shared = {(e.block, e.offset) for e in maps[1]} & {(e.block, e.offset) for e in maps[3]}
        assert len(shared) == inc.chunks_reused
        reports = {r.generation: r for r in verify_lease(reader)}
        assert all(r.ok for r in reports.values())
        assert reports[3].shared == full.chunks_written and reports[3].shared_with == (2, 1)
        for step, want in ((3, a), (2, a)):
            back = CheckpointedStageState.restore(reader, max_step=step)
            assert np.array_equal(back.state["a"], want)
        a_before = a.copy()
        _touch(a_before, [10 * bs + 5])        # generation 1 held the untouched byte
        assert np.array_equal(CheckpointedStageState.restore(reader, max_step=1).state["a"],
                              a_before)


def test_full_every_bounds_the_chain(tmp_path: Path) -> None:
    bs = 1024
    with FileStore(tmp_path / "s", bs) as store, store.acquire("inc") as lease:
        a = _data(20 * bs, 2, False)
        css = CheckpointedStageState({"a": a}, lease, incremental=True, full_every=3)
        depths = []
        for i in range(7):
            _touch(a, [i * 997])
            depths.append(css.checkpoint(step=i).depth)
        assert depths == [0, 1, 2, 0, 1, 2, 0]
        css2 = CheckpointedStageState({"a": a}, lease, incremental=True, full_every=1)
        assert css2.checkpoint().chunks_reused == 0
    with pytest.raises(ValueError, match="full_every"):
        CheckpointedStageState({}, lease, incremental=True, full_every=0)


def test_base_is_only_what_this_object_wrote_or_restored(tmp_path: Path) -> None:
    """A writer that only read the slots does not trust their blocks: its first commit is
    full. One that restored (every chunk verified) reuses from the restored generation."""
    bs = 4096
    with FileStore(tmp_path / "s", bs) as store, store.acquire("inc") as lease:
        a = _data(16 * bs, 3, False)
        CheckpointedStageState({"a": a}, lease, incremental=True).checkpoint(step=1)
        fresh = CheckpointedStageState({"a": a}, lease, incremental=True)
        assert fresh.checkpoint(step=2).chunks_reused == 0
        back = CheckpointedStageState.restore(lease, incremental=True)
        info = back.checkpoint(step=3)
        assert info.chunks_written == 0 and info.depth == 1
        assert np.array_equal(CheckpointedStageState.restore(lease).state["a"], a)


def test_unknown_commit_forgets_the_base(tmp_path: Path) -> None:
    """After a failed header write the writer re-reads the slots and drops its base: the
    generation that may now be committed is protected like any other, and nothing is reused
    from a generation the writer no longer knows to be committed where it thought."""
    faulty = FaultyStore(FileStore(tmp_path / "s", 4096))
    lease = faulty.acquire("inc")
    a = _data(8 * 4096, 4, False)
    css = CheckpointedStageState({"a": a}, lease, incremental=True)
    css.checkpoint(step=1)
    _touch(a, [5])
    n = faulty.block_writes
    faulty.crash_after(n + 1)            # the data block lands; the header write fails
    with pytest.raises(CheckpointCommitUnknown):
        css.checkpoint(step=2)
    faulty.crash_after(None)
    info = css.checkpoint(step=3)
    assert info.chunks_reused == 0       # full: the base was forgotten
    assert np.array_equal(CheckpointedStageState.restore(lease).state["a"], a)
    faulty.close()


def test_version_2_leases_are_still_read(tmp_path: Path) -> None:
    """A generation rewritten in the version 2 layout (32-byte entries) restores and
    verifies; an incremental writer restored from it writes a full (hashed) generation."""
    bs = 4096
    root = tmp_path / "s"
    a = _data(6 * bs, 5, False)
    with FileStore(root, bs) as store, store.acquire("old") as lease:
        CheckpointedStageState({"a": a}, lease, compression="none").checkpoint(step=7)
        lease_id = lease.lease_id
    dat = root / "leases" / f"{lease_id}.dat"
    raw = bytearray(dat.read_bytes())
    h = fmt.parse_header(raw[:bs], slot=0)
    entries = fmt.unpack_entries(h.inline_map, 3)
    v2map = b"".join(fmt.ENTRY_V2.pack(*e[:6]) for e in entries)
    block = bytearray(bs)
    block[:fmt.HEADER_SIZE] = raw[:fmt.HEADER_SIZE]
    struct.pack_into("<I", block, 4, 2)
    block[fmt.HEADER_SIZE:fmt.HEADER_SIZE + len(v2map)] = v2map
    struct.pack_into("<I", block, 84, crc32c(v2map))
    struct.pack_into("<Q", block, 96, fmt.HEADER_SIZE + len(v2map))
    raw[:bs] = fmt.seal_header(block, None)
    dat.write_bytes(bytes(raw))
    with FileStore(root) as store, store.acquire("old") as lease:
        assert fmt.parse_header(bytes(raw[:bs]), slot=0).version == 2
        assert all(r.ok for r in verify_lease(lease) if r.generation)
        back = CheckpointedStageState.restore(lease, incremental=True)
        assert back.restored.step == 7 and np.array_equal(back.state["a"], a)
        info = back.checkpoint(step=8)
        assert info.chunks_reused == 0 and info.depth == 0
        assert np.array_equal(CheckpointedStageState.restore(lease).state["a"], a)


# -- bit flip in a shared block (A18) -----------------------------------------------------
def test_bit_flip_in_a_shared_block_fails_every_generation_sharing_it(tmp_path: Path) -> None:
    """Retention 3: gen 1 full, gen 2 changes chunk X, gen 3 changes chunk Y. A flip in X's
    new block fails gen 3 and gen 2 (each error names lease, generation, block); gen 1
    restores."""
    bs = 4096
    root = tmp_path / "s"
    a = _data(24 * bs, 6, False)
    states = {}
    with FileStore(root, bs) as store, store.acquire("a18") as lease:
        css = CheckpointedStageState({"a": a}, lease, incremental=True, retention=3,
                                     compression="none")
        css.checkpoint(step=1)
        states[1] = a.copy()
        _touch(a, [4 * bs + 100])
        assert css.checkpoint(step=2).chunks_written == 1
        states[2] = a.copy()
        _touch(a, [15 * bs + 100])
        assert css.checkpoint(step=3).chunks_written == 1
        lease_id = lease.lease_id
    with FileStore(root) as store:
        maps = _maps(store.open_reader("a18"))
    x_new = [e2.block for e1, e2 in zip(maps[1], maps[2]) if e1 != e2]
    assert len(x_new) == 1
    xb = x_new[0]
    assert xb in {e.block for e in maps[3]} and xb not in {e.block for e in maps[1]}
    with open(root / "leases" / f"{lease_id}.dat", "r+b") as f:
        f.seek(xb * bs + 77)
        byte = f.read(1)
        f.seek(xb * bs + 77)
        f.write(bytes([byte[0] ^ 0x04]))
    with FileStore(root) as store:
        reader = store.open_reader("a18")
        reports = {r.generation: r for r in verify_lease(reader)}
        for g in (3, 2):
            assert reports[g].corrupt and reports[g].block == xb, reports[g]
            assert f"generation {g}" in reports[g].status and f"block {xb}" in reports[g].status
            assert "'a18'" in reports[g].status
        assert reports[1].ok
        back = CheckpointedStageState.restore(reader)
        assert back.restored.generation == 1 and np.array_equal(back.state["a"], states[1])
        skipped = dict(back.restored.skipped)
        assert set(skipped) == {2, 3}
        assert all(f"data block {xb}" in why for why in skipped.values())


# -- crash at every write point of an incremental commit (A2 for incremental) --------------
CASES = {
    # block size, payload blocks, compressible
    "4k-raw": (4096, 20, False),
    "1k-spilled-map": (1024, 40, False),
    "4k-zstd-packed": (4096, 24, True),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A lease holding gen 1 (full) and gen 2 (incremental), and gen 3's state."""
    bs, nblocks, comp = CASES[request.param]
    root = tmp_path_factory.mktemp("inc-crash") / "template"
    a = _data(nblocks * bs, 7, comp)
    with FileStore(root, bs) as store, store.acquire("stage") as lease:
        css = CheckpointedStageState({"a": a}, lease, incremental=True)
        css.checkpoint(step=1)
        _touch(a, [3 * bs + 1, 11 * bs + 2])
        assert css.checkpoint(step=2).chunks_reused > 0
    old = a.copy()
    _touch(a, [1 * bs + 3, 7 * bs + 4, (nblocks - 2) * bs])
    return root, old, a.copy()


def _attempt(root: Path, dest: Path, new: np.ndarray, *, crash_after: int | None = None,
             torn: bool = False, crash_on_flush: int | None = None):
    shutil.copytree(root, dest)
    faulty = FaultyStore(FileStore(dest))
    lease = faulty.acquire("stage")
    css = CheckpointedStageState.restore(lease, incremental=True)
    css.state = {"a": new}
    faulty.block_writes = 0
    faulty.flushes = 0
    faulty.crash_after(crash_after, torn=torn)
    faulty.crash_on_flush(crash_on_flush)
    info, err = None, None
    try:
        info = css.checkpoint(step=3)
    except CheckpointFailed as exc:
        err = exc
    faulty.close()
    return info, err, faulty


def _restored(dest: Path) -> CheckpointedStageState:
    with FileStore(dest) as store:
        return CheckpointedStageState.restore(store.open_reader("stage"))


def test_crash_at_every_block_write_of_an_incremental_commit(template, tmp_path: Path) -> None:
    root, old, new = template
    info, _, counted = _attempt(root, tmp_path / "count", new)
    assert info is not None and info.chunks_reused > 0 and info.depth == 2
    total = counted.block_writes
    assert total == info.bytes_written // (counted.inner.block_size)
    seen = set()
    for k in range(total + 1):
        for torn in (False, True):
            dest = tmp_path / f"k{k}{'t' if torn else ''}"
            info, err, _ = _attempt(root, dest, new, crash_after=k, torn=torn)
            assert (info is not None) == (k >= total), (k, torn, err)
            back = _restored(dest)
            got = back.state["a"]
            assert np.array_equal(got, old) or np.array_equal(got, new), (k, torn)
            if k < total - 1:
                assert np.array_equal(got, old), (k, torn)
            if k >= total:
                assert np.array_equal(got, new), k
            seen.add(back.restored.step)
            with FileStore(dest) as store:
                assert not any(r.corrupt for r in verify_lease(store.open_reader("stage")))
            if k % 3 == 0:  # a new holder goes on incrementally from what it restored
                with FileStore(dest) as store, store.acquire("stage", steal=True) as lease:
                    css = CheckpointedStageState.restore(lease, incremental=True)
                    nxt = css.state["a"].copy()
                    _touch(nxt, [5])
                    css.state = {"a": nxt}
                    css.checkpoint(step=4)
                    assert all(r.ok for r in verify_lease(lease) if r.generation)
                assert np.array_equal(_restored(dest).state["a"], nxt)
            shutil.rmtree(dest)
    assert seen == {2, 3}


def test_crash_at_every_flush_of_an_incremental_commit(template, tmp_path: Path) -> None:
    root, old, new = template
    _, _, counted = _attempt(root, tmp_path / "count", new)
    for n in range(counted.flushes):
        dest = tmp_path / f"f{n}"
        info, err, _ = _attempt(root, dest, new, crash_on_flush=n)
        assert info is None and err is not None
        got = _restored(dest).state["a"]
        assert np.array_equal(got, old) or (n == counted.flushes - 1
                                            and np.array_equal(got, new))


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from blockstore import FileStore
    from stages import CheckpointedStageState, NoCheckpointError

    def state(step):
        data = np.zeros(400_000, dtype=np.uint8)
        for s in range(1, step + 1):
            pos = np.random.default_rng(s).integers(0, data.size, 3)
            data[pos] = s % 251
        return {"step": step, "data": data}

    store = FileStore(sys.argv[1], 4096)
    lease = store.acquire("stage", steal=True)
    opts = dict(incremental=True, retention=3, full_every=5)
    try:
        css = CheckpointedStageState.restore(lease, **opts)
        step = css.state["step"]
    except NoCheckpointError:
        css, step = CheckpointedStageState(state(0), lease, **opts), 0
    data = css.state["data"]
    while True:
        step += 1
        pos = np.random.default_rng(step).integers(0, data.size, 3)
        data[pos] = step % 251
        css.state = {"step": step, "data": data}
        css.checkpoint(step=step)
        print(step, flush=True)
""")


def _child_state(step: int) -> np.ndarray:
    data = np.zeros(400_000, dtype=np.uint8)
    for s in range(1, step + 1):
        data[np.random.default_rng(s).integers(0, data.size, 3)] = s % 251
    return data


def test_sigkill_mid_incremental_checkpoint_restored_by_another_process(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FileStore(root, 4096).close()
    rng = random.Random(11)
    last = 0
    for _ in range(4):
        lines = kill_child_writer(CHILD, root, ready=bool, rng=rng, max_delay=0.2)
        committed = [int(x) for x in lines]
        with FileStore(root) as store:
            reader = store.open_reader("stage")
            back = CheckpointedStageState.restore(reader)
            assert not any(r.corrupt for r in verify_lease(reader))
        step = back.state["step"]
        assert committed[-1] <= step <= committed[-1] + 1 and step > last
        assert np.array_equal(back.state["data"], _child_state(step))
        last = step


# -- async --------------------------------------------------------------------------------
def test_async_incremental_and_a_crash_in_its_background_flush(tmp_path: Path) -> None:
    bs = 4096
    faulty = FaultyStore(FileStore(tmp_path / "s", bs))
    lease = faulty.acquire("inc")
    a = _data(32 * bs, 8, False)
    css = CheckpointedStageState({"a": a}, lease, incremental=True)
    css.checkpoint_async(step=1).wait()
    _touch(a, [9 * bs])
    pending = css.checkpoint_async(step=2)
    a[:] = 0                                   # the snapshot is written, not the live array
    info = pending.wait()
    assert info.chunks_written == 1 and info.chunks_reused > 0
    want = _data(32 * bs, 8, False)
    _touch(want, [9 * bs])
    assert np.array_equal(CheckpointedStageState.restore(lease).state["a"], want)
    css.state = {"a": want.copy()}
    _touch(css.state["a"], [20 * bs])
    faulty.crash_after(faulty.block_writes + 1)  # the erase lands, the data write does not
    with pytest.raises(CheckpointFailed):
        css.checkpoint_async(step=3).wait()
    faulty.crash_after(None)
    assert np.array_equal(CheckpointedStageState.restore(lease).state["a"], want)
    info = css.checkpoint(step=4)                # the base survived the failed attempt
    assert info.chunks_written == 1
    assert np.array_equal(CheckpointedStageState.restore(lease).state["a"], css.state["a"])
    assert all(r.ok for r in verify_lease(lease) if r.generation)
    faulty.close()


# -- property: random sequences ------------------------------------------------------------
op = st.one_of(
    st.tuples(st.just("change"), st.lists(st.integers(0, 10**6), max_size=6)),
    st.tuples(st.just("resize"), st.integers(-12, 12)),
    st.tuples(st.just("reopen"), st.none()),
    st.tuples(st.just("async"), st.lists(st.integers(0, 10**6), max_size=3)),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(retention=st.integers(2, 4), full_every=st.integers(1, 5),
       compression=st.sampled_from(["none", "auto"]), ops=st.lists(op, min_size=2, max_size=9),
       seed=st.integers(0, 2**16))
def test_random_incremental_sequences_restore_every_retained_state(
        tmp_path_factory: pytest.TempPathFactory, retention: int, full_every: int,
        compression: str, ops: list, seed: int) -> None:
    """Random chunk changes, growth and shrinking (compaction), reopen by restore, async
    commits: after each commit every retained generation restores its own state exactly,
    nothing verifies as corrupt (so no shared block was overwritten or discarded), and the
    lease stays bounded."""
    bs = 1024
    root = tmp_path_factory.mktemp("prop") / uuid.uuid4().hex
    opts = dict(incremental=True, full_every=full_every, retention=retention,
                compression=compression)
    a = _data(30 * bs, seed, compression == "auto")
    model: dict[int, np.ndarray] = {}
    with FileStore(root, bs) as store, store.acquire("p") as lease:
        css = CheckpointedStageState({"a": a}, lease, **opts)
        for step, (kind, arg) in enumerate(ops, start=1):
            if kind in ("change", "async"):
                _touch(a, arg)
            elif kind == "resize":
                n = max(bs // 2, a.size + arg * bs)
                a = np.resize(a, n) if arg > 0 else a[:n].copy()
            elif kind == "reopen" and model:
                css = CheckpointedStageState.restore(lease, **opts)
                a = css.state["a"].copy()
            css.state = {"a": a}
            if kind == "async":
                info = css.checkpoint_async(step=step).wait()
                a = a.copy()  # keep the model's copy away from later in-place changes
            else:
                info = css.checkpoint(step=step)
            model[step] = a.copy()
            assert info.chunks_written + info.chunks_reused == \
                len(load_map(lease, next(s.header for s in scan_slots(lease)[1]
                                         if s.header and s.header.step == step))[0])
            assert info.depth < full_every
            assert not any(r.corrupt for r in verify_lease(lease))
            for s in sorted(model)[-retention:]:
                back = CheckpointedStageState.restore(lease, max_step=s)
                assert back.restored.step == s
                assert np.array_equal(back.state["a"], model[s]), (s, ops)
            biggest = max(m.size for m in model.values()) // bs + 5  # + header, map blocks
            assert lease.num_blocks <= retention + retention * biggest


# -- object store -------------------------------------------------------------------------
def test_incremental_on_the_object_store_survives_takeover_and_gc(s3_server) -> None:
    """Shared blocks on S3 are objects an older flush published; the lease record keeps
    referencing them, so neither the commit's own cleanup, the first commit of a new
    epoch (which collects the lease's garbage), nor ``gc()`` removes them."""
    key = b"incremental-key"
    bs = 4096
    url = s3_server.url(f"inc-{uuid.uuid4().hex[:10]}")
    a = _data(16 * bs, 9, False)
    states = {}
    with open_store(url, block_size=bs) as store:
        lease = store.acquire("stage")
        css = CheckpointedStageState({"a": a}, lease, incremental=True, key=key, retention=3)
        css.checkpoint(step=1)
        states[1] = a.copy()
        _touch(a, [2 * bs])
        assert css.checkpoint(step=2).chunks_written == 1
        states[2] = a.copy()
    with open_store(url) as other:
        taken = other.acquire("stage", steal=True)        # epoch bump
        css = CheckpointedStageState.restore(taken, key=key, incremental=True)
        nxt = css.state["a"].copy()
        _touch(nxt, [9 * bs])
        css.state = {"a": nxt}
        info = css.checkpoint(step=3)
        assert info.chunks_written == 1 and info.chunks_reused > 0
        states[3] = nxt
        other.gc()
        reader = other.open_reader("stage")
        assert all(r.ok for r in verify_lease(reader, key=key) if r.generation)
        for s, want in states.items():
            back = CheckpointedStageState.restore(reader, key=key, max_step=s)
            assert np.array_equal(back.state["a"], want), s
        taken.release()


def test_blockpoint_verify_shows_shared_chunks(tmp_path: Path, capsys) -> None:
    from blockpoint.cli import main

    bs = 4096
    with FileStore(tmp_path / "s", bs) as store, store.acquire("inc") as lease:
        a = _data(8 * bs, 10, False)
        css = CheckpointedStageState({"a": a}, lease, incremental=True)
        n = css.checkpoint().chunks_written
        _touch(a, [3 * bs])
        css.checkpoint()
    assert main(["verify", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert f"{n - 1} chunks with gen 1" in out and f"{n - 1} chunks with gen 2" in out


# -- where users meet it: StageSpec and @checkpointed --------------------------------------
class _BigStage:
    """State: 32 chunks of 64 KiB (float64) and a counter; a record touches one chunk."""

    def initial_state(self) -> dict:
        return {"n": 0, "arr": np.zeros(32 * 8192)}

    def process(self, state: dict, record: int) -> list[int]:
        state["n"] += 1
        state["arr"][record * 8192] = state["n"]
        return [state["n"]]


def test_stage_spec_incremental_rewrites_only_what_changed(tmp_path) -> None:
    from stages.actors.actor import StageActor, StageSpec

    store = FileStore(tmp_path / "s", 64 * 1024)
    spec = StageSpec("inc", _BigStage, store, incremental=True, full_every=4,  # type: ignore[arg-type]
                     compression="none")
    actor = StageActor(spec)
    actor.process_batch([0])
    first = actor.checkpoint(step=1)
    actor.process_batch([5])
    second = actor.checkpoint(step=2)
    assert first["chunks_reused"] == 0 and second["chunks_reused"] > 0
    assert second["chunks_written"] <= 3 < first["chunks_written"]
    actor.shutdown()
    back = CheckpointedStageState.restore(store.open_reader("inc"))
    assert back.state["n"] == 2 and back.state["arr"][5 * 8192] == 2
    store.close()


def test_checkpointed_incremental_option(tmp_path) -> None:
    from stages import CheckpointedConfigError, checkpointed

    class Big:
        def __init__(self) -> None:
            self.state = {"arr": np.zeros(32 * 8192)}

        def touch(self, i: int) -> None:
            self.state["arr"][i * 8192] += 1

    with pytest.raises(CheckpointedConfigError, match="full_every"):
        checkpointed(store=str(tmp_path / "x"), incremental=True, full_every=0)(Big)
    cls = checkpointed(store=str(tmp_path / "a"), key="big", incremental=True,
                       block_size=64 * 1024, compression="none")(Big)
    a = cls()
    a.touch(1)
    assert a.checkpoint()["chunks_reused"] == 0
    a.touch(2)
    info = a.checkpoint()
    assert info["chunks_reused"] > 0 and info["chunks_written"] <= 3
    assert cls().state["arr"][2 * 8192] == 1
