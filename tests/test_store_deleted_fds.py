"""A lease deleted by another process does not stay allocated here (issue 18).

The file store caches descriptors of data files (``blockstore/fdcache.py``); an open
descriptor pins its file's blocks on disk after the file is deleted. Two real processes:
this one reads a lease (its descriptor is cached), a child process deletes the lease, and
this process's ``/proc/self/fd`` must lose its "(deleted)" entry for the store - by the
periodic sweep, with no further use of the store, and on the next use of a cached
descriptor whose file was deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockstore import FileStore
from blockstore.fdcache import FdCache
from polling import wait_for

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")

REPO = Path(__file__).resolve().parent.parent
DELETE = """
import sys
from blockstore import FileStore
with FileStore(sys.argv[1]) as st:
    for name in sys.argv[2:]:
        st.delete_lease(name)
print("deleted", flush=True)
"""


def _deleted_fds(root: Path) -> list[str]:
    """This process's descriptors of deleted files under ``root``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(str(root)) and target.endswith(" (deleted)"):
            out.append(target)
    return out


def _delete_elsewhere(root: Path, *names: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", DELETE, str(root), *names], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "deleted" in done.stdout, done.stderr


def _make(st: FileStore, name: str) -> None:
    with st.acquire(name, num_blocks=4, ttl=30.0) as lease:
        lease.write_block(0, b"x" * st.block_size)
        lease.flush()
    reader = st.open_reader(name)
    assert bytes(reader.read_block(0)) == b"x" * st.block_size  # its descriptor is cached


def test_deleted_elsewhere_is_closed_by_the_sweep(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with FileStore(str(root), 4096) as st:
        _make(st, "a")
        _make(st, "b")
        assert _deleted_fds(root) == []
        _delete_elsewhere(root, "a")
        wait_for(lambda: _deleted_fds(root) == [], timeout=60,
                 what="the deleted lease's descriptor closed")
        assert bytes(st.open_reader("b").read_block(0)) == b"x" * st.block_size  # kept


def test_deleted_file_is_noticed_on_use(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    cache = FdCache(8, lambda key: os.open(tmp_path / key, os.O_RDWR | os.O_CREAT, 0o600),
                    swept=False)  # no background sweep: this test decides when
    try:
        with cache.use("f") as fd:
            first = os.fstat(fd).st_ino
        os.unlink(path)  # as another process deleting and re-creating it would
        path.write_bytes(b"new")
        with cache.use("f") as fd:
            assert os.fstat(fd).st_ino != first and os.pread(fd, 3, 0) == b"new"
        assert _deleted_fds(tmp_path) == []
    finally:
        cache.close()


def test_sweep_closes_only_deleted_idle_descriptors(tmp_path: Path) -> None:
    for name in ("keep", "gone"):
        (tmp_path / name).write_bytes(b"x")
    cache = FdCache(8, lambda key: os.open(tmp_path / key, os.O_RDWR, 0o600),
                    swept=False)  # no background sweep: this test decides when
    try:
        for name in ("keep", "gone"):
            with cache.use(name):
                pass
        os.unlink(tmp_path / "gone")
        assert len(cache) == 2 and len(_deleted_fds(tmp_path)) == 1
        assert cache.sweep() == 1 and len(cache) == 1
        assert cache.sweep() == 0
        assert _deleted_fds(tmp_path) == []
    finally:
        cache.close()
