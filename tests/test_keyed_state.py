"""KeyedState (issue 20 item 2): a checkpoint re-serialises only the key groups written.

Real FileStores throughout; crashes are cut by ``blockstore.faults.FaultyStore`` around a
real FileStore, and restores open the real store again, as a restarted process would.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from blockstore import FileStore
from blockstore.faults import FaultyStore
from stages import (
    CheckpointAuthError,
    CheckpointCommitUnknown,
    CheckpointCorrupt,
    CheckpointedStageState,
    CheckpointEncodeError,
    CheckpointFailed,
    KeyedState,
    KeyedStateMismatch,
    KeyGroupError,
    UntrackedWrite,
    verify_lease,
)
from stages.checkpoint import writer
from stages.checkpoint.keygroups import key_group, key_group_range
from stages.checkpoint.reader import load_map, scan_slots

BS = 4096
M = 32  # max_parallelism of most tests: small enough to cut at every write


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", raising=False)


class Counted:
    """A value that counts how often it is pickled (``Counted.pickled``)."""

    pickled = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[Any, ...]:
        Counted.pickled += 1
        return (Counted, (self.n,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counted) and other.n == self.n

    def __hash__(self) -> int:
        return hash(self.n)


def _fill(ks: KeyedState, n: int, tag: int = 0) -> dict[Any, Any]:
    want = {}
    for i in range(n):
        key = f"user-{i}" if i % 3 else i
        value = (tag, i, "x" * (i % 50))
        ks[key] = value
        want[key] = value
    return want


def _keys_in(group: int, n: int, m: int = M) -> list[str]:
    out = []
    i = 0
    while len(out) < n:
        if key_group(f"k{i}", m) == group:
            out.append(f"k{i}")
        i += 1
    return out


def _restore(root: Path, name: str = "ks", **kw: Any) -> KeyedState:
    with FileStore(root) as store:  # a fresh handle, as a restarted process would open it
        return KeyedState.restore(store.open_reader(name), max_parallelism=M, **kw)


def test_round_trip_over_generations(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M)
        want = _fill(ks, 3000)
        assert ks.checkpoint(step=1).step == 1
        assert _restore(tmp_path / "s").to_dict() == want
        for step in range(2, 6):
            ks.update(6, lambda v, s=step: (*v, s))
            want[6] = (*want[6], step)
            ks[("t", step)] = b"\x00" * step
            want[("t", step)] = b"\x00" * step
            gone = f"user-{step * 3 + 1}"
            del ks[gone]
            del want[gone]
            ks.mutable("list", []).append(step)  # in place, tracked
            want.setdefault("list", []).append(step)
            ks.checkpoint(step=step)
            back = _restore(tmp_path / "s")
            assert back.to_dict() == want and len(back) == len(want)
            assert back.restored is not None and back.restored.step == step
    assert set(back) == set(want) and back["list"] == [2, 3, 4, 5]
    assert "user-11" in back and back.get("nope", 5) == 5 and "nope" not in back


def test_generations_that_keep_or_change_the_layout_restore_exactly(tmp_path: Path) -> None:
    """The table and manifest are reused while only bytes change (same groups, same sizes)
    and rebuilt when a group grows, shrinks, appears or goes: every generation restores
    exactly, from a fresh handle, whichever way it was framed."""
    with FileStore(tmp_path / "s", BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M, compression="none")
        keys = [_keys_in(g, 2) for g in range(8)]
        want = {k: bytes(100) for ks_ in keys for k in ks_}
        for k, v in want.items():
            ks[k] = v
        ks.checkpoint(step=1)
        changes = [
            lambda: {keys[1][0]: b"\x01" * 100},                 # same size: reused framing
            lambda: {keys[2][1]: b"\x02" * 100, keys[5][0]: b"\x03" * 100},
            lambda: {keys[4][0]: b"\x07" * 300},                 # longer, in the same blocks
            lambda: {keys[3][0]: b"\x04" * (3 * BS)},            # a group grows
            lambda: {keys[3][0]: b"\x05" * 10},                  # ... and shrinks
            lambda: {_keys_in(12, 1)[0]: b"new"},                # a group appears
            lambda: {keys[6][0]: None, keys[6][1]: None},        # a group goes
            lambda: {keys[0][0]: b"\x06" * 100},                 # same size again
            lambda: {},                                          # nothing
        ]
        for step, change in enumerate(changes, 2):
            for k, v in change().items():
                if v is None:
                    del ks[k]
                    del want[k]
                else:
                    ks[k] = v
                    want[k] = v
            ks.checkpoint(step=step)
            back = _restore(tmp_path / "s")
            assert back.to_dict() == want, step
            assert back.restored is not None and back.restored.step == step


@pytest.mark.parametrize("case", ["longer", "emptied", "grown"])
def test_a_retry_after_a_group_failed_to_pickle_frames_the_payload_afresh(
        tmp_path: Path, case: str) -> None:
    """A group that does not pickle stops the checkpoint after the groups before it were
    serialised; the retry (the value fixed) must not reuse the table and manifest of before
    (review of issue 20: a stale table committed a generation that restored truncated, lost
    or with deleted keys back)."""
    g_low, g_high = _keys_in(1, 2), _keys_in(9, 1)[0]
    with FileStore(tmp_path / "s", BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M, compression="none")
        ks[g_low[0]], ks[g_low[1]], ks[g_high] = b"a" * 100, b"b" * 100, b"c"
        ks.checkpoint(step=1)
        ks.checkpoint(step=2)  # the layout is cached from here
        if case == "longer":
            ks[g_low[0]] = b"a" * 300  # the same blocks, a longer segment
        elif case == "emptied":
            del ks[g_low[0]], ks[g_low[1]]
        else:
            ks[g_low[0]] = b"a" * (5 * BS)
        ks[g_high] = lambda: None  # does not pickle
        with pytest.raises(CheckpointEncodeError, match="key group 9"):
            ks.checkpoint(step=3)
        ks[g_high] = b"d"  # its old size: only the failed attempt changed the layout
        info = ks.checkpoint(step=3)
        want = ks.to_dict()
    back = _restore(tmp_path / "s")
    assert back.restored is not None and back.restored.generation == info.generation
    assert back.to_dict() == want


def test_a_moved_run_s_chunk_is_not_reused_for_a_written_group_too(tmp_path: Path) -> None:
    """A group grows, so the clean group after it moves (its run is taken at new positions),
    while a written chunk equals the base's chunk at its own position - the same stored
    chunk the moved run holds. Reusing it would reference one chunk twice, which the reader
    refuses (the generation was lost: review of issue 20). Either compression."""
    for comp in ("none", "zstd"):
        root = tmp_path / comp
        with FileStore(root, BS) as store, store.acquire("ks") as lease:
            ks = KeyedState(lease, max_parallelism=4, compression=comp)
            k0, k1 = (next(f"k{i}" for i in range(1000) if key_group(f"k{i}", 4) == g)
                      for g in (0, 1))
            ks[k0], ks[k1] = b"small", bytes(10 * BS)
            ks.checkpoint(step=1)
            ks[k0] = bytes(3 * BS)  # group 0 grows: group 1's run moves
            info = ks.checkpoint(step=2)
            want = ks.to_dict()
        with FileStore(root) as st:
            back = KeyedState.restore(st.open_reader("ks"), max_parallelism=4)
        assert back.restored is not None and back.restored.generation == info.generation, comp
        assert back.to_dict() == want, comp


def test_only_written_groups_are_serialised_and_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    real_hash = writer.content_hash

    def counting_hash(chunk: Any) -> bytes:  # the real hash, counted: which chunks are read
        hashed.append(memoryview(chunk).nbytes)
        return real_hash(chunk)
    monkeypatch.setattr(writer, "content_hash", counting_hash)
    Counted.pickled = 0
    with FileStore(tmp_path / "s", BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M, compression="none")
        for g in range(M):
            for k in _keys_in(g, 40):
                ks[k] = Counted(len(k))
        first = ks.checkpoint(step=1)
        assert Counted.pickled == 40 * M and first.chunks_reused == 0
        reader = store.open_reader("ks")
        old = _entries(reader, 1)
        dirty = {3, 17}
        for g in dirty:
            ks[_keys_in(g, 1)[0]] = Counted(-1)
        Counted.pickled = 0
        hashed.clear()
        info = ks.checkpoint(step=2)
        assert Counted.pickled == 40 * len(dirty)  # clean groups were not serialised
        per_group = first.data_length // BS // M  # every group spans the same few blocks
        # ... nor read: only the written groups' chunks, the table and the manifest are hashed
        assert len(hashed) <= len(dirty) * (per_group + 1) + 2
        assert ks.last_groups_written == len(dirty)
        new = _entries(reader, 2)
        assert info.chunks_written is not None and info.chunks_reused is not None
        # the written groups' chunks, the table and the manifest at most
        assert info.chunks_written <= len(dirty) * (per_group + 1) + 2
        assert info.chunks_reused == len(new) - info.chunks_written
        assert info.chunks_reused >= (M - len(dirty)) * per_group
        assert info.bytes_written is not None and info.bytes_written < first.bytes_written / 5
        # the layout: every clean group's entries are the previous generation's, same blocks
        shared = {e.block for e in new} & {e.block for e in old}
        assert len(shared) >= (M - len(dirty)) * per_group
        # an untouched checkpoint serialises nothing at all
        Counted.pickled = 0
        again = ks.checkpoint(step=3)
        assert Counted.pickled == 0 and ks.last_groups_written == 0
        assert again.chunks_written is not None and again.chunks_written <= 2
    assert _restore(tmp_path / "s").to_dict() == ks.to_dict()


REPO = Path(__file__).resolve().parent.parent
#: The source files whose Python-level work a commit is counted in.
OURS = (str(REPO / "stages") + "/", str(REPO / "blockstore") + "/")


def _lines_run(fn: Any) -> tuple[Any, int]:
    """``fn()`` and the Python lines it ran in ``stages/`` and ``blockstore/`` (this thread;
    a commit this small runs its encoding in the caller, so that is all of it)."""
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(OURS) else None

    sys.settrace(tracer)
    try:
        out = fn()
    finally:
        sys.settrace(None)
    return out, count


def _one_group_commit(root: Path, clean_blocks: int) -> tuple[Any, int, int]:
    """A keyed state of M groups, each clean group one value of ``clean_blocks`` blocks,
    group 0 one small value; the third checkpoint after group 0 changed: its info, the
    Python lines it ran, and the payload's chunks."""
    rng = random.Random(7)
    key0 = _keys_in(0, 1)[0]
    with FileStore(root, BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M, compression="none")
        for g in range(1, M):
            ks[_keys_in(g, 1)[0]] = rng.randbytes(clean_blocks * BS - 100)
        for n in range(3):
            ks[key0] = rng.randbytes(BS - 100)
            info, lines = _lines_run(ks.checkpoint)
        assert ks.last_groups_written == 1 and info.depth == 2
    return info, lines, -(-info.data_length // BS)


def test_a_commit_s_work_follows_the_changed_groups_not_the_state(tmp_path: Path) -> None:
    """Issue 20 item 2: the commit bookkeeping was O(all chunks) - every chunk of a clean
    group went through the encoding loop, the allocator, the map packing and compaction's
    loops. Counted, not timed: the chunks visited, and the Python lines run, are the same
    for a state 16x larger whose extra bytes are all in clean groups."""
    small, small_lines, small_chunks = _one_group_commit(tmp_path / "small", 1)
    large, large_lines, large_chunks = _one_group_commit(tmp_path / "large", 16)
    assert large_chunks >= 12 * small_chunks  # the clean groups hold the difference
    for info, chunks in ((small, small_chunks), (large, large_chunks)):
        # group 0's chunk, the table and the manifest; no clean group's chunk is read
        assert info.chunks_visited is not None and info.chunks_visited <= 4, info
        assert info.chunks_written <= 3 and info.chunks_reused >= chunks - 4, info
    # The map is written whole (a few more map blocks for the large state), all else is the
    # same: without the runs the large commit ran ~10 lines per extra chunk (~5,000 more).
    assert large_lines <= small_lines * 1.2 + 100, (small_lines, large_lines)


def _entries(reader: Any, generation: int) -> list[Any]:
    _, scans = scan_slots(reader)
    h = next(s.header for s in scans if s.header and s.header.generation == generation)
    return load_map(reader, h)[0]


def test_full_every_writes_everything_from_the_kept_bytes(tmp_path: Path) -> None:
    Counted.pickled = 0
    with FileStore(tmp_path / "s", BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M, full_every=2, compression="none")
        for i in range(500):
            ks[i] = Counted(i)
        ks.checkpoint(step=1)
        Counted.pickled = 0
        ks[1] = Counted(-1)
        assert ks.checkpoint(step=2).depth == 1
        ks[2] = Counted(-2)
        full = ks.checkpoint(step=3)  # depth 1 base, full_every=2: a full write
        assert full.depth == 0 and full.chunks_reused == 0
        assert Counted.pickled == sum(1 for i in range(500)
                                      if key_group(i, M) in {key_group(1, M),
                                                             key_group(2, M)})
    back = _restore(tmp_path / "s")
    assert back.to_dict() == ks.to_dict() and back[2] == Counted(-2)


# -- crashes ---------------------------------------------------------------------------
def _old_and_new(root: Path) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """A store with two keyed generations (full, then incremental); the next state."""
    with FileStore(root, BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M)
        _fill(ks, 1500, tag=1)
        ks.checkpoint(step=1)
        for i in range(0, 1500, 97):
            ks[i if i % 3 == 0 else f"user-{i}"] = ("second", i)
        ks.checkpoint(step=2)
        old = ks.to_dict()
    new = dict(old)
    for i in range(0, 1500, 251):
        new[i if i % 3 == 0 else f"user-{i}"] = ("third", i)
    new[("fresh", 1)] = "a new key"
    return old, new


def _attempt(template: Path, dest: Path, new: dict[Any, Any], **arm: Any
             ) -> tuple[bool, FaultyStore, BaseException | None]:
    shutil.copytree(template, dest)
    faulty = FaultyStore(FileStore(dest))
    lease = faulty.acquire("ks")
    ks = KeyedState.restore(lease, max_parallelism=M, compression="none")
    for k, v in new.items():
        if ks.get(k, None) != v:
            ks[k] = v
    faulty.block_writes = 0
    faulty.flushes = 0
    faulty.crash_after(arm.get("crash_after"), torn=arm.get("torn", False))
    faulty.crash_on_flush(arm.get("crash_on_flush"))
    err = None
    try:
        ks.checkpoint(step=3)
        ok = True
    except CheckpointFailed as exc:
        ok, err = False, exc
    faulty.close()
    return ok, faulty, err


def test_a_crash_at_every_write_of_a_keyed_checkpoint_leaves_old_or_new(
        tmp_path: Path) -> None:
    template = tmp_path / "template"
    old, new = _old_and_new(template)
    ok, counted, _ = _attempt(template, tmp_path / "count", new)
    assert ok
    total = counted.block_writes
    assert total >= 5
    seen = set()
    for k in range(total + 1):
        for torn in (False, True):
            dest = tmp_path / f"k{k}{'t' if torn else ''}"
            ok, _, err = _attempt(template, dest, new, crash_after=k, torn=torn)
            assert ok == (k >= total), (k, torn)
            if not ok:
                assert isinstance(err, CheckpointCommitUnknown) == (k == total - 1), (k, err)
            got = _restore(dest).to_dict()
            assert got in (old, new), (k, torn)  # never a mix
            if k < total - 1:
                assert got == old, (k, torn)
            seen.add("new" if got == new else "old")
            with FileStore(dest) as store:
                assert not any(r.corrupt for r in verify_lease(store.open_reader("ks")))
            shutil.rmtree(dest)
    assert seen == {"old", "new"}
    for n in range(2):  # and at each flush: the data flush (old), the header's (either)
        dest = tmp_path / f"f{n}"
        ok, _, err = _attempt(template, dest, new, crash_on_flush=n)
        assert not ok
        got = _restore(dest).to_dict()
        assert got == old if n == 0 else got in (old, new)
        shutil.rmtree(dest)


def test_the_same_writer_goes_on_after_a_failed_keyed_checkpoint(tmp_path: Path) -> None:
    template = tmp_path / "template"
    _, new = _old_and_new(template)
    dest = tmp_path / "d"
    shutil.copytree(template, dest)
    faulty = FaultyStore(FileStore(dest))
    lease = faulty.acquire("ks")
    ks = KeyedState.restore(lease, max_parallelism=M)
    for k, v in new.items():
        ks[k] = v
    faulty.block_writes = 0
    faulty.crash_after(2)
    with pytest.raises(CheckpointFailed):
        ks.checkpoint(step=3)
    faulty.crash_after(None)
    ks["after"] = 1
    ks.checkpoint(step=4)
    faulty.close()
    want = {**new, "after": 1}
    assert _restore(dest).to_dict() == want


# -- damage, subsets, mismatches ---------------------------------------------------------
def test_a_bit_flip_in_a_reused_segment_is_detected(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M, compression="none")
        for g in range(M):
            for k in _keys_in(g, 30):
                ks[k] = k * 3
        ks.checkpoint(step=1)
        ks[_keys_in(5, 1)[0]] = "changed"
        info = ks.checkpoint(step=2)
        assert info.chunks_reused
        reader = store.open_reader("ks")
        g1, g2 = _entries(reader, 1), _entries(reader, 2)
        victim = sorted({e.block for e in g2} & {e.block for e in g1})[len(g1) // 2]
        lease_id = lease.lease_id
    with open(tmp_path / "s" / "leases" / f"{lease_id}.dat", "r+b") as f:
        f.seek(victim * BS + 9)
        byte = f.read(1)
        f.seek(victim * BS + 9)
        f.write(bytes([byte[0] ^ 0x04]))
    with pytest.raises(CheckpointCorrupt, match=f"data block {victim}") as ei:
        _restore(tmp_path / "s")  # both generations share the block: neither verifies
    assert {g for g, _ in ei.value.skipped} == {1, 2}
    with FileStore(tmp_path / "s") as store:
        reports = verify_lease(store.open_reader("ks"))
    assert sorted(r.generation for r in reports if r.corrupt) == [1, 2]


def test_restore_as_two_instances_by_key_group_range_and_back(tmp_path: Path) -> None:
    m = 128
    with FileStore(tmp_path / "s", BS) as store:
        with store.acquire("one") as lease:
            ks = KeyedState(lease, max_parallelism=m)
            want = _fill(ks, 4000)
            ks.checkpoint(step=1)
        halves = []
        for i in range(2):
            with store.acquire(f"half-{i}") as lease:
                part = KeyedState.restore(store.open_reader("one"), lease=lease,
                                          groups=key_group_range(i, 2, m), max_parallelism=m)
                assert part.groups == frozenset(key_group_range(i, 2, m))
                assert all(key_group(k, m) in part.groups for k in part)
                halves.append(part.to_dict())
                part[_key_inside(part.groups, m, i)] = i  # each writes its own lease
                part.checkpoint(step=2)
        assert halves[0].keys().isdisjoint(halves[1]) and {**halves[0], **halves[1]} == want
        with pytest.raises(KeyGroupError, match="does not own"):
            part[_key_outside(part.groups, m)] = 1
        with store.acquire("back") as lease:
            whole = KeyedState.restore([store.open_reader("half-0"),
                                        store.open_reader("half-1")],
                                       lease=lease, max_parallelism=m)
            whole.checkpoint(step=3)
        back = KeyedState.restore(store.open_reader("back"), max_parallelism=m)
    added = {_key_inside(frozenset(key_group_range(i, 2, m)), m, i): i for i in range(2)}
    assert back.to_dict() == {**want, **added}


def _key_outside(groups: frozenset[int], m: int) -> str:
    i = 0
    while key_group(f"o{i}", m) in groups:
        i += 1
    return f"o{i}"


def _key_inside(groups: frozenset[int], m: int, tag: int) -> tuple[str, int, int]:
    i = 0
    while key_group(("half", tag, i), m) not in groups:
        i += 1
    return ("half", tag, i)


def test_wrong_max_parallelism_and_other_mismatches_are_specific(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as store:
        with store.acquire("ks") as lease:
            ks = KeyedState(lease, max_parallelism=M)
            _fill(ks, 100)
            ks.checkpoint()
        with pytest.raises(KeyedStateMismatch, match="max_parallelism 32, the restore asked "
                                                     "128") as ei:
            KeyedState.restore(store.open_reader("ks"))
        assert ei.value.expected == "max_parallelism=128"
        assert ei.value.found == "max_parallelism=32"
        with store.acquire("plain") as lease:
            CheckpointedStageState({"a": 1}, lease).checkpoint()
        with pytest.raises(KeyedStateMismatch, match="does not hold keyed state"):
            KeyedState.restore(store.open_reader("plain"), max_parallelism=M)
        with store.acquire("target") as lease, pytest.raises(KeyedStateMismatch,
                                                             match="held by lease"):
            KeyedState.restore([store.open_reader("ks"), store.open_reader("ks")],
                               lease=lease, max_parallelism=M)
        with pytest.raises(KeyGroupError, match="outside"):
            KeyedState(store.open_reader("ks"), groups=[M], max_parallelism=M)


def test_an_untracked_in_place_change_is_refused_when_checked(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M, check_untracked=True)
        ks["a"] = [1]
        ks.checkpoint(step=1)
        ks["a"].append(2)  # breaks the contract: read, changed in place
        with pytest.raises(UntrackedWrite) as ei:
            ks.checkpoint(step=2)
        assert ei.value.group == key_group("a", M)
        ks.mutable("a").append(3)  # the tracked way
        ks.checkpoint(step=3)
    assert _restore(tmp_path / "s")["a"] == [1, 2, 3]


def test_keyed_generations_carry_the_mac(tmp_path: Path) -> None:
    key = b"k" * 32
    with FileStore(tmp_path / "s", BS) as store, store.acquire("ks") as lease:
        ks = KeyedState(lease, max_parallelism=M, key=key)
        want = _fill(ks, 800)
        ks.checkpoint(step=1)
        ks[3] = "x"
        want[3] = "x"
        assert ks.checkpoint(step=2).chunks_reused
    assert _restore(tmp_path / "s", key=key).to_dict() == want
    with pytest.raises(CheckpointAuthError):
        _restore(tmp_path / "s", key=b"another key")
