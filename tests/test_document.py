"""Slotted documents (blockstore/document.py): crash atomicity, integrity, MAC, bad input.

The crash test is the one for every document kept in the store (run steps, run status, the
scheduler registry): a save is cut at every block write (plain and torn) and at every flush,
on every backend, with ``blockstore.faults.FaultyStore`` around a real store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blockstore import (
    BlockStore,
    BlockStoreError,
    DocumentEncodeError,
    DocumentTooLargeError,
    FileStore,
    MemoryStore,
    SlottedDocument,
    StaleLeaseError,
)
from blockstore.document import HEADER_SIZE
from blockstore.faults import FaultyStore, InjectedCrash

BS = 512
KIND = b"TEST"
OLD = {"v": "old", "pad": "o" * 700}      # 2 payload blocks at 512 bytes
OLDER = {"v": "older"}
NEW = {"v": "new", "pad": "n" * 1300}     # 3 payload blocks

Reopen = Callable[[], BlockStore]


@pytest.fixture(params=["memory", "file"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[BlockStore, Reopen]]:
    """A fresh store and how to open it again as a new process would."""
    if request.param == "memory":
        store: BlockStore = MemoryStore(BS)
        yield store, lambda: store
    else:
        store = FileStore(tmp_path / "s", BS)
        yield store, lambda: FileStore(tmp_path / "s")
    store.close()


def _doc(lease: object, slots: int = 2, key: bytes | None = None) -> SlottedDocument:
    return SlottedDocument(lease, kind=KIND, version=1, slots=slots, key=key)  # type: ignore[arg-type]


def _load(store: BlockStore, slots: int = 2, key: bytes | None = None) -> dict | None:
    return _doc(store.open_reader("doc"), slots, key).load().document


def _writes_of_one_save(slots: int) -> int:
    inner = MemoryStore(BS)
    faulty = FaultyStore(inner)
    with _doc(faulty.acquire("doc"), slots) as d:
        d.save(OLDER)
        d.save(OLD)
        before = faulty.block_writes
        d.save(NEW)
        return faulty.block_writes - before


@pytest.mark.parametrize("slots", [2, 3])
def test_crash_at_every_block_write_and_flush(backend: tuple[BlockStore, Reopen],
                                              slots: int) -> None:
    inner, reopen = backend
    writes = _writes_of_one_save(slots)
    assert writes >= 4  # 3 payload blocks and the header
    cuts = [("write", k, torn) for k in range(writes + 1) for torn in (False, True)]
    cuts += [("flush", n, False) for n in range(3)]
    outcomes = set()
    for i, (where, k, torn) in enumerate(cuts):
        faulty = FaultyStore(inner)
        name = f"doc{i}"
        lease = faulty.acquire(name)
        d = _doc(lease, slots)
        d.save(OLDER)
        d.save(OLD)
        if where == "write":
            faulty.crash_after(faulty.block_writes + k, torn=torn)
        else:
            faulty.crash_on_flush(faulty.flushes + k)
        try:
            gen = d.save(NEW)
            saved = True
        except InjectedCrash:
            saved = False
        fresh = reopen()
        got = _doc(fresh.open_reader(name), slots).load()
        if saved:
            assert got.document == NEW and got.generation == gen == 3
        elif where == "flush" and k == 1:
            # Cut after the commit write, before its flush: committed or not, never torn.
            assert got.document in (OLD, NEW), (where, k, got)
        else:
            assert got.document == OLD and got.generation == 2, (where, k, torn, got)
        outcomes.add(got.document["v"])
        # A new holder takes over after the "crash" and saves on top of whatever is left.
        with _doc(fresh.acquire(name, steal=True), slots) as again:
            assert again.save({"v": "after"}) == got.generation + 1
            assert again.load().document == {"v": "after"}
    assert outcomes == {"old", "new"}


def test_bit_flip_in_every_block_falls_back_with_a_reason(
        backend: tuple[BlockStore, Reopen]) -> None:
    store, _ = backend
    lease = store.acquire("doc")
    d = _doc(lease)
    d.save(OLD)
    d.save(NEW)
    newest = d.load()
    assert newest.document == NEW and newest.generation == 2
    reader = store.open_reader("doc")
    header = _doc(reader)._scan()[1]
    new_h = next(h for h in header if h.generation == 2)
    old_h = next(h for h in header if h.generation == 1)
    new_blocks = {new_h.slot: HEADER_SIZE} | {
        new_h.first + i: min(BS, new_h.length - i * BS) for i in range(new_h.blocks(BS))}
    old_blocks = {old_h.slot: HEADER_SIZE} | {
        old_h.first + i: min(BS, old_h.length - i * BS) for i in range(old_h.blocks(BS))}
    assert not set(new_blocks) & set(old_blocks)
    for block in range(reader.num_blocks):
        covered = new_blocks.get(block) or old_blocks.get(block) or 0
        for offset in sorted({0, covered // 2, covered - 1, BS - 1}):
            if offset < 0:
                continue
            raw = bytearray(reader.read_block(block))
            raw[offset] ^= 0x10
            lease.write_blocks({block: raw})
            got = _doc(reader).load()
            raw[offset] ^= 0x10
            lease.write_blocks({block: raw})
            if block in new_blocks and offset < covered:
                assert got.document == OLD and got.generation == 1, (block, offset)
                assert [s.slot for s in got.skipped] == [new_h.slot]
                reason = got.skipped[0].reason
                assert "checksum" in reason, reason
            else:  # the older document's blocks, or bytes no structure covers
                # (a damaged header of unknown generation is reported whatever its age)
                assert got.document == NEW, (block, offset)
                assert {s.slot for s in got.skipped} <= {old_h.slot}, (block, offset)
    assert _doc(reader).load().document == NEW


def test_wrong_or_missing_key_returns_nothing(backend: tuple[BlockStore, Reopen]) -> None:
    store, _ = backend
    with _doc(store.acquire("doc"), key=b"k1") as d:
        assert d.save(OLD) == 1
        assert d.load().document == OLD
    assert _load(store, key=b"k1") == OLD
    got = _doc(store.open_reader("doc"), key=b"k2").load()
    assert got.document is None and got.generation is None
    assert [s.reason for s in got.skipped] == ["MAC mismatch (wrong key or forged)"]
    with _doc(store.acquire("plain")) as d:
        d.save(OLD)
    got = _doc(store.open_reader("plain"), key=b"k1").load()
    assert got.document is None and "no MAC" in got.skipped[0].reason


def test_forged_mac_on_a_valid_crc_is_rejected(backend: tuple[BlockStore, Reopen]) -> None:
    store, _ = backend
    with _doc(store.acquire("doc"), key=b"k1") as d:
        d.save(OLD)
    # An attacker without the key rewrites the payload and fixes up both CRCs.
    with _doc(store.acquire("doc")) as unkeyed:
        unkeyed.save({"v": "evil"})
    got = _doc(store.open_reader("doc"), key=b"k1").load()
    assert got.document == OLD and got.skipped and "no MAC" in got.skipped[0].reason


@pytest.mark.parametrize("bad, err", [
    ({"x": object()}, DocumentEncodeError),
    ({"x": {1, 2}}, DocumentEncodeError),
    ([1, 2], DocumentEncodeError),
    ("text", DocumentEncodeError),
    ({"pad": "x" * 5000}, DocumentTooLargeError),
])
def test_bad_input_changes_nothing(backend: tuple[BlockStore, Reopen], bad: object,
                                   err: type[BlockStoreError]) -> None:
    store, _ = backend
    lease = store.acquire("doc")
    d = SlottedDocument(lease, kind=KIND, version=1, max_bytes=4096)
    d.save(OLD)
    before = [lease.read_block(i) for i in range(lease.num_blocks)]
    with pytest.raises(err) as info:
        d.save(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, BlockStoreError)
    assert info.value.name == "doc"
    assert [lease.read_block(i) for i in range(lease.num_blocks)] == before
    assert d.load().document == OLD


def test_stale_holder_cannot_save(backend: tuple[BlockStore, Reopen]) -> None:
    store, _ = backend
    old = _doc(store.acquire("doc"))
    old.save(OLD)
    new = _doc(store.acquire("doc", steal=True))
    assert new.load().document == OLD
    new.save(NEW)
    before = new.load()
    with pytest.raises(StaleLeaseError):
        old.save({"v": "zombie", "pad": "z" * 3000})
    assert new.load() == before
    assert new.save({"v": "newer"}) == 3


def test_kinds_and_versions_do_not_mix(backend: tuple[BlockStore, Reopen]) -> None:
    store, _ = backend
    with SlottedDocument(store.acquire("doc"), kind=b"AAAA", version=2) as d:
        d.save(OLD)
    other = SlottedDocument(store.open_reader("doc"), kind=b"BBBB", version=2).load()
    assert other.document is None and "kind" in other.skipped[0].reason
    older = SlottedDocument(store.open_reader("doc"), kind=b"AAAA", version=1).load()
    assert older.document is None and "version 2" in older.skipped[0].reason


def test_growth_is_bounded_and_reader_cannot_save(backend: tuple[BlockStore, Reopen]) -> None:
    store, _ = backend
    lease = store.acquire("doc")
    d = _doc(lease, slots=3)
    assert d.load().document is None and lease.num_blocks == 0
    biggest = 0
    for i in range(120):
        doc = {"i": i, "pad": "p" * ((i * 377) % 3000)}
        assert d.save(doc) == i + 1
        biggest = max(biggest, -(-len(d.encode(doc)) // BS))
        assert d.load().document == doc
    assert lease.num_blocks <= 3 + 3 * biggest
    with pytest.raises(TypeError):
        _doc(store.open_reader("doc"), slots=3).save({"a": 1})
    d.close()
    d.close()  # harmless
    assert lease.released


_KILLED_SAVER = """
import sys
from blockstore import FileStore, SlottedDocument
from blockstore.faults import FaultyStore
faulty = FaultyStore(FileStore(sys.argv[1]))
doc = SlottedDocument(faulty.acquire("doc", steal=True), kind=b"TEST", version=1)
faulty.crash_after(faulty.block_writes + int(sys.argv[2]), kill=True)
doc.save({"v": "new", "pad": "n" * 1300})
print("saved")
"""


def test_saver_sigkilled_at_every_block_write(tmp_path: Path) -> None:
    """The same cut, by a real process that dies (SIGKILL) at the write: no finally runs."""
    import signal
    import subprocess
    import sys

    root = tmp_path / "s"
    with FileStore(root, BS) as store, _doc(store.acquire("doc")) as d:
        d.save(OLDER)
        d.save(OLD)
    writes = _writes_of_one_save(2)
    for k in range(writes + 1):
        p = subprocess.run([sys.executable, "-c", _KILLED_SAVER, str(root), str(k)],
                           capture_output=True, text=True, timeout=60,
                           cwd=str(Path(__file__).resolve().parents[1]))
        with FileStore(root) as store:
            got = _doc(store.open_reader("doc")).load()
            if k < writes:
                assert p.returncode == -signal.SIGKILL, p.stderr
                assert got.document == OLD, (k, got)
            else:
                assert p.stdout.strip() == "saved", p.stderr
                assert got.document == NEW
            with _doc(store.acquire("doc", steal=True)) as again:  # reset for the next cut
                again.save(OLDER)
                again.save(OLD)
