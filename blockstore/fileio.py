"""Low-level file I/O of the file backend: full writes, atomic replacement, holes.

Why a module of its own: ``blockstore/file.py`` holds the store's protocol (locks, records,
fencing); the syscall loops here are the parts that must be exactly right once - a short
``write``/``pwritev`` is continued, a record is replaced only after its bytes are durable,
and a discarded block really stops holding its old bytes.

Modes: every file is created ``0600`` and every directory ``0700`` (:data:`FILE_MODE`,
:data:`DIR_MODE`); the process umask still applies on top, so it can only make them
stricter. A store holds other stages' state and keys' work; nobody else on the machine
needs to read it.

Write-behind: :func:`start_writeback` asks the kernel (``sync_file_range(...,
SYNC_FILE_RANGE_WRITE)`` through ctypes, Linux) to start writing a range that was just
written, without waiting for it. A checkpoint writes hundreds of MiB and then fsyncs; started
early, the disk works while later blocks are still being copied, and the fsync only waits for
the tail (``bench/notes/sync.md``: 0.67x the time of write-everything-then-fsync for 256
MiB here). It is a hint: it orders nothing and makes nothing durable - ``fsync`` still does
both, and reports any write-back error - so a failure of the hint is ignored.

Holes: :func:`zero_range` punches a hole (``fallocate(FALLOC_FL_PUNCH_HOLE |
FALLOC_FL_KEEP_SIZE)`` through ctypes, Linux) so the range reads as zeros and its disk
space is freed; where that is not supported it writes zeros instead. With ``keep_space``
(blocks about to be written again: a checkpoint's free blocks) it first zeroes the range in
place (``FALLOC_FL_ZERO_RANGE``: the extents stay allocated, marked unwritten), ~9x cheaper
than a punch here and cheaper for the write that reuses the blocks (no new allocation).
Either way the old bytes are gone from the file once it returns (durable after ``fsync``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from .canonical import canonical_json

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "atomic_write_json",
    "fsync_dir",
    "pwritev_all",
    "runs",
    "start_writeback",
    "write_all",
    "zero_in_place",
    "zero_range",
]

FILE_MODE = 0o600
DIR_MODE = 0o700
IOV_MAX = 512
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
_ZERO_CHUNK = 1 << 20


def _load_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()
_punch_unsupported = False
_zero_unsupported: set[int] = set()  # devices (st_dev) whose filesystem cannot zero in place
_SYNC_FILE_RANGE_WRITE = 0x02


def _load_sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - not glibc/Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
#: Writes smaller than this are left to the kernel's own write-back (a hint per small write
#: would only split the I/O the final fsync can merge).
WRITEBACK_MIN = 1 << 20


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing ``[offset, offset + length)`` of ``fd`` to disk, without waiting.

    Returns whether the hint was given (False: too small, unsupported, or refused - all
    harmless, ``fsync`` does the work then). Never raises. The ctypes call releases the GIL.
    """
    global _sync_file_range
    if _sync_file_range is None or length < WRITEBACK_MIN:
        return False
    if _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE):
        _sync_file_range = None  # this system never will: stop asking
    return False


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Punch a hole over ``[offset, offset + length)``; False if the system cannot."""
    global _punch_unsupported
    if _fallocate is None or _punch_unsupported or length <= 0:
        return length <= 0
    rc = _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        _punch_unsupported = True  # this filesystem (or kernel) never will: stop asking
        return False
    raise OSError(err, f"fallocate(PUNCH_HOLE) failed: {os.strerror(err)}")


def zero_in_place(fd: int, offset: int, length: int) -> bool:
    """Zero ``[offset, offset + length)`` keeping its space allocated; False if the
    filesystem cannot (tmpfs, for one: then remembered for its device)."""
    if _fallocate is None or length <= 0:
        return length <= 0
    dev = os.fstat(fd).st_dev
    if dev in _zero_unsupported:
        return False
    rc = _fallocate(fd, _FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE, offset, length)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        _zero_unsupported.add(dev)
        return False
    raise OSError(err, f"fallocate(ZERO_RANGE) failed: {os.strerror(err)}")


def zero_range(fd: int, offset: int, length: int, *, keep_space: bool = False) -> None:
    """Make ``[offset, offset + length)`` of ``fd`` read as zeros: zeroed in place when
    ``keep_space`` and the filesystem can, else a hole (space freed), else zeros written."""
    if keep_space and zero_in_place(fd, offset, length):
        return
    if punch_hole(fd, offset, length):
        return
    zeros = memoryview(bytes(min(length, _ZERO_CHUNK)))
    end = offset + length
    while offset < end:
        n = min(len(zeros), end - offset)
        pwritev_all(fd, [zeros[:n]], offset)
        offset += n


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (the kernel may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a regular file returns an error instead
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[n:]


def atomic_write_json(path: Path, obj: object) -> None:
    """Replace ``path`` by ``obj`` as JSON: temporary file, fsync, rename, fsync the directory.

    A failure at any step (a short write included) leaves the old file in place and no
    temporary file behind. The temporary file is ``.<name>.<pid>.<thread>.tmp`` (what
    ``FileStore.gc`` recognises as one).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = canonical_json(obj)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def runs(indices: Sequence[int], datas: Sequence[memoryview], bs: int,
         pad: bool = True) -> Iterator[tuple[int, list[memoryview]]]:
    """Group writes into runs of consecutive blocks, padding short blocks with zeros (without
    ``pad``: a short block ends its run, and the rest of that block is not written)."""
    order = sorted(range(len(indices)), key=indices.__getitem__)
    zeros = memoryview(bytes(bs)) if pad else memoryview(b"")
    start = -1
    prev = -2
    bufs: list[memoryview] = []
    for k in order:
        i = indices[k]
        if i != prev + 1 or len(bufs) >= IOV_MAX:
            if bufs:
                yield start, bufs
            start, bufs = i, []
        d = datas[k]
        bufs.append(d)
        if len(d) < bs:
            if pad:
                bufs.append(zeros[: bs - len(d)])
            else:  # the next block's bytes do not follow these
                yield start, bufs
                start, bufs, i = -1, [], -2
        prev = i
    if bufs:
        yield start, bufs


def index_runs(indices: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``(first, count)`` of each run of consecutive values in sorted ``indices``."""
    start = prev = None
    for i in indices:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            yield start, prev - start + 1  # type: ignore[operator]
        start = prev = i
    if start is not None:
        yield start, prev - start + 1  # type: ignore[operator]


def pwritev_all(fd: int, bufs: list[memoryview], offset: int) -> None:
    """pwritev until every byte is written (the kernel may write less than asked)."""
    bufs = [b for b in bufs if len(b)]
    k = 0
    while k < len(bufs):
        n = os.pwritev(fd, bufs[k:k + IOV_MAX], offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += n
        while k < len(bufs) and n >= len(bufs[k]):
            n -= len(bufs[k])
            k += 1
        if n:
            bufs[k] = bufs[k][n:]
