"""The conformance suite against the file backend, plus what only a directory store has:
paths, metadata, lease records on disk, reopening, and a second process's takeover."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blockstore import (
    BlockIndexError,
    FileStore,
    LeaseHeldError,
    StaleLeaseError,
    StorageIOError,
    StoreConfigError,
    StoreCorruptError,
    StorePathError,
    StoreVersionError,
    open_store,
)
from blockstore.testing import StoreConformance, block_pattern

BS = 4096


class TestFileStore(StoreConformance):
    def make_store(self, block_size: int) -> FileStore:
        return FileStore(self.tmp_path / "store", block_size)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (lock files are empty)."""
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def populated(store_dir: str) -> tuple[str, str, dict[int, bytes]]:
    """A store with lease "a" (3 blocks written, flushed, released) and its lease id."""
    with open_store(store_dir, block_size=BS) as st:
        with st.acquire("a", num_blocks=3) as lease:
            data = {i: block_pattern("a", i, BS) for i in range(3)}
            lease.write_blocks(data)
            lease.flush()
        st.acquire("b", num_blocks=1).release()
        return store_dir, lease.lease_id, data


# -- paths ---------------------------------------------------------------------------------
def test_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"not a store")
    with pytest.raises(StorePathError) as err:
        FileStore(f)
    assert err.value.path == str(f) and isinstance(err.value, NotADirectoryError)
    with pytest.raises(StorePathError):
        FileStore(f / "below", BS)  # a parent that is a file
    assert f.read_bytes() == b"not a store"


def test_non_empty_foreign_directory_refused(tmp_path: Path) -> None:
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(StorePathError) as err:
        open_store(d, block_size=BS)
    assert str(d) in str(err.value)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]


def test_missing_directory_without_create(tmp_path: Path) -> None:
    with pytest.raises(StorePathError):
        open_store(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_existing_empty_directory_becomes_a_store(tmp_path: Path) -> None:
    with open_store(f"file://{tmp_path}", block_size=BS) as st:
        assert st.url == f"file://{tmp_path}" and st.block_size == BS
    assert (tmp_path / "blockpoint-store.json").exists()


def test_interrupted_creation_is_completed(tmp_path: Path) -> None:
    # What a crash between creating the skeleton and publishing the metadata leaves.
    (tmp_path / "leases").mkdir()
    (tmp_path / "store.lock").touch()
    (tmp_path / ".blockpoint-store.json.123.456.tmp").write_bytes(b"{")
    with open_store(tmp_path, block_size=BS) as st:
        st.acquire("a")


def test_store_created_by_another_process_between_two_looks(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening races a creator: the first look finds no meta, then the other process writes
    the meta and its first lease before the emptiness check lists the directory. The
    opener must read the store, not call it foreign (seen once in a loaded full run of
    ``test_processes_race_to_create_store_and_lease``)."""
    import blockstore.fileroot as file_module  # open_root looks there

    root = tmp_path / "s"
    root.mkdir()
    real = file_module.is_empty_or_partial
    done: list[bool] = []

    def creator_wins_in_between(path: Path) -> bool:
        if not done:
            done.append(True)
            subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
                from blockstore import FileStore
                with FileStore({str(root)!r}, 4096) as st:
                    st.acquire("first", num_blocks=1).release()
            """)], check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        return real(path)

    monkeypatch.setattr(file_module, "is_empty_or_partial", creator_wins_in_between)
    with FileStore(root) as store:
        assert store.block_size == 4096 and done
        assert [i.name for i in store.list_leases()] == ["first"]


@pytest.mark.parametrize("bad", [0, 100, 2**30, 4096.5])
def test_bad_block_size_creates_nothing(tmp_path: Path, bad: object) -> None:
    with pytest.raises(StoreConfigError):
        open_store(tmp_path / "new", block_size=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "new").exists()


def _store_made_before_the_sector_rule(root: Path, bs: int) -> FileStore:
    """A file store of block size ``bs`` as an earlier blockpoint could create it."""
    with FileStore(root, 4096):
        pass
    meta = json.loads((root / "blockpoint-store.json").read_text())
    (root / "blockpoint-store.json").write_text(json.dumps({**meta, "block_size": bs}))
    return FileStore(root)


