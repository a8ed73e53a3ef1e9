"""A bounded cache of open file descriptors, shared by the threads of one file store.

Why: a file store reads and writes each lease's blocks through one data file, and opening
it per call costs a syscall pair; keeping every file open (one descriptor per lease ever
touched, until ``close()``) ran a process out of descriptors after a few hundred leases and
kept a deleted lease's disk space allocated. So descriptors are kept in an LRU of bounded
size, closed on eviction, release and delete.

Guarantees:

* A descriptor handed out by :meth:`FdCache.use` stays open until that ``with`` block ends,
  whatever other threads evict or discard meanwhile (entries are pinned while in use; an
  entry discarded while pinned is closed by its last user).
* Durability is not weakened by eviction: a descriptor written since its last flush is
  fsynced before it is closed, and a failure of that fsync is kept and raised by the next
  :meth:`take_error` of the key (the store's ``flush``), because a descriptor opened later
  would not see a write-back error that happened before it was opened.
* A file deleted by another process (a lease deleted elsewhere) does not stay allocated:
  its cached descriptor - which pins the file's blocks on disk while it is open - is
  noticed by its link count (``st_nlink == 0``) when it is next used (then opened again, as
  an uncached descriptor would be) and by a sweep of the idle descriptors of every cache
  of the process, every :data:`SWEEP_INTERVAL` seconds in a daemon thread, and closed. So
  the space of a lease deleted elsewhere is returned within about that interval.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["SWEEP_INTERVAL", "FdCache", "Sweepable", "unlinked", "watch"]

#: Seconds between two sweeps for descriptors of files deleted elsewhere.
SWEEP_INTERVAL = 2.0


class _Entry:
    __slots__ = ("dirty", "doomed", "fd", "pins")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pins = 0
        self.dirty = False
        self.doomed = False


class FdCache:
    """At most ``limit`` idle descriptors, opened by ``opener(key)`` on first use.

    More than ``limit`` may be open while more than ``limit`` are in use at once; the
    surplus is closed as soon as its users are done.
    """

    def __init__(self, limit: int, opener: Callable[[str], int], *,
                 swept: bool = True) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._open = opener
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._errors: dict[str, OSError] = {}
        if swept:  # False: only :meth:`sweep` and use close deleted files' descriptors
            _sweeper.watch(self)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @contextmanager
    def use(self, key: str, *, writing: bool = False, linked: bool = False) -> Iterator[int]:
        """The open descriptor of ``key`` for the duration of the block.

        ``linked``: the caller knows the file still has its name (the file store checked
        the lease's record under the lease's lock), so its link count is not looked at.
        That look is an ``fstat``, and an ``fstat`` of a file just before a write measured
        ~30-50 us more for the write and its ``fsync`` (Linux 6.18, ext4; likely multigrain
        timestamps: times queried, so the next write dirties the inode and the fsync
        commits the journal) - BENCHMARKS.md, "LangGraph checkpointer".
        """
        with self._lock:
            entry = self._entries.get(key)
            stale: list[tuple[str, _Entry]] = []
            if entry is not None and not linked and unlinked(entry.fd):  # deleted elsewhere
                stale = self._drop(key, entry)
                entry = None
            if entry is None:
                entry = _Entry(self._open(key))
                self._entries[key] = entry
            else:
                self._entries.move_to_end(key)
            entry.pins += 1
            if writing:
                entry.dirty = True
            victims = self._victims()
        self._close_all(stale + victims)
        try:
            yield entry.fd
        finally:
            with self._lock:
                entry.pins -= 1
                last = entry.doomed and entry.pins == 0
            if last:
                self._close_all([(key, entry)])

    def flushed(self, key: str) -> None:
        """Note that ``key``'s writes so far are durable (no fsync needed on eviction)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.dirty = False

    def take_error(self, key: str) -> OSError | None:
        """The failure of an fsync done on eviction of ``key``, once; ``None`` if none."""
        with self._lock:
            return self._errors.pop(key, None)

    def discard(self, key: str) -> None:
        """Close ``key``'s descriptor (now, or when its last user is done), without fsync."""
        with self._lock:
            entry = self._entries.pop(key, None)
            self._errors.pop(key, None)
            if entry is None:
                return
            entry.doomed = True
            entry.dirty = False
            now = entry.pins == 0
        if now:
            os.close(entry.fd)

    def sweep(self) -> int:
        """Close the idle descriptors whose files were deleted (by any process); returns
        how many. Those in use are closed by their last user."""
        with self._lock:
            gone: list[tuple[str, _Entry]] = []
            for key, entry in list(self._entries.items()):
                if unlinked(entry.fd):
                    gone += self._drop(key, entry)
        self._close_all(gone)
        return len(gone)

    def _drop(self, key: str, entry: _Entry) -> list[tuple[str, _Entry]]:
        """Remove a deleted file's entry (lock held); what to close now (if idle)."""
        del self._entries[key]
        entry.doomed = True
        entry.dirty = False  # its file is gone: nothing to make durable
        return [(key, entry)] if entry.pins == 0 else []

    def close(self) -> None:
        """Close every idle descriptor; those in use close when their users are done."""
        with self._lock:
            victims = list(self._entries.items())
            self._entries.clear()
            for _, e in victims:
                e.doomed = True
            idle = [(k, e) for k, e in victims if e.pins == 0]
        self._close_all(idle)

    def _victims(self) -> list[tuple[str, _Entry]]:
        """Idle entries beyond the limit, oldest first, removed from the cache (lock held)."""
        out: list[tuple[str, _Entry]] = []
        if len(self._entries) <= self.limit:
            return out
        for key in list(self._entries):
            if len(self._entries) <= self.limit:
                break
            entry = self._entries[key]
            if entry.pins == 0:
                del self._entries[key]
                entry.doomed = True
                out.append((key, entry))
        return out

    def _close_all(self, entries: list[tuple[str, _Entry]]) -> None:
        for key, entry in entries:
            try:
                if entry.dirty:
                    os.fsync(entry.fd)
            except OSError as exc:
                with self._lock:
                    self._errors[key] = exc
            finally:
                os.close(entry.fd)


def unlinked(fd: int) -> bool:
    """The open file ``fd`` no longer has a name (deleted here, or - on NFS, where a file
    deleted by another client makes our handle stale - elsewhere)."""
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError as exc:
        return exc.errno == errno.ESTALE


class Sweepable(Protocol):
    """What the sweeper sweeps: closes descriptors of deleted files, returns how many."""

    def sweep(self) -> int: ...


def watch(cache: Sweepable) -> None:
    """Sweep ``cache`` every :data:`SWEEP_INTERVAL` seconds, while it lives (held weakly)."""
    _sweeper.watch(cache)


class _Sweeper:
    """One daemon thread per process sweeping every live cache (held weakly)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: weakref.WeakSet[Sweepable] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._after_fork)

    def watch(self, cache: Sweepable) -> None:
        with self._lock:
            self._caches.add(cache)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fdcache-sweeper",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(SWEEP_INTERVAL)
            with self._lock:
                caches = list(self._caches)
            for cache in caches:
                try:
                    cache.sweep()
                except Exception:  # noqa: BLE001 - a sweep must never kill the thread
                    pass
            del caches

    def _after_fork(self) -> None:  # the thread does not survive a fork; start it again
        self._lock = threading.Lock()
        self._thread = None
        if len(self._caches):
            self._caches, old = weakref.WeakSet(), list(self._caches)
            for cache in old:
                self.watch(cache)


_sweeper = _Sweeper()
