"""Regression tests of store defects a review reproduced (issue 9: 9.3, 9.5, 9.7, 9.10, 9.11).

Each one failed before its fix. Real files and real processes: a subprocess under a lowered
``RLIMIT_FSIZE`` (short writes) or ``RLIMIT_NOFILE`` (descriptor leak), a writer stopped
with SIGSTOP while it holds a lease's lock; transient renewal errors come from
``blockstore.faults.FaultyStore``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import blockstore
from blockstore import BlockStoreError, FileStore, MemoryStore, StoreCorruptError
from blockstore.faults import FaultyStore
from polling import thread_inside, wait_for

ROOT = str(Path(__file__).resolve().parents[1])


def _run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# -- 9.11 names --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["row\nforged", "esc\x1b[31mred", "tab\there", "del\x7f",
                                  "c1\x85", "ls\u2028x", "nul\x00"])
def test_control_characters_in_names_are_refused(tmp_path: Path, name: str) -> None:
    for store in (FileStore(tmp_path / "s", 4096), MemoryStore(4096)):
        with store:
            with pytest.raises(ValueError) as err:
                store.acquire(name)
            assert isinstance(err.value, BlockStoreError)
            assert type(err.value).__name__ == "LeaseNameError"
            assert "character U+" in str(err.value)
            with pytest.raises(ValueError):
                store.acquire("fine", holder=f"holder{name}")
            assert store.list_leases() == []
            store.acquire("fine name ünïcode").release()  # ordinary text is a name


# -- 9.10 short writes -------------------------------------------------------------------------
_SHORT_WRITER = """
    import resource, signal, sys
    from blockstore import FileStore, BlockStoreError
    store = FileStore(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.RLIM_INFINITY))
    try:
        store.acquire(sys.argv[2], steal=True)
        print("acquired")
    except BlockStoreError as exc:
        print("refused", type(exc).__name__)
"""


def test_short_write_of_a_record_never_corrupts_it(tmp_path: Path) -> None:
    name = "n" * 300  # the record is > 200 bytes: the kernel writes it short
    with FileStore(tmp_path / "s", 4096) as store:
        before = store.acquire(name, ttl=60).info()
    out = _run(_SHORT_WRITER, str(tmp_path / "s"), name)
    assert out.returncode == 0, out.stderr
    with FileStore(tmp_path / "s") as store:
        try:
            after = store.lease_info(name)
        except StoreCorruptError as exc:
            pytest.fail(f"a short write corrupted the lease record: {exc}")
        assert out.stdout.split() == ["refused", "StorageIOError"], out.stdout
        assert after == before  # the takeover did not happen; the record is the old one
        assert not [p for p in (tmp_path / "s" / "leases").iterdir() if p.suffix == ".tmp"]


# -- 9.5 file descriptors ----------------------------------------------------------------------
_MANY_LEASES = """
    import os, resource, sys
    from blockstore import FileStore
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    def fds():
        return len(os.listdir("/proc/self/fd"))
    base = fds()
    store = FileStore(sys.argv[1], 4096)
    leases = [store.acquire(f"l{i:03d}", num_blocks=2) for i in range(300)]
    for i, lease in enumerate(leases):
        lease.write_blocks({0: b"%d" % i})
        lease.flush()
    for i, lease in enumerate(leases):
        assert lease.read_block(0).rstrip(b"\\0") == b"%d" % i
    held = fds() - base
    for lease in leases[:150]:
        lease.release()
    for lease in leases[150:]:
        store.delete_lease(lease.name, lease=lease)
    links = []
    for f in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{f}"))
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    deleted = [p for p in links if p.endswith("(deleted)")]
    print(held, fds() - base, len(deleted))
"""


def test_file_descriptors_are_bounded_and_closed(tmp_path: Path) -> None:
    out = _run(_MANY_LEASES, str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr[-3000:]
    held, after, deleted = map(int, out.stdout.split())
    assert held <= 80, f"{held} descriptors open for 300 leases"
    assert after <= 2 and deleted == 0, out.stdout


# -- 9.3 a frozen writer -----------------------------------------------------------------------
_WRITER = """
    import sys
    from blockstore import FileStore
    store = FileStore(sys.argv[1])
    lease = store.acquire("hot", ttl=600, num_blocks=32)
    data = {i: bytes([i]) * store.block_size for i in range(32)}
    print("writing", flush=True)
    while True:
        lease.write_blocks(data)