def test_a_new_store_needs_a_block_size_multiple_of_512(tmp_path: Path) -> None:
    """The checkpoint sector rule (FORMAT.md 2.1) counts 512-byte windows from each block's
    start. With B = 1000 header slot 1 starts at byte 1000 of the lease file, so a disk
    sector lost to power loss in its write zeroes parts of two windows: the interrupted
    commit reads as corruption (verify fails) instead of "uncommitted". New stores refuse
    such a B; a store made with one earlier still opens and works."""
    from blockstore import MemoryStore
    from stages import CheckpointedStageState, verify_lease

    for bad in (1000, 1500, 4097):
        with pytest.raises(StoreConfigError, match="multiple of 512"):
            open_store(tmp_path / "new", block_size=bad)
        assert not (tmp_path / "new").exists()
        with pytest.raises(StoreConfigError, match="multiple of 512"):
            MemoryStore(bad)
    with open_store(tmp_path / "ok", block_size=1536) as st:
        assert st.block_size == 1536
    statuses = {}
    for bs in (1024, 1000):
        with _store_made_before_the_sector_rule(tmp_path / f"b{bs}", bs) as st:
            assert st.block_size == bs
            with st.acquire("stage") as lease:
                css = CheckpointedStageState({"v": 1}, lease, codec="msgpack")
                css.checkpoint(step=1, meta={"pad": "m" * 600})  # slot 0
                css.checkpoint(step=2, meta={"pad": "m" * 600})  # slot 1: 784+ bytes
                assert CheckpointedStageState.restore(lease).restored.generation == 2
                dat = tmp_path / f"b{bs}" / "leases" / f"{lease.lease_id}.dat"
            with open(dat, "r+b") as f:  # the file's sector [1024, 1536) never landed
                f.seek(1024)
                f.write(bytes(512))
            (slot1,) = [r for r in verify_lease(st.open_reader("stage")) if r.slot == 1]
            statuses[bs] = slot1.status
    assert statuses[1024].startswith("uncommitted"), statuses
    assert not statuses[1000].startswith("uncommitted"), statuses  # reads as damage


def test_unknown_scheme_refused() -> None:
    with pytest.raises(StoreConfigError):
        open_store("ftp://host/x")


# -- metadata ------------------------------------------------------------------------------
def test_reopen_sees_data_and_keeps_block_size(populated) -> None:
    store_dir, lease_id, data = populated
    with open_store(store_dir) as st:  # block size comes from the store
        assert st.block_size == BS
        assert st.open_reader("a").read_blocks([0, 1, 2]) == [data[0], data[1], data[2]]
        info = st.lease_info(lease_id)
        assert (info.name, info.epoch, info.holder, info.num_blocks) == ("a", 1, None, 3)
        with st.acquire("a") as lease:
            assert lease.epoch == 2
    with open_store(f"file://{store_dir}", block_size=BS) as st:
        assert st.lease_info("a").epoch == 2


def test_block_size_mismatch_on_reopen(populated) -> None:
    store_dir, _, data = populated
    before = _snapshot(Path(store_dir))
    with pytest.raises(StoreConfigError) as err:
        open_store(store_dir, block_size=2 * BS)
    assert str(BS) in str(err.value)
    assert _snapshot(Path(store_dir)) == before


@pytest.mark.parametrize("content", [
    b"", b"{not json", b"[1, 2]", b'"string"', b'{"format": "other", "version": 1}',
    b'{"format": "blockpoint-store", "version": 1}',
    b'{"format": "blockpoint-store", "version": "x", "block_size": 4096}',
    b'{"format": "blockpoint-store", "version": 1, "block_size": 7}',
    b'{"format": "blockpoint-store", "version": 0, "block_size": 4096}',
    b"\xff\xfe\x00",
])
def test_corrupt_store_metadata(populated, content: bytes) -> None:
    store_dir, _, _ = populated
    meta = Path(store_dir) / "blockpoint-store.json"
    meta.write_bytes(content)
    before = _snapshot(Path(store_dir))
    with pytest.raises(StoreCorruptError) as err:
        open_store(store_dir)
    assert err.value.path == str(meta) and str(meta) in str(err.value)
    assert not isinstance(err.value, StoreVersionError)
    assert _snapshot(Path(store_dir)) == before


def test_newer_store_version_refused(populated) -> None:
    store_dir, _, _ = populated
    meta = Path(store_dir) / "blockpoint-store.json"
    meta.write_text(json.dumps({"format": "blockpoint-store", "version": 99,
                                "block_size": BS, "new_field": True}))
    before = _snapshot(Path(store_dir))
    with pytest.raises(StoreVersionError) as err:
        open_store(store_dir)
    assert (err.value.version, err.value.supported) == (99, 1)
    assert err.value.path == str(meta) and isinstance(err.value, StoreCorruptError)
    assert _snapshot(Path(store_dir)) == before


