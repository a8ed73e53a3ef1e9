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
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["FdCache"]


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

    def __init__(self, limit: int, opener: Callable[[str], int]) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._open = opener
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._errors: dict[str, OSError] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @contextmanager
    def use(self, key: str, *, writing: bool = False) -> Iterator[int]:
        """The open descriptor of ``key`` for the duration of the block."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry(self._open(key))
                self._entries[key] = entry
            else:
                self._entries.move_to_end(key)
            entry.pins += 1
            if writing:
                entry.dirty = True
            victims = self._victims()
        self._close_all(victims)
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