"""


def _lock_is_taken(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc
        box["took"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_a_frozen_writer_stalls_neither_the_store_nor_a_takeover_forever(
        tmp_path: Path) -> None:
    root = tmp_path / "s"
    FileStore(root, 64 * 1024).close()
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), str(root)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        store = FileStore(root)
        store.lock_timeout = 60.0  # only a bound: lease_info while the writer hammers
        lock = root / "leases" / f"{store.lease_info('hot').lease_id}.lock"
        for _ in range(500):  # stop the writer while it holds the lease's lock
            os.kill(writer.pid, signal.SIGSTOP)
            time.sleep(0.01)
            if _lock_is_taken(lock):
                break
            os.kill(writer.pid, signal.SIGCONT)
            time.sleep(0.003)
        else:
            pytest.fail("never caught the writer holding its lock")
        # (a) A takeover waiting for the frozen writer's lock stalls nothing else. Its bound
        # is long, so "the unrelated acquire finished while the takeover still waited"
        # never depends on the machine's load.
        store.lock_timeout = 120.0
        takeover, took_over = _in_thread(lambda: store.acquire("hot", steal=True))
        wait_for(lambda: thread_inside(takeover, "lock_within"),
                 what="the takeover waiting for the frozen writer's lock")
        other, got_other = _in_thread(lambda: store.acquire("unrelated"))
        other.join(60.0)
        assert "result" in got_other, f"an unrelated acquire stalled: {got_other}"
        assert takeover.is_alive(), \
            "the unrelated acquire only finished once the takeover gave up on the lock"
        # (b) A takeover does not wait forever for a frozen writer: with a short bound and
        # nothing racing it, it gives up with LockTimeoutError and changes nothing.
        bounded = FileStore(root)
        bounded.lock_timeout = 1.0
        with pytest.raises(TimeoutError) as gave_up:
            bounded.acquire("hot", steal=True)
        err = gave_up.value
        assert isinstance(err, BlockStoreError)
        assert type(err).__name__ == "LockTimeoutError" and "hot" in str(err)
        assert bounded.lease_info("hot").epoch == 1  # nothing changed
        bounded.close()
    finally:
        writer.kill()
        writer.wait(timeout=30)
    # The writer is gone (its flock with it): the waiting takeover goes through.
    takeover.join(120.0)
    assert not takeover.is_alive(), "the takeover still waits after the writer died"
    assert "result" in took_over, took_over
    assert took_over["result"].epoch == 2
    store.close()


# -- 9.7 keepalive -----------------------------------------------------------------------------
def test_keepalive_survives_transient_storage_errors() -> None:
    faulty = FaultyStore(MemoryStore(4096))
    # A TTL long enough that a stalled keepalive never lets it lapse before the write; the
    # failures are injected by count, so nothing else depends on it.
    lease = faulty.acquire("k", ttl=6.0, keepalive=True, num_blocks=1)
    faulty.fail_renewals(4)  # a few renewals in a row fail with StorageIOError
    wait_for(lambda: faulty.failed_renewals == 4, what="four failed renewals")
    failed_at = time.time()
    # Renewed after the failures (a keepalive that gave up never renews again).
    wait_for(lambda: lease.info().expires_at > failed_at + lease.ttl / 2,
             what="keepalive renewing again after the transient errors")
    assert faulty.failed_renewals == 4
    lease.write_block(0, b"still mine")
    other = faulty.acquire("k", steal=True)  # a lease error does stop it
    wait_for(lambda: lease._keeper is not None and not lease._keeper.is_alive(),
             what="keepalive stopped by the takeover")
    other.release()


def test_public_names_of_the_fixes() -> None:
    for name in ("LeaseNameError", "LockTimeoutError"):
        assert name in blockstore.__all__ and issubclass(getattr(blockstore, name),
                                                         BlockStoreError)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_delete_with_a_handle_on_a_deleted_and_recreated_lease(tmp_path: Path,
                                                               kind: str) -> None:
    """Sim seeds 1408/1999: ``delete_lease(name, lease=h)`` after h's lease was deleted (by
    its taker) and a new lease created under the name raised a plain ValueError, which no
    caller catching BlockStoreError expects. It is LeaseMismatchError (a LeaseNotFoundError,
    still a ValueError) naming both ids, and the new lease stays."""
    store = MemoryStore(4096) if kind == "memory" else FileStore(tmp_path / "s", 4096)
    h1 = store.acquire("x", num_blocks=1)
    h2 = store.acquire("x", steal=True)
    store.delete_lease("x", lease=h2)
    h3 = store.acquire("x", num_blocks=1)
    with pytest.raises(blockstore.LeaseMismatchError) as err:
        store.delete_lease("x", lease=h1)
    assert isinstance(err.value, blockstore.LeaseNotFoundError)
    assert isinstance(err.value, ValueError)
    assert err.value.lease_id == h3.lease_id and err.value.handle_lease_id == h1.lease_id
    assert store.lease_info("x").lease_id == h3.lease_id
    store.close()
