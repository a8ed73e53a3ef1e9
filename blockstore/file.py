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

Data files are opened through a bounded LRU of descriptors (``blockstore/fdcache.py``),
closed on eviction, release and delete, so a process may touch any number of leases.

Durability: ``flush`` fsyncs the data file. Record changes are durable when they return.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from .base import DEFAULT_BLOCK_SIZE, BlockStore, StoreCapabilities, bounds_error, new_lease_id
from .canonical import canonical_json
from .checks import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, check_block_size
from .errors import (
    LeaseHeldError,
    LeaseNotFoundError,
    LockTimeoutError,
    StorageIOError,
    StoreConfigError,
    StoreCorruptError,
    StorePathError,
    StoreVersionError,
)
from .fdcache import FdCache
from .fencing import check_current, next_acquire, released, renewed
from .lease import LeaseInfo

__all__ = ["FileStore"]

META_NAME = "blockpoint-store.json"
FORMAT_NAME = "blockpoint-store"
FORMAT_VERSION = 1
_IOV_MAX = 512
DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_MAX_OPEN_FILES = 64


def _read_meta(meta: Path, block_size: int | None) -> int:
    """The block size recorded in ``meta``, checked against ``block_size`` if given."""
    try:
        doc = json.loads(meta.read_bytes())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME} document")
        version = int(doc["version"])
        bs = int(doc["block_size"])
        if version < 1:
            raise ValueError(f"version {version} is not a version")
        if version <= FORMAT_VERSION and not (MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE):
            raise ValueError(f"block size {bs} is out of range")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise StoreCorruptError(f"store metadata {meta} is unreadable: {exc}",
                                path=str(meta)) from exc
    if version > FORMAT_VERSION:
        raise StoreVersionError(
            f"store {meta.parent} has format version {version}, newer than this blockpoint "
            f"reads ({FORMAT_VERSION}); upgrade blockpoint", path=str(meta), version=version,
            supported=FORMAT_VERSION)
    if block_size is not None and block_size != bs:
        raise StoreConfigError(f"store {meta.parent} has block size {bs}, not {block_size}")
    return bs


def _is_empty_or_partial(root: Path) -> bool:
    """True if ``root`` is empty or holds only what an interrupted store creation leaves."""
    for p in root.iterdir():
        if p.name == "leases" and p.is_dir() and not any(p.iterdir()):
            continue
        if p.name == "store.lock" or (p.name.startswith(f".{META_NAME}.")
                                      and p.name.endswith(".tmp")):
            continue
        return False
    return True