# -- lease records ---------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    b"", b"{truncated", b"[]", b'{"lease_id": "x"}', b"\x00" * 64,
    b'{"lease_id": "LEASE", "name": "a", "holder": null, "epoch": "one", "expires_at": 0,'
    b' "num_blocks": 3, "block_size": 4096, "created_at": 0}',
])
def test_corrupt_lease_record(populated, content: bytes) -> None:
    store_dir, lease_id, data = populated
    record = Path(store_dir) / "leases" / f"{lease_id}.json"
    record.write_bytes(content.replace(b"LEASE", lease_id.encode()))
    before = _snapshot(Path(store_dir))
    with open_store(store_dir) as st:
        calls = [lambda: st.lease_info(lease_id), lambda: st.open_reader(lease_id),
                 lambda: st.list_leases(), lambda: st.find("a"), lambda: st.acquire("a"),
                 lambda: st.acquire("c"), lambda: st.delete_lease(lease_id), st.stats]
        for call in calls:
            with pytest.raises(StoreCorruptError) as err:
                call()
            assert err.value.path == str(record), call
            assert str(record) in str(err.value)
    assert _snapshot(Path(store_dir)) == before  # nothing else changed


def _spoil(record: Path, how: str) -> None:
    if how == "dir":  # reading fails with an OSError whoever we are (root ignores modes)
        record.unlink()
        record.mkdir()
    else:
        raw = record.read_bytes()
        record.write_bytes({"json": b"{not json", "truncated": raw[:len(raw) // 2]}[how])


@pytest.mark.parametrize("how", ["json", "truncated", "dir"])
def test_one_unreadable_record_does_not_block_lookups_by_name(populated, how: str) -> None:
    """Lease "a"'s record unreadable: "b" is still found, opened, acquired and written by
    name; a lookup of "a" or of a name no readable record has (it may be the broken one's)
    fails naming the file, and the scan reports it by path."""
    store_dir, lease_id, _ = populated
    record = Path(store_dir) / "leases" / f"{lease_id}.json"
    _spoil(record, how)
    with open_store(store_dir) as st:
        b = st.find("b")
        assert b is not None and st.lease_info("b") == b == st.lease_info(b.lease_id)
        assert st.open_reader("b").read_blocks([0]) == [bytes(BS)]
        with st.acquire("b") as lease:
            lease.write_blocks({0: b"x" * BS})
            assert lease.epoch == 2
        for call in (lambda: st.find("a"), lambda: st.lease_info("a"), lambda: st.find("c"),
                     lambda: st.acquire("c"), lambda: st.list_leases()):
            with pytest.raises(StoreCorruptError) as err:
                call()
            assert err.value.path == str(record) and str(record) in str(err.value)
        scan = st.scan_leases()
        assert [i.name for i in scan.leases] == ["b"]
        assert [e.path for e in scan.unreadable] == [str(record)]


def test_lease_record_of_another_lease_is_corrupt(populated) -> None:
    store_dir, lease_id, _ = populated
    leases = Path(store_dir) / "leases"
    other = next(p for p in leases.glob("*.json") if p.stem != lease_id)
    record = leases / f"{lease_id}.json"
    record.write_bytes(other.read_bytes())
    with open_store(store_dir) as st, pytest.raises(StoreCorruptError) as err:
        st.lease_info(lease_id)
    assert err.value.path == str(record)


def test_unreadable_lease_record(populated) -> None:
    store_dir, lease_id, _ = populated
    record = Path(store_dir) / "leases" / f"{lease_id}.json"
    record.unlink()
    record.mkdir()  # reading it fails with an OSError, whoever we are
    with open_store(store_dir) as st, pytest.raises(StorageIOError) as err:
        st.lease_info(lease_id)
    assert err.value.path == str(record) and str(record) in str(err.value)


def test_refused_write_changes_no_file(populated) -> None:
    store_dir, _, data = populated
    with open_store(store_dir) as st:
        a = st.acquire("a", holder="old")
        st.acquire("a", holder="new", steal=True)
        before = _snapshot(Path(store_dir))
        with pytest.raises(StaleLeaseError):
            a.write_blocks({0: b"zombie"})
        assert _snapshot(Path(store_dir)) == before


def test_two_store_objects_on_one_directory(store_dir: str) -> None:
    # Two handles in one process fence each other through the files, not through memory.
    with open_store(store_dir, block_size=BS) as s1, open_store(store_dir) as s2:
        a = s1.acquire("x", holder="a", num_blocks=2)
        with pytest.raises(LeaseHeldError):
            s2.acquire("x", holder="b")
        b = s2.acquire("x", holder="b", steal=True)
        with pytest.raises(StaleLeaseError):
            a.write_blocks({0: b"late"})
        b.write_blocks({0: b"mine"})
        assert s1.open_reader("x").read_block(0)[:4] == b"mine"


_TAKEOVER = textwrap.dedent("""
    import sys
    from blockstore import open_store
    with open_store(sys.argv[1]) as st:
        lease = st.acquire("a", holder="other-process", steal=True)
        lease.write_blocks({1: b"from the other process"})
        lease.flush()
        print(lease.epoch)
""")


def test_write_after_another_process_took_over(populated) -> None:
    store_dir, _, data = populated
    with open_store(store_dir) as st:
        mine = st.acquire("a", holder="me")
        mine.write_blocks({0: b"mine"})
        out = subprocess.run([sys.executable, "-c", _TAKEOVER, store_dir], check=True,
                             capture_output=True, text=True, timeout=60)
        assert int(out.stdout) == mine.epoch + 1
        with pytest.raises(StaleLeaseError) as err:
            mine.write_blocks({0: b"late", 1: b"late", 2: b"late"})
        assert err.value.current_epoch == mine.epoch + 1
        got = st.open_reader("a").read_blocks([0, 1, 2])
        assert got[0][:4] == b"mine"
        assert got[1].rstrip(b"\0") == b"from the other process"
        assert got[2] == data[2]
        assert st.lease_info("a").holder == "other-process"


def test_files_written_are_readable_by_os(populated) -> None:
    # The on-disk layout promised in the module docstring: block i at offset i * block_size.
    store_dir, lease_id, data = populated
    dat = Path(store_dir) / "leases" / f"{lease_id}.dat"
    raw = dat.read_bytes()
    assert raw == data[0] + data[1] + data[2]
    assert os.path.exists(Path(store_dir) / "leases" / f"{lease_id}.lock")


def test_io_failure_is_translated(populated) -> None:
    store_dir, lease_id, data = populated
    dat = Path(store_dir) / "leases" / f"{lease_id}.dat"
    dat.rename(dat.with_suffix(".moved"))
    dat.mkdir()  # the blocks file can no longer be opened for writing
    with open_store(store_dir) as st:
        lease = st.acquire("a")
        with pytest.raises(StorageIOError) as err:
            lease.write_blocks({0: b"x"})
        assert isinstance(err.value.__cause__, OSError) and err.value.path == str(dat)
        assert lease_id in str(err.value)
        assert st.lease_info("a").epoch == lease.epoch  # the record is untouched


def test_corrupt_record_stops_acquisitions_not_other_holders(populated) -> None:
    store_dir, lease_id, data = populated
    with open_store(store_dir) as st:
        b = st.acquire("b", num_blocks=1)
        (Path(store_dir) / "leases" / f"{lease_id}.json").write_bytes(b"\0")
        # Fail closed: the unreadable record could be of any name, so no lease is acquired...
        with pytest.raises(StoreCorruptError):
            st.acquire("new")
        # ...but holders of other leases go on: their writes read only their own record.
        b.write_blocks({0: b"still writing"})
        b.flush()
        b.renew()
        assert st.open_reader(b.lease_id).read_block(0)[:13] == b"still writing"


def test_scan_isolates_a_damaged_record(tmp_path) -> None:
    """scan_leases lists every readable lease and names each unreadable record; acting on
    leases still fails closed."""
    from blockstore import FileStore, StoreCorruptError

    with FileStore(tmp_path / "s", 4096) as st:
        good = st.acquire("good", num_blocks=1)
        bad = st.acquire("bad", num_blocks=1)
        record = tmp_path / "s" / "leases" / f"{bad.lease_id}.json"
        record.write_bytes(b"[1, 2")
        scan = st.scan_leases()
        assert [i.name for i in scan.leases] == ["good"]
        assert [e.path for e in scan.unreadable] == [str(record)]
        assert isinstance(scan.unreadable[0], StoreCorruptError)
        with pytest.raises(StoreCorruptError):
            st.list_leases()
        good.write_block(0, b"still writable")  # other holders carry on
        assert good.read_block(0).startswith(b"still writable")


def test_start_writeback_is_a_harmless_hint(tmp_path: Path) -> None:
    """Big writes start the kernel's write-back early; small ones, a closed descriptor or an
    unsupported system make it a no-op, never an error. The data is what was written."""
    from blockstore import fileio

    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        data = os.urandom(2 << 20)
        fileio.pwritev_all(fd, [memoryview(data)], 0)
        started = fileio.start_writeback(fd, 0, len(data))
        assert started == (fileio._sync_file_range is not None)
        assert fileio.start_writeback(fd, 0, 4096) is False  # below WRITEBACK_MIN
        os.fsync(fd)
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    assert fileio.start_writeback(fd, 0, 2 << 20) is False  # EBADF: ignored


def test_big_write_then_flush_round_trips(tmp_path: Path) -> None:
    """A vectorised multi-MiB write (the path that starts write-back) reads back exactly,
    also for runs with gaps and a short last block."""
    store = FileStore(tmp_path / "store", 1 << 20)
    lease = store.acquire("wb")
    lease.grow(12)
    blocks = {i: os.urandom(1 << 20) for i in (1, 2, 3, 7, 8)}
    blocks[10] = os.urandom(1000)
    lease.write_blocks(blocks)
    lease.flush()
    for i, b in blocks.items():
        assert lease.read_blocks([i])[0][:len(b)] == b
    assert lease.read_blocks([10])[0][1000:] == bytes((1 << 20) - 1000)
    lease.release()
    store.close()


# -- pinned lease records (blockstore/recordpins.py) -----------------------------------------
def test_a_pinned_record_never_hides_a_takeover(tmp_path: Path) -> None:
    """The holder's store has the record pinned (parsed once, then trusted while stat shows
    the same file); record changes by another store object - a takeover, then more, so a
    freed inode number could come back - are each seen at the holder's next write."""
    root = tmp_path / "s"
    with FileStore(root, BS) as mine, FileStore(root) as other:
        lease = mine.acquire("a", num_blocks=2)
        lease.write_blocks({0: b"first"}, flush=True)
        assert mine._pins is not None and len(mine._pins) == 1  # the fast path is in use
        assert mine.lease_info(lease.lease_id).epoch == lease.epoch
        for _ in range(5):  # each steal replaces the record file (a new inode)
            taken = other.acquire("a", steal=True)
            with pytest.raises(StaleLeaseError):
                lease.write_blocks({0: b"zombie"}, flush=True)
            with pytest.raises(StaleLeaseError):
                lease.write_blocks({1: b"zombie"}, pad=False)
            assert mine.lease_info(lease.lease_id).epoch == taken.epoch
            lease = mine.acquire("a", steal=True)  # and back: mine pins the new record
            lease.write_blocks({0: b"first"}, flush=True)
        with pytest.raises(StaleLeaseError):
            taken.write_blocks({0: b"zombie"})
    with FileStore(root) as fresh:
        assert fresh.open_reader("a").read_blocks([0, 1]) == [b"first".ljust(BS, b"\0"),
                                                              bytes(BS)]


def test_a_record_changed_in_place_is_read_again(tmp_path: Path) -> None:
    """Out of protocol (records are only ever renamed into place), an edit in place that
    changes the size is still noticed by a store that has the record pinned."""
    root = tmp_path / "s"
    with FileStore(root, BS) as st:
        lease = st.acquire("a", num_blocks=1)
        lease.write_blocks({0: b"x"})
        record = root / "leases" / f"{lease.lease_id}.json"
        record.write_bytes(b"{not json")
        with pytest.raises(StoreCorruptError):
            lease.write_blocks({0: b"y"})


def test_records_are_not_pinned_on_a_shared_store(tmp_path: Path) -> None:
    """A shared store may sit on a network filesystem whose stat can lag another node's
    rename: every check reads the record there."""
    with FileStore(tmp_path / "s", BS, shared=True) as st:
        assert st._pins is None
        lease = st.acquire("a", num_blocks=1)
        lease.write_blocks({0: b"x"}, flush=True)
    with FileStore(tmp_path / "t", BS) as st:
        assert st._pins is not None


def test_an_unpadded_write_leaves_the_rest_of_the_block(tmp_path: Path) -> None:
    """write_blocks(pad=False): the file store writes only the buffer (a padded write zeroes
    the rest of the block); fencing and bounds are checked the same."""
    with FileStore(tmp_path / "s", BS) as st:
        lease = st.acquire("a", num_blocks=2)
        lease.write_blocks({0: b"x" * BS, 1: b"y" * BS})
        lease.write_blocks({0: b"ab", 1: b"cd"}, flush=True, pad=False)
        assert lease.read_blocks([0, 1]) == [b"ab" + b"x" * (BS - 2), b"cd" + b"y" * (BS - 2)]
        lease.write_blocks({0: b"ab"}, pad=True)
        assert lease.read_block(0) == b"ab".ljust(BS, b"\0")
        with pytest.raises(BlockIndexError):
            lease.write_blocks({2: b"z"}, pad=False)
        st.acquire("a", steal=True)
        with pytest.raises(StaleLeaseError):
            lease.write_blocks({1: b"zz"}, pad=False)
        assert st.open_reader("a").read_block(1) == b"cd" + b"y" * (BS - 2)
