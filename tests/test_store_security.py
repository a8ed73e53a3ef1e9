"""Security defaults of the file store, the clock margin, discarding blocks and ``gc``.

* Files 0600, directories 0700 even under a permissive umask (checked in a subprocess, so
  the umask of the test process is never changed).
* ``shared`` is recorded in the store's metadata and declared in ``capabilities``.
* A lease that expired less than ``clock_margin`` ago is not taken over (without steal).
* ``Lease.discard_blocks`` zeroes blocks and frees their disk space (holes).
* ``gc`` removes what a crash inside ``delete_lease`` leaves (a real process killed between
  the record's unlink and the data file's) and nothing a live lease uses.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from blockstore import (
    FileStore,
    LeaseHeldError,
    MemoryStore,
    StaleLeaseError,
    StoreConfigError,
    open_store,
)
from blockstore.fencing import check_free, next_acquire

BS = 4096
ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, *, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    prefix = f"import os; os.umask({umask:#o})\n" if umask is not None else ""
    return subprocess.run([sys.executable, "-c", prefix + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)


def _modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return out


# -- permissions -----------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_store_files_are_private_under_a_permissive_umask(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "store"
    _run(f"""
        from blockstore import open_store
        with open_store({str(root)!r}, block_size={BS}) as st:
            with st.acquire("a", num_blocks=2) as lease:
                lease.write_blocks({{0: b"x", 1: b"y"}})
                lease.flush()
                lease.resize(3)
            with st.acquire("b", num_blocks=1):
                pass
    """, umask=umask)
    modes = _modes(root)
    assert len(modes) == 4 + 6  # root, meta, store.lock, leases/; 2 x (json, lock, dat)
    for path, mode in modes.items():
        is_dir = (root / path).is_dir()
        assert mode == (0o700 if is_dir else 0o600), (path, oct(mode))


def test_a_stricter_umask_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _run(f"""
        from blockstore import open_store
        with open_store({str(root)!r}, block_size={BS}) as st:
            with st.acquire("a", num_blocks=1) as lease:
                lease.write_block(0, b"x")
    """, umask=0o077 | 0o040)
    for path, mode in _modes(root).items():
        assert mode & 0o077 == 0, (path, oct(mode))


def test_an_existing_empty_directory_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    FileStore(root, BS).close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


# -- shared -----------------------------------------------------------------------------------
def test_shared_is_recorded_at_creation_and_declared(tmp_path: Path) -> None:
    with open_store(tmp_path / "s", block_size=BS, shared=True) as st:
        assert st.capabilities.shared and st.capabilities.cross_process
    meta = json.loads((tmp_path / "s" / "blockpoint-store.json").read_bytes())
    assert meta["shared"] is True
    with open_store(tmp_path / "s") as st:  # reopened without saying: the recorded value
        assert st.capabilities.shared
    with pytest.raises(StoreConfigError, match="shared"):
        open_store(tmp_path / "s", shared=False)
    with open_store(tmp_path / "p", block_size=BS) as st:
        assert not st.capabilities.shared
    assert not FileStore.capabilities.shared and not MemoryStore.capabilities.shared
    with pytest.raises(StoreConfigError):
        open_store("memory://never-shared", shared=True)


def test_a_store_without_the_shared_field_is_not_shared(tmp_path: Path) -> None:
    FileStore(tmp_path / "s", BS).close()
    meta_path = tmp_path / "s" / "blockpoint-store.json"
    meta = json.loads(meta_path.read_bytes())
    del meta["shared"]  # as written before the field existed
    meta_path.write_text(json.dumps(meta))
    with FileStore(tmp_path / "s") as st:
        assert not st.capabilities.shared


# -- clock margin -----------------------------------------------------------------------------
def test_takeover_waits_for_the_margin_pure() -> None:
    held = next_acquire(None, lease_id="0" * 32, name="s", holder="a", ttl=10, num_blocks=0,
                        steal=False, block_size=BS, now=1000.0)
    kw = {"lease_id": "1" * 32, "name": "s", "holder": "b", "ttl": 10, "num_blocks": 0,
          "block_size": BS, "margin": 2.0}
    for now in (1005.0, 1010.0, 1011.9):  # held, just expired, expired within the margin
        with pytest.raises(LeaseHeldError):
            next_acquire(held, steal=False, now=now, **kw)
    assert next_acquire(held, steal=False, now=1012.0, **kw).epoch == 2
    assert next_acquire(held, steal=True, now=1005.0, **kw).epoch == 2  # steal: no wait
    with pytest.raises(LeaseHeldError, match="clock margin"):
        check_free(held, now=1011.0, margin=2.0)


@pytest.mark.parametrize("backend", ["file", "memory"])
def test_takeover_of_an_expired_lease_waits_for_the_margin(tmp_path: Path,
                                                            backend: str) -> None:
    # Long enough that the two refusals inside the margin never race its end, however
    # loaded the machine (its end is tested without a clock in the _pure test, and with
    # one below).
    margin = 60.0
    st = (FileStore(tmp_path / "s", BS, clock_margin=margin) if backend == "file"
          else MemoryStore(BS, clock_margin=margin))
    with st:
        first = st.acquire("s", holder="a", ttl=0.05)
        while time.time() <= first.acquired_info.expires_at:
            time.sleep(0.01)
        with pytest.raises(LeaseHeldError, match="clock margin"):
            st.acquire("s", holder="b")
        with pytest.raises(LeaseHeldError):
            st.delete_lease("s")
        assert st.lease_info("s").epoch == 1


@pytest.mark.parametrize("backend", ["file", "memory"])
def test_takeover_of_an_expired_lease_after_the_margin(tmp_path: Path, backend: str) -> None:
    # Only the wait for the margin's end is timed (a condition); nothing races it.
    margin = 0.5
    st = (FileStore(tmp_path / "s", BS, clock_margin=margin) if backend == "file"
          else MemoryStore(BS, clock_margin=margin))
    with st:
        first = st.acquire("s", holder="a", ttl=0.05)
        while time.time() <= first.acquired_info.expires_at + margin:
            time.sleep(0.02)
        second = st.acquire("s", holder="b")
        assert second.epoch == 2
        with pytest.raises(StaleLeaseError):
            first.write_block(0, b"late")


def test_clock_margin_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CLOCK_MARGIN", raising=False)
    assert MemoryStore(BS).clock_margin == 2.0  # the default
    monkeypatch.setenv("BLOCKPOINT_CLOCK_MARGIN", "5.5")
    assert MemoryStore(BS).clock_margin == 5.5
    assert MemoryStore(BS, clock_margin=0).clock_margin == 0.0
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            MemoryStore(BS, clock_margin=bad)
    monkeypatch.setenv("BLOCKPOINT_CLOCK_MARGIN", "soon")
    with pytest.raises(ValueError, match="BLOCKPOINT_CLOCK_MARGIN"):
        MemoryStore(BS)


# -- discard ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["file", "memory"])
def test_discarded_blocks_read_as_zeros(tmp_path: Path, backend: str) -> None:
    st = FileStore(tmp_path / "s", BS) if backend == "file" else MemoryStore(BS)
    with st, st.acquire("s", num_blocks=64) as lease:
        lease.write_blocks({i: bytes([i + 1]) * BS for i in range(64)})
        lease.flush()
        lease.discard_blocks([3, 4, 5, 10, 63])
        lease.flush()
        for i in range(64):
            want = bytes(BS) if i in (3, 4, 5, 10, 63) else bytes([i + 1]) * BS
            assert lease.read_block(i) == want, i
        with pytest.raises(Exception):
            lease.discard_blocks([64])  # beyond the lease: refused
        st.acquire("s", steal=True)
        with pytest.raises(StaleLeaseError):  # fenced like a write
            lease.discard_blocks([0])
        assert lease.read_block(0) == b"\x01" * BS


def test_discard_frees_disk_space(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as st, st.acquire("s", num_blocks=256) as lease:
        lease.write_blocks({i: b"\xff" * BS for i in range(256)})
        lease.flush()
        dat = tmp_path / "s" / "leases" / f"{lease.lease_id}.dat"
        before = dat.stat().st_blocks
        lease.discard_blocks(range(0, 256, 2))
        lease.discard_blocks(range(129, 256, 2))
        lease.flush()
        after = dat.stat().st_blocks
        assert dat.stat().st_size == 256 * BS  # holes keep the size
        assert after <= before * 0.3, (before, after)  # ~ a quarter is left on disk
        assert dat.read_bytes()[:BS] == bytes(BS) and lease.read_block(1) == b"\xff" * BS


def test_discard_for_reuse_zeroes_in_place(tmp_path: Path) -> None:
    """``reuse=True`` (a checkpoint's dropped blocks, written again soon): the old bytes are
    gone from the file as with a hole, the space stays allocated where the filesystem can
    zero in place (``fallocate(ZERO_RANGE)``), and the blocks take writes again."""
    from blockstore.fileio import zero_in_place

    with FileStore(tmp_path / "s", BS) as st, st.acquire("s", num_blocks=64) as lease:
        lease.write_blocks({i: bytes([i + 1]) * BS for i in range(64)})
        lease.flush()
        dat = tmp_path / "s" / "leases" / f"{lease.lease_id}.dat"
        before = dat.stat().st_blocks
        lease.discard_blocks(range(0, 64, 2), reuse=True)
        lease.flush()
        raw = dat.read_bytes()
        for i in range(64):
            want = bytes(BS) if i % 2 == 0 else bytes([i + 1]) * BS
            assert raw[i * BS:(i + 1) * BS] == want, i
            assert lease.read_block(i) == want, i
        with open(tmp_path / "probe", "wb") as f:
            f.write(b"x" * 8192)
            f.flush()
            can = zero_in_place(f.fileno(), 0, 4096)
        if can:  # the space is kept: only the contents went
            assert dat.stat().st_blocks >= before, (before, dat.stat().st_blocks)
        else:  # a filesystem that cannot: punched (space freed) or zeros written
            assert dat.stat().st_blocks <= before
        lease.write_blocks({0: b"\x07" * BS})
        assert lease.read_block(0) == b"\x07" * BS
        st.acquire("s", steal=True)
        with pytest.raises(StaleLeaseError):  # fenced like a write
            lease.discard_blocks([1], reuse=True)
        assert lease.read_block(1) == b"\x02" * BS


# -- gc ---------------------------------------------------------------------------------------
def _crash_inside_delete(root: Path, name: str) -> None:
    """A real process that dies (SIGKILL-like ``os._exit``) right after ``delete_lease``
    removed the lease's record, before the data and lock files go - where a crash leaves
    orphans."""
    _run(f"""
        import os, pathlib
        from blockstore import open_store
        real_unlink = pathlib.Path.unlink
        def unlink(self, *a, **kw):
            real_unlink(self, *a, **kw)
            if self.name.endswith(".json"):
                os._exit(0)
        pathlib.Path.unlink = unlink
        st = open_store({str(root)!r})
        st.delete_lease({name!r})
        raise SystemExit("not reached")
    """)


def test_gc_removes_the_orphans_of_a_crash_inside_delete_lease(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with FileStore(root, BS) as st:
        for name in ("doomed", "live", "released"):
            lease = st.acquire(name, num_blocks=4)
            lease.write_blocks({i: name.encode() * 100 for i in range(4)})
            lease.flush()
            if name != "live":
                lease.release()
        doomed = st.lease_info("doomed").lease_id
        live = {i.lease_id for i in st.list_leases() if i.name != "doomed"}
    _crash_inside_delete(root, "doomed")
    leases = root / "leases"
    assert not (leases / f"{doomed}.json").exists()
    assert (leases / f"{doomed}.dat").exists() and (leases / f"{doomed}.lock").exists()
    # A temporary record of a write that died, old enough, and one that may be in progress.
    old_tmp = leases / f".{next(iter(live))}.json.999999.1.tmp"
    old_tmp.write_text("{}")
    os.utime(old_tmp, (time.time() - 3600, time.time() - 3600))
    young_tmp = leases / f".{next(iter(live))}.json.999999.2.tmp"
    young_tmp.write_text("{}")
    before = sorted(p.name for p in leases.iterdir())

    with FileStore(root) as st:
        dry = st.gc(dry_run=True)
        assert sorted(p.name for p in leases.iterdir()) == before  # a dry run removes nothing
        report = st.gc()
        assert {(Path(i.path).name, i.kind) for i in report.removed} == {
            (f"{doomed}.dat", "orphan data"), (f"{doomed}.lock", "orphan lock"),
            (old_tmp.name, "temporary")}
        assert [i.path for i in dry.removed] == [i.path for i in report.removed]
        assert report.live_leases == 2 and report.bytes_freed >= 4 * BS
        left = sorted(p.name for p in leases.iterdir())
        assert left == sorted(set(before) - {f"{doomed}.dat", f"{doomed}.lock", old_tmp.name})
        assert young_tmp.exists()
        # The live leases are untouched and usable.
        assert {i.name for i in st.list_leases()} == {"live", "released"}
        for name in ("live", "released"):
            assert st.open_reader(name).read_block(3)[:len(name)] == name.encode()
        st.acquire("live", steal=True).write_block(0, b"after gc")
        assert st.gc().removed == ()  # nothing left to collect


def test_gc_on_a_memory_store_has_nothing_to_collect() -> None:
    st = MemoryStore(BS)
    st.acquire("a")
    report = st.gc()
    assert report.removed == () and report.live_leases == 1