@contextmanager
def _dir_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on a directory (best effort: some filesystems refuse it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # pragma: no cover - e.g. NFS emulating flock with fcntl locks
            pass
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (the kernel may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a regular file returns an error instead
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[n:]


def _atomic_write_json(path: Path, obj: object) -> None:
    """Replace ``path`` by ``obj`` as JSON: temporary file, fsync, rename, fsync the directory.

    A failure at any step (a short write included) leaves the old file in place and no
    temporary file behind.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = canonical_json(obj)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
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
    _fsync_dir(path.parent)


def _lock_within(fd: int, mode: int, timeout: float, path: Path, what: str) -> None:
    """``flock(fd, mode)``, waiting at most ``timeout`` seconds (``LockTimeoutError``)."""
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now >= deadline:
            raise LockTimeoutError(
                f"the lock of {what} ({path}) stayed taken for {timeout:.1f}s (a holder is "
                "stopped or its I/O hangs); nothing was changed", path=str(path),
                waited=timeout)
        time.sleep(min(pause, deadline - now))
        # Short pauses: shared holders come and go, and an exclusive waiter must catch a gap.
        pause = min(pause * 2, 0.005)


class FileStore(BlockStore):
    """A store in a directory on a local or shared filesystem.

    Args:
        root: the store directory. Created (with parents) if missing or empty and ``create``.
        block_size: bytes per block for a new store; for an existing one it must match or be
            ``None``.
        create: create the store if the directory is missing or empty.
        lock_timeout: the longest wait, in seconds, for the store's or a lease's lock before
            ``LockTimeoutError`` (also settable later as the attribute of that name).
        max_open_files: data-file descriptors kept open when idle (an LRU).
    """

    capabilities = StoreCapabilities(cross_process=True, durable=True, conditional_write=False)

    def __init__(self, root: str | os.PathLike[str], block_size: int | None = None,
                 *, create: bool = True, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 max_open_files: int = DEFAULT_MAX_OPEN_FILES) -> None:
        self.root = Path(root).absolute()
        bs = self._open_root(block_size, create)
        super().__init__(bs)
        self.lock_timeout = lock_timeout
        self._leases_dir = self.root / "leases"
        self._fds = FdCache(max_open_files, self._open_data)

    # -- opening ---------------------------------------------------------------------------
    def _open_root(self, block_size: int | None, create: bool) -> int:
        root = self.root
        if root.exists() and not root.is_dir():
            raise StorePathError(f"{root} is not a directory", path=str(root))
        meta = root / META_NAME
        if meta.exists():
            return _read_meta(meta, block_size)
        if root.exists() and not _is_empty_or_partial(root):
            raise StorePathError(f"{root} is not a blockpoint store (no {META_NAME}) and is not "
                                 "empty; refusing to write into it", path=str(root))
        if not create:
            raise StorePathError(f"{root} is not a blockpoint store", path=str(root))
        bs = check_block_size(DEFAULT_BLOCK_SIZE if block_size is None else block_size)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError) as exc:
            raise StorePathError(f"cannot create store at {root}: a parent is not a directory",
                                 path=str(root)) from exc
        except OSError as exc:
            raise StorageIOError(f"cannot create store at {root}: {exc}", path=str(root)) from exc
        # Two processes may create the same store at once (every worker opens it on start):
        # a lock on the directory itself serialises creation, and the loser reads the meta.
        with _dir_lock(root):
            if meta.exists():
                return _read_meta(meta, block_size)
            if not _is_empty_or_partial(root):
                raise StorePathError(f"{root} is not a blockpoint store (no {META_NAME}) and "
                                     "is not empty; refusing to write into it", path=str(root))
            try:
                (root / "leases").mkdir(exist_ok=True)
                (root / "store.lock").touch()
                # The meta last: until it exists, the directory is not a store.
                _atomic_write_json(meta, {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                                          "block_size": bs})
            except OSError as exc:
                raise StorageIOError(f"cannot create store at {root}: {exc}",
                                     path=str(root)) from exc
        return bs

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    # -- paths, locks, records -------------------------------------------------------------
    def _path(self, lease_id: str, ext: str) -> Path:
        return self._leases_dir / f"{lease_id}.{ext}"

    @contextmanager
    def _flock(self, path: Path, mode: int, what: str = "the store") -> Iterator[None]:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageIOError(f"cannot open lock {path}: {exc}", path=str(path)) from exc
        try:
            _lock_within(fd, mode, self.lock_timeout, path, what)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _lease_lock(self, lease_id: str, exclusive: bool,
                    name: str | None = None) -> AbstractContextManager[None]:
        lock = self._path(lease_id, "lock")
        if not self._path(lease_id, "json").exists():
            raise LeaseNotFoundError(f"no lease {lease_id} in {self.url}", lease_id=lease_id)
        what = f"lease {name!r} ({lease_id})" if name else f"lease {lease_id}"
        return self._flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, what)

    def _read_record(self, lease_id: str) -> LeaseInfo:
        path = self._path(lease_id, "json")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise LeaseNotFoundError(f"no lease {lease_id} in {self.url}",
                                     lease_id=lease_id) from None
        except OSError as exc:
            raise StorageIOError(f"cannot read lease record {path}: {exc}",
                                 path=str(path)) from exc
        try:
            info = LeaseInfo.from_dict(json.loads(raw))
            if info.lease_id != lease_id:
                raise ValueError(f"it holds the record of lease {info.lease_id}")
            if info.block_size != self.block_size:
                raise ValueError(f"its block size {info.block_size} is not the store's")
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorruptError(f"lease record {path} is unreadable: {exc}",
                                    path=str(path)) from exc
        return info

    def _write_record(self, info: LeaseInfo) -> None:
        path = self._path(info.lease_id, "json")
        try:
            _atomic_write_json(path, info.to_dict())
        except OSError as exc:
            raise StorageIOError(f"cannot write lease record of {info.name!r}: {exc}",
                                 path=str(path)) from exc

    def _open_data(self, lease_id: str) -> int:
        path = self._path(lease_id, "dat")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageIOError(f"cannot open blocks of lease {lease_id}: {exc}",
                                 path=str(path)) from exc

    # -- primitives ------------------------------------------------------------------------
    def _acquire(self, name: str, holder: str, ttl: float, num_blocks: int,
                 steal: bool) -> LeaseInfo:
        while True:
            with self._flock(self.root / "store.lock", fcntl.LOCK_EX):
                existing = next((i for i in self._list() if i.name == name), None)
                if existing is None:
                    return self._create(name, holder, ttl, num_blocks)
            # The takeover waits for the lease's lock only after the store lock is let go:
            # a stopped writer holding that lock must not stall every other acquire.
            try:
                with self._lease_lock(existing.lease_id, exclusive=True, name=name):
                    current = self._read_record(existing.lease_id)
                    info = next_acquire(current, lease_id=current.lease_id, name=name,
                                        holder=holder, ttl=ttl, num_blocks=num_blocks,
                                        steal=steal, block_size=self.block_size)
                    self._write_record(info)
                    return info
            except LeaseNotFoundError:
                continue  # deleted since we looked: look again (it may be created anew)

    def _create(self, name: str, holder: str, ttl: float, num_blocks: int) -> LeaseInfo:
        """A new lease named ``name`` (the store lock is held, so the name stays unique)."""
        info = next_acquire(None, lease_id=new_lease_id(), name=name, holder=holder, ttl=ttl,
                            num_blocks=num_blocks, steal=False, block_size=self.block_size)
        try:
            self._path(info.lease_id, "lock").touch()
            with open(self._path(info.lease_id, "dat"), "wb") as f:
                f.truncate(num_blocks * self.block_size)
                os.fsync(f.fileno())
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
                with self._fds.use(lease_id) as fd:
                    os.ftruncate(fd, num_blocks * self.block_size)
                    os.fsync(fd)
            except StorageIOError:
                raise  # already translated (opening the data file)
            except OSError as exc:
                raise StorageIOError(f"cannot resize lease {info.name!r}: {exc}") from exc
            info = dataclasses.replace(info, num_blocks=num_blocks)
            self._write_record(info)
            return info

    def _write(self, lease_id: str, epoch: int, indices: Sequence[int],
               datas: Sequence[memoryview]) -> None:
        bs = self.block_size
        with self._lease_lock(lease_id, exclusive=False):
            info = self._read_record(lease_id)
            check_current(info, epoch)
            for i in indices:
                if i >= info.num_blocks:
                    raise bounds_error(lease_id, info.name, i, info.num_blocks)
            try:
                with self._fds.use(lease_id, writing=True) as fd:
                    for start, bufs in _runs(indices, datas, bs):
                        _pwritev_all(fd, bufs, start * bs)
            except StorageIOError:
                raise  # already translated (opening the data file)
            except OSError as exc:
                raise StorageIOError(f"write to lease {info.name!r} failed: {exc}") from exc

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
                with self._fds.use(lease_id) as fd:
                    os.fsync(fd)
                    self._fds.flushed(lease_id)
                # An fsync done when the descriptor was evicted may have failed.
                late = self._fds.take_error(lease_id)
                if late is not None:
                    raise late
            except StorageIOError:
                raise  # already translated (opening the data file)
            except OSError as exc:
                raise StorageIOError(f"fsync of lease {lease_id} failed: {exc}") from exc

    def _info(self, lease_id: str) -> LeaseInfo:
        if len(lease_id) != 32 or not all(c in "0123456789abcdef" for c in lease_id):
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
                out.append(self._read_record(n[:-5]))
            except LeaseNotFoundError:
                continue  # deleted while listing
            except StoreCorruptError as exc:
                errors.append(exc)
        return out, errors

    def _delete(self, lease_id: str, holder: str | None, epoch: int | None) -> None:
        # Lease lock, then store lock: the one nesting of locks (see the module docstring).
        with self._lease_lock(lease_id, exclusive=True), \
                self._flock(self.root / "store.lock", fcntl.LOCK_EX):
            info = self._read_record(lease_id)
            if epoch is not None:
                check_current(info, epoch, allow_expired=True)
            elif info.is_held():
                raise LeaseHeldError(f"lease {info.name!r} is held by {info.holder!r}",
                                     holder=info.holder, expires_at=info.expires_at,
                                     lease_id=lease_id, name=info.name, epoch=info.epoch)
            # The record goes first: without it the lease does not exist.
            self._path(lease_id, "json").unlink()
            _fsync_dir(self._leases_dir)
            self._fds.discard(lease_id)
            for ext in ("dat", "lock"):
                try:
                    self._path(lease_id, ext).unlink()
                except FileNotFoundError:
                    pass

    def _close(self) -> None:
        self._fds.close()


def _runs(indices: Sequence[int], datas: Sequence[memoryview],
          bs: int) -> Iterator[tuple[int, list[memoryview]]]:
    """Group writes into runs of consecutive blocks, padding short blocks with zeros."""
    order = sorted(range(len(indices)), key=indices.__getitem__)
    zeros = memoryview(bytes(bs))
    start = -1
    prev = -2
    bufs: list[memoryview] = []
    for k in order:
        i = indices[k]
        if i != prev + 1 or len(bufs) >= _IOV_MAX:
            if bufs:
                yield start, bufs
            start, bufs = i, []
        d = datas[k]
        bufs.append(d)
        if len(d) < bs:
            bufs.append(zeros[: bs - len(d)])
        prev = i
    if bufs:
        yield start, bufs


def _pwritev_all(fd: int, bufs: list[memoryview], offset: int) -> None:
    """pwritev until every byte is written (the kernel may write less than asked)."""
    bufs = [b for b in bufs if len(b)]
    k = 0
    while k < len(bufs):
        n = os.pwritev(fd, bufs[k:k + _IOV_MAX], offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += n
        while k < len(bufs) and n >= len(bufs[k]):
            n -= len(bufs[k])
            k += 1
        if n:
            bufs[k] = bufs[k][n:]
