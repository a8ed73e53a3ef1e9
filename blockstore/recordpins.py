"""Pinned lease records of the file store: "is the record still the one I parsed?" by a stat.

Why: the file store checks the lease record (its epoch) under the lease's shared lock on
every write and flush, and the LangGraph saver reads it before answering from memory. A
read and parse costs ~18 us here; a ``stat`` ~3 us. The record file is never changed in
place: every change writes a new file and renames it over the old one
(``blockstore/fileio.py`` ``atomic_write_json``; ``docs/FORMAT.md`` 1). So the bytes under
one inode never change once the inode is the record, and "same inode as the file I parsed"
means "same record".

Exactness: an inode number identifies a file only while the file exists - once freed, a
later record may get the same number. So the reader keeps the descriptor it read the
record through open (the *pin*): the pinned inode cannot be freed, so no other file of the
filesystem can have its number, and ``stat(path)`` showing the pinned ``(st_dev,
st_ino)`` proves the path still names the very file that was parsed. Size, ``st_mtime_ns``
and ``st_ctime_ns`` are compared too, so an out-of-protocol edit in place (an operator's
tool, damage) is noticed whenever it changes one of them. Any difference means a full read.

Where it is used: only on local filesystems (:func:`local_filesystem`: the kernel's own
dentry cache is coherent, so ``stat`` sees another process's rename at once) and never on
a store declared ``shared`` - a network filesystem may answer ``stat`` from an attribute
cache that does not yet show another node's rename, and fencing would trust a stale epoch.
There every check reads the record, as before.

Bounded: at most ``limit`` pins (an LRU); a pin is dropped when the record is gone, when it
is replaced (by this store, or - noticed at the next read - by another process) and on
close; the process's descriptor sweeper (``blockstore/fdcache.py``) also closes, every few
seconds, pins whose file lost its name (a lease deleted or taken over elsewhere), so a
pin never keeps a deleted file open for long.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

from .fdcache import unlinked, watch

__all__ = ["LOCAL_FILESYSTEMS", "RecordPins", "local_filesystem"]

T = TypeVar("T")

#: Filesystem types (``/proc/self/mountinfo``) whose ``stat`` after another process's
#: ``rename`` always shows the new file: local ones.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs",
                               "f2fs", "zfs", "bcachefs", "overlay"})


def signature(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What must be unchanged for a pinned record to be the file at its path."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unescape(field: str) -> str:
    """A mountinfo path field (spaces and the like are octal escapes)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def local_filesystem(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` lies on a filesystem of :data:`LOCAL_FILESYSTEMS` (Linux; False
    wherever that cannot be told, so callers fall back to full reads)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        real = os.path.realpath(path)
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    best, fstype = -1, None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount = _unescape(fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:  # the last, longest match is the mount in effect
            best, fstype = len(mount), right.split()[0]
        elif inside and len(mount) == best:
            fstype = right.split()[0]
    return fstype in LOCAL_FILESYSTEMS


class RecordPins(Generic[T]):
    """The parsed records of some leases, each with the descriptor it was read through.

    Guarantees: :meth:`get` returns a value only if ``stat`` of the record's path (taken by
    the caller) shows the pinned file, unchanged (module docstring); then the path holds the
    bytes that value was parsed from. Thread-safe.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[int, tuple[int, ...], T]] = OrderedDict()
        watch(self)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: str, st: os.stat_result) -> T | None:
        """The value pinned for ``key`` if ``st`` (of its path, just taken) is its file."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[1] != signature(st):
                return None
            self._entries.move_to_end(key)
            return entry[2]

    def put(self, key: str, fd: int, st: os.stat_result, value: T) -> None:
        """Keep ``value``, parsed from the file open as ``fd`` (whose ``fstat`` is ``st``,
        taken before the read); the pins own ``fd`` from now on."""
        closing: list[int] = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                closing.append(old[0])
            self._entries[key] = (fd, signature(st), value)
            while len(self._entries) > self.limit:
                closing.append(self._entries.popitem(last=False)[1][0])
        for old_fd in closing:
            os.close(old_fd)

    def discard(self, key: str) -> None:
        """Forget ``key`` (its record is gone or about to be)."""
        with self._lock:
            old = self._entries.pop(key, None)
        if old is not None:
            os.close(old[0])

    def sweep(self) -> int:
        """Close the pins whose file lost its name (replaced or deleted); how many."""
        with self._lock:
            gone = [k for k, (fd, _, _) in self._entries.items() if unlinked(fd)]
            fds = [self._entries.pop(k)[0] for k in gone]
        for fd in fds:
            os.close(fd)
        return len(fds)

    def close(self) -> None:
        """Close every pin; the pins stay usable (they fill again)."""
        with self._lock:
            entries, self._entries = self._entries, OrderedDict()
        for fd, _, _ in entries.values():
            os.close(fd)
