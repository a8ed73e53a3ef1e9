"""File backend: a store in a directory, the embedded default.

Layout (``docs/FORMAT.md`` has the details)::

    <root>/blockpoint-store.json     {"format": "blockpoint-store", "version": 1, "block_size": N}
    <root>/store.lock                flock: exclusive while a lease is found by name or created
    <root>/leases/<id>.json          the lease record, replaced atomically
    <root>/leases/<id>.lock          flock: shared by writers, exclusive by record changes
    <root>/leases/<id>.dat           the blocks: block i at byte offset i * block_size

Why this shape: fencing must hold across processes (and nodes on a shared filesystem with
working ``flock``, e.g. NFSv4), so the check of the epoch and the ``pwrite`` happen under a
shared ``flock`` on the lease's lock file, and every change of the record (takeover, renew,
release, resize) happens under the exclusive lock. A takeover therefore waits for writes
already checked, and every write checked after it sees the new epoch. Records are written to
a temporary file, fsynced, renamed over the old one and the directory fsynced: a crash leaves
the old record or the new one. The lock files are never replaced (a lock on a replaced inode
would protect nothing).

Locks are waited for with a bound (``lock_timeout``, ``LockTimeoutError``), and nobody
waits for a lease's lock while holding ``store.lock``: a writer stopped while it holds a
lease's lock (SIGSTOP, hung I/O) can delay only that lease, never an acquire of another.
The only nesting is lease lock, then store lock (``delete_lease``); ``acquire`` takes the
store lock to find or create the lease by name, lets it go, then takes the lease's lock to
take it over (and starts again if the lease was deleted meanwhile).

The per-call check of a record is one ``stat`` where it can be exact: a record this
store parsed is kept open (pinned, ``blockstore/recordpins.py``) and trusted while the path
still names that very file, since records are replaced by rename and never changed in
place; on a store created ``shared`` or a filesystem not known to be local every check
reads the record. The data file is not ``fstat``-ed on the write path (the record check
under the lock proves it has its name; see ``FdCache.use(linked=True)``).

Data files are opened through a bounded LRU of descriptors (``blockstore/fdcache.py``),
closed on eviction, release and delete, so a process may touch any number of leases; a
descriptor of a lease another process deleted is closed within seconds (its link count
says so, on use and by a periodic sweep), so the deleted lease's space is returned.

Durability: ``flush`` fsyncs the data file; ``write_blocks(flush=True)`` writes and fsyncs
under one shared lock and one check of the epoch. Record changes are durable when they
return.
A write of 1 MiB or more also starts the kernel's write-back of what it wrote
(:func:`~blockstore.fileio.start_writeback`), so a later ``flush`` waits for less; it orders
and guarantees nothing by itself.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from .base import (
    BlockStore,
    GcItem,
    StoreCapabilities,
    bounds_error,
    new_lease_id,
)
from .errors import (
    BlockStoreError,
    LeaseNotFoundError,
    StorageIOError,
    StoreCorruptError,
)
from .fdcache import FdCache
from .work import advance
from .fencing import check_current, check_free, next_acquire, released, renewed
from .fileroot import (
    HEX as _HEX,
    META_NAME,
    lock_within,
    open_root,
    orphan,
)
from .fileio import (
    FILE_MODE,
    atomic_write_json,
    fsync_dir,
    index_runs,
    pwritev_all,
    runs,
    start_writeback,
    zero_range,
)
from .lease import LeaseInfo
from .recordpins import RecordPins, local_filesystem

__all__ = ["FileStore"]

DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_MAX_OPEN_FILES = 64
#: Lease records are a few hundred bytes (a name is at most a few hundred characters).
MAX_RECORD_BYTES = 64 * 1024


class FileStore(BlockStore):
    """A store in a directory on a local or shared filesystem.

    Args:
        root: the store directory. Created (with parents) if missing or empty and ``create``.
        block_size: bytes per block for a new store; for an existing one it must match or be
            ``None``.
        create: create the store if the directory is missing or empty.
        lock_timeout: the longest wait, in seconds, for the store's or a lease's lock before
            ``LockTimeoutError`` (also settable later as the attribute of that name).
        max_open_files: data-file descriptors kept open when idle (an LRU); a quarter as
            many lease records stay open too, pinned (``blockstore/recordpins.py``).
        shared: for a new store, whether other machines or users reach it (a shared
            filesystem): recorded in its metadata and declared as ``capabilities.shared``
            (pickle checkpoints then need a key). ``None`` (default): ``False`` for a new
            store, the recorded value for an existing one; a conflicting value raises
            ``StoreConfigError``.
        clock_margin: seconds beyond an expiry before a lease may be taken over without
            ``steal`` (default ``$BLOCKPOINT_CLOCK_MARGIN`` or 2 s; see ``blockstore/base.py``).

    Files are created 0600 and directories 0700 (``blockstore/fileio.py``).
    """

    capabilities = StoreCapabilities(cross_process=True, durable=True, conditional_write=False)

    def __init__(self, root: str | os.PathLike[str], block_size: int | None = None,
                 *, create: bool = True, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 max_open_files: int = DEFAULT_MAX_OPEN_FILES, shared: bool | None = None,
                 clock_margin: float | None = None) -> None:
        self.root = Path(root).absolute()
        try:
            bs, is_shared = open_root(self.root, block_size, create, shared)
        except BlockStoreError:
            raise
        except OSError as exc:  # a name too long, a parent we may not search: one line
            raise StorageIOError(f"cannot open the store at {self.root}: "
                                 f"{exc.strerror or exc}", path=str(self.root)) from exc
        super().__init__(bs, clock_margin=clock_margin)
        self.capabilities = StoreCapabilities(cross_process=True, durable=True,
                                              conditional_write=False, shared=is_shared)
        self.lock_timeout = lock_timeout
        self._leases_dir = self.root / "leases"
        self._leases_str = str(self._leases_dir)
        self._fds = FdCache(max_open_files, self._open_data)
        # Pinned records (blockstore/recordpins.py): only where stat sees every rename.
        self._pins: RecordPins[LeaseInfo] | None = (
            RecordPins(max(1, max_open_files // 4)) if not is_shared and local_filesystem(self.root)
            else None)

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    # -- paths, locks, records -------------------------------------------------------------
    def _path(self, lease_id: str, ext: str) -> Path:
        return self._leases_dir / f"{lease_id}.{ext}"

    def _spath(self, lease_id: str, ext: str) -> str:
        """:meth:`_path` as a string: the per-write paths skip pathlib's cost."""
        return f"{self._leases_str}/{lease_id}.{ext}"

    @contextmanager
    def _flock(self, path: Path | str, mode: int, what: str = "the store",
               fd: int | None = None) -> Iterator[None]:
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            except OSError as exc:
                raise StorageIOError(f"cannot open lock {path}: {exc}",
                                     path=str(path)) from exc
        try:
            lock_within(fd, mode, self.lock_timeout, path, what)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _lease_lock(self, lease_id: str, exclusive: bool,
                    name: str | None = None) -> AbstractContextManager[None]:
        lock = self._spath(lease_id, "lock")
        try:  # a lease's lock file exists from before its record until after it
            fd: int | None = os.open(lock, os.O_RDWR)
        except OSError:  # none (or unreadable): as before, only for a lease that exists
            fd = None
            if not os.path.exists(self._spath(lease_id, "json")):
                raise LeaseNotFoundError(f"no lease {lease_id} in {self.url}",
                                         lease_id=lease_id) from None
        what = f"lease {name!r} ({lease_id})" if name else f"lease {lease_id}"
        return self._flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, what, fd)

    def _read_record(self, lease_id: str, pin: bool = True) -> LeaseInfo:
        """The lease record. With ``pin`` (every per-call check) a record this store parsed
        before is returned after one ``stat`` shows the very same file at the path
        (``blockstore/recordpins.py``: records are replaced by rename, never changed in
        place); otherwise it is read, parsed and - with ``pin`` - pinned."""
        path = self._spath(lease_id, "json")
        pins = self._pins if pin else None
        if pins is not None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                pins.discard(lease_id)
                raise LeaseNotFoundError(f"no lease {lease_id} in {self.url}",
                                         lease_id=lease_id) from None
            except OSError:
                st = None  # the read below reports it
            if st is not None:
                known = pins.get(lease_id, st)
                if known is not None:
                    return known
        try:  # os-level calls: this runs on every write, flush and read
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            if pins is not None:
                pins.discard(lease_id)
            raise LeaseNotFoundError(f"no lease {lease_id} in {self.url}",
                                     lease_id=lease_id) from None
        except OSError as exc:
            raise StorageIOError(f"cannot read lease record {path}: {exc}",
                                 path=str(path)) from exc
        kept = False
        try:
            try:
                # Before the read: a change in place after it shows as a changed signature.
                seen = os.fstat(fd) if pins is not None else None
                raw = os.read(fd, MAX_RECORD_BYTES + 1)  # a record is ~300 bytes
                while 0 < len(raw) <= MAX_RECORD_BYTES:
                    more = os.read(fd, MAX_RECORD_BYTES + 1 - len(raw))
                    if not more:
                        break
                    raw += more
            except OSError as exc:
                raise StorageIOError(f"cannot read lease record {path}: {exc}",
                                     path=str(path)) from exc
            try:
                if len(raw) > MAX_RECORD_BYTES:
                    raise ValueError(f"it is larger than {MAX_RECORD_BYTES} bytes")
                info = LeaseInfo.from_dict(json.loads(raw))
                if info.lease_id != lease_id:
                    raise ValueError(f"it holds the record of lease {info.lease_id}")
                if info.block_size != self.block_size:
                    raise ValueError(f"its block size {info.block_size} is not the store's")
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise StoreCorruptError(f"lease record {path} is unreadable: {exc}",
                                        path=str(path)) from exc
            if pins is not None and seen is not None:
                pins.put(lease_id, fd, seen, info)
                kept = True
            return info
        finally:
            if not kept:
                os.close(fd)

    def _write_record(self, info: LeaseInfo) -> None:
        path = self._path(info.lease_id, "json")
        if self._pins is not None:  # the pinned file is being replaced: let it go
            self._pins.discard(info.lease_id)
        try:
            atomic_write_json(path, info.to_dict())
        except OSError as exc:
            raise StorageIOError(f"cannot write lease record of {info.name!r}: {exc}",
                                 path=str(path)) from exc

    def _open_data(self, lease_id: str) -> int:
        path = self._path(lease_id, "dat")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise StorageIOError(f"cannot open blocks of lease {lease_id}: {exc}",
                                 path=str(path)) from exc

    # -- primitives ------------------------------------------------------------------------
    def _acquire(self, name: str, holder: str, ttl: float, num_blocks: int,
                 steal: bool) -> LeaseInfo:
        while True:
            with self._flock(self.root / "store.lock", fcntl.LOCK_EX):
                infos, errors = self._scan()  # one unreadable record must not block the rest
                existing = next((i for i in infos if i.name == name), None)
                if existing is None:
                    if errors:  # it may be this lease's: a new one would hide its data
                        paths = ", ".join(str(e.path) for e in errors)
                        raise StoreCorruptError(
                            f"cannot create lease {name!r} in {self.url}: lease record(s) "
                            f"{paths} unreadable, and one may be {name!r}'s (a new lease "
                            f"would hide its blocks); repair or remove it: {errors[0]}",
                            path=errors[0].path) from errors[0]
                    return self._create(name, holder, ttl, num_blocks)
            # The takeover waits for the lease's lock only after the store lock is let go:
            # a stopped writer holding that lock must not stall every other acquire.
            try:
                with self._lease_lock(existing.lease_id, exclusive=True, name=name):
                    current = self._read_record(existing.lease_id)
                    info = next_acquire(current, lease_id=current.lease_id, name=name,
                                        holder=holder, ttl=ttl, num_blocks=num_blocks,
                                        steal=steal, block_size=self.block_size,
                                        now=self.now(), margin=self.clock_margin)
                    self._write_record(info)
                    return info
            except LeaseNotFoundError:
                continue  # deleted since we looked: look again (it may be created anew)

    def _create(self, name: str, holder: str, ttl: float, num_blocks: int) -> LeaseInfo:
        """A new lease named ``name`` (the store lock is held, so the name stays unique)."""
        info = next_acquire(None, lease_id=new_lease_id(), name=name, holder=holder, ttl=ttl,
                            num_blocks=num_blocks, steal=False, block_size=self.block_size,
                            now=self.now())
        try:
            self._path(info.lease_id, "lock").touch(mode=FILE_MODE)
            fd = os.open(self._path(info.lease_id, "dat"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         FILE_MODE)
            try:
                os.ftruncate(fd, num_blocks * self.block_size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageIOError(f"cannot create lease {name!r}: {exc}") from exc
        self._write_record(info)  # the record last: it is what makes the lease exist
        return info

    def _renew(self, lease_id: str, holder: str, epoch: int, ttl: float) -> LeaseInfo:
        with self._lease_lock(lease_id, exclusive=True):
            info = renewed(self._read_record(lease_id), epoch, ttl)
            self._write_record(info)
            return info

    def _release(self, lease_id: str, holder: str, epoch: int) -> None:
        with self._lease_lock(lease_id, exclusive=True):
            self._write_record(released(self._read_record(lease_id), epoch))
        self._fds.discard(lease_id)  # the holder is done: keep no descriptor for it

    def _resize(self, lease_id: str, epoch: int, num_blocks: int) -> LeaseInfo:
        with self._lease_lock(lease_id, exclusive=True):
            info = self._read_record(lease_id)
            check_current(info, epoch)
            try:
                with self._fds.use(lease_id, linked=True) as fd:
                    os.ftruncate(fd, num_blocks * self.block_size)
                    os.fsync(fd)
            except StorageIOError:
                raise  # already translated (opening the data file)
            except OSError as exc:
                raise StorageIOError(f"cannot resize lease {info.name!r}: {exc}") from exc
            info = dataclasses.replace(info, num_blocks=num_blocks)
            self._write_record(info)
            return info

    @contextmanager
    def _writing(self, lease_id: str, epoch: int, indices: Sequence[int],
                 what: str) -> Iterator[int]:
        """The data file's descriptor, for changing ``indices`` under ``epoch``: the shared
        lease lock is held, the epoch is current and every index is inside the lease, for as
        long as the block runs. I/O errors become ``StorageIOError``."""
        with self._lease_lock(lease_id, exclusive=False):
            info = self._read_record(lease_id)
            check_current(info, epoch)
            for i in indices:
                if i >= info.num_blocks:
                    raise bounds_error(lease_id, info.name, i, info.num_blocks)
            try:
                # The record is there and its lock held: the data file has its name.
                with self._fds.use(lease_id, writing=True, linked=True) as fd:
                    yield fd
            except StorageIOError:
                raise  # already translated (opening the data file)
            except OSError as exc:
                raise StorageIOError(f"{what} lease {info.name!r} failed: {exc}") from exc

    def _write(self, lease_id: str, epoch: int, indices: Sequence[int],
               datas: Sequence[memoryview]) -> None:
        with self._writing(lease_id, epoch, indices, "write to") as fd:
            self._pwrite(fd, indices, datas)

    def _pwrite(self, fd: int, indices: Sequence[int], datas: Sequence[memoryview],
                pad: bool = True) -> None:
        bs = self.block_size
        lo, hi = None, 0
        for start, bufs in runs(indices, datas, bs, pad):
            pwritev_all(fd, bufs, start * bs)
            end = start * bs + sum(len(b) for b in bufs)
            lo, hi = start * bs if lo is None else min(lo, start * bs), max(hi, end)
        if lo is not None:
            start_writeback(fd, lo, hi - lo)  # a hint; flush() makes it durable

    def _write_flush(self, lease_id: str, epoch: int, indices: Sequence[int],
                     datas: Sequence[memoryview], pad: bool = True) -> None:
        # One shared lock and one check of the epoch for both: a flush after a write that
        # was checked under the same lock could not be refused (its check allows expiry).
        with self._writing(lease_id, epoch, indices, "write to (and fsync)") as fd:
            self._pwrite(fd, indices, datas, pad)
            self._fsync(lease_id, fd)
        late = self._fds.take_error(lease_id)  # as in _flush
        if late is not None:
            raise StorageIOError(f"fsync of lease {lease_id} failed: {late}") from late

    def _write_unpadded(self, lease_id: str, epoch: int, indices: Sequence[int],
                        datas: Sequence[memoryview], flush: bool) -> None:
        # Only the buffers' bytes: a short record's block tail is not rewritten (a 3 KiB log
        # record in a 64 KiB block costs a 3 KiB write, and its fsync flushes less).
        if flush:
            self._write_flush(lease_id, epoch, indices, datas, pad=False)
            return
        with self._writing(lease_id, epoch, indices, "write to") as fd:
            self._pwrite(fd, indices, datas, pad=False)

    def _fsync(self, lease_id: str, fd: int) -> None:
        os.fsync(fd)
        self._fds.flushed(lease_id)

    def _read(self, lease_id: str, indices: Sequence[int], buffers: Sequence[memoryview]) -> None:
        info = self._read_record(lease_id)
        for i in indices:
            if i >= info.num_blocks:
                raise bounds_error(lease_id, info.name, i, info.num_blocks)
        bs = self.block_size
        try:
            with self._fds.use(lease_id) as fd:
                for i, buf in zip(indices, buffers):
                    n = os.preadv(fd, [buf], i * bs)
                    while 0 < n < len(buf):
                        got = os.preadv(fd, [buf[n:]], i * bs + n)
                        if got == 0:
                            break
                        n += got
                    if n < len(buf):  # beyond the end of the file: never written
                        buf[n:] = bytes(len(buf) - n)
        except StorageIOError:
            raise  # already translated (opening the data file)
        except OSError as exc:
            raise StorageIOError(f"read from lease {info.name!r} failed: {exc}") from exc

    def _flush(self, lease_id: str, epoch: int) -> None:
        with self._lease_lock(lease_id, exclusive=False):
            check_current(self._read_record(lease_id), epoch, allow_expired=True)
            try:
                with self._fds.use(lease_id, linked=True) as fd:
                    self._fsync(lease_id, fd)
                # An fsync done when the descriptor was evicted may have failed.
                late = self._fds.take_error(lease_id)
                if late is not None:
                    raise late
            except StorageIOError:
                raise  # already translated (opening the data file)
            except OSError as exc:
                raise StorageIOError(f"fsync of lease {lease_id} failed: {exc}") from exc

    def _info(self, lease_id: str) -> LeaseInfo:
        if len(lease_id) != 32 or not _HEX.issuperset(lease_id):
            raise LeaseNotFoundError(f"no lease {lease_id!r} in {self.url}", lease_id=lease_id)
        return self._read_record(lease_id)

    def _list(self) -> list[LeaseInfo]:
        infos, errors = self._scan()
        if errors:
            raise errors[0]
        return infos

    def _scan(self) -> tuple[list[LeaseInfo], list[StoreCorruptError]]:
        try:
            names = sorted(p.name for p in self._leases_dir.iterdir() if p.suffix == ".json"
                           and not p.name.startswith("."))
        except OSError as exc:
            raise StorageIOError(f"cannot list leases in {self._leases_dir}: {exc}") from exc
        out: list[LeaseInfo] = []
        errors: list[StoreCorruptError] = []
        for n in names:
            try:
                out.append(self._read_record(n[:-5], pin=False))  # keeps no pins
            except LeaseNotFoundError:
                continue  # deleted while listing
            except StoreCorruptError as exc:
                errors.append(exc)
            except StorageIOError as exc:  # permission denied, EIO: this record, not the rest
                err = StoreCorruptError(
                    f"lease record {exc.path} is unreadable: {exc.__cause__ or exc}",
                    path=exc.path)
                err.__cause__ = exc
                errors.append(err)
        return out, errors

    def _delete(self, lease_id: str, holder: str | None, epoch: int | None) -> None:
        # Lease lock, then store lock: the one nesting of locks (see the module docstring).
        with self._lease_lock(lease_id, exclusive=True), \
                self._flock(self.root / "store.lock", fcntl.LOCK_EX):
            info = self._read_record(lease_id)
            if epoch is not None:
                check_current(info, epoch, allow_expired=True)
            else:
                check_free(info, now=self.now(), margin=self.clock_margin,
                           hint="delete it with the holder's handle")
            # The record goes first: without it the lease does not exist.
            self._path(lease_id, "json").unlink()
            fsync_dir(self._leases_dir)
            self._fds.discard(lease_id)
            if self._pins is not None:
                self._pins.discard(lease_id)
            for ext in ("dat", "lock"):
                try:
                    self._path(lease_id, ext).unlink()
                except FileNotFoundError:
                    pass

    def _discard(self, lease_id: str, epoch: int, indices: Sequence[int],
                 keep_space: bool = False) -> None:
        bs = self.block_size
        with self._writing(lease_id, epoch, indices, "discard in") as fd:  # fenced like a write
            for first, count in index_runs(sorted(indices)):
                zero_range(fd, first * bs, count * bs, keep_space=keep_space)

    def _gc(self, dry_run: bool, min_age: float) -> tuple[list[GcItem], int]:
        # Under the store lock: leases are created (lock, data, then record) and deleted
        # (record, then data and lock) while it is held, so a data or lock file without a
        # record here belongs to no lease that exists or is being made.
        now = time.time()
        found: list[GcItem] = []
        with self._flock(self.root / "store.lock", fcntl.LOCK_EX):
            try:
                entries = list(self._leases_dir.iterdir())
                root_tmps = [p for p in self.root.iterdir()
                             if p.name.startswith(f".{META_NAME}.") and p.name.endswith(".tmp")]
            except OSError as exc:
                raise StorageIOError(f"cannot list {self._leases_dir}: {exc}") from exc
            advance("objects_listed", len(entries))
            records = {p.name[:-5] for p in entries
                       if p.name.endswith(".json") and not p.name.startswith(".")}
            for p in entries + root_tmps:
                item = orphan(p, records, now, min_age)
                if item is not None:
                    found.append(item)
            if not dry_run and found:
                for item in found:
                    try:
                        Path(item.path).unlink()
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        raise StorageIOError(f"gc cannot remove {item.path}: {exc}",
                                             path=item.path) from exc
                fsync_dir(self._leases_dir)
        return found, len(records)

    def _close(self) -> None:
        self._fds.close()
        if self._pins is not None:
            self._pins.close()
