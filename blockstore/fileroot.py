"""The file store's directory, apart from its leases: opening (and creating) it, the
metadata file, the directory and lock-file locks, and what gc may remove.

``FileStore`` (``blockstore/file.py``) keeps the leases; this is what it reads and locks around
them. Layout and fields: docs/FORMAT.md 1 ("File store layout") and 1.1 ("Store metadata").
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .base import DEFAULT_BLOCK_SIZE, GcItem
from .checks import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, check_new_block_size
from .errors import (
    LockTimeoutError,
    StorageIOError,
    StoreConfigError,
    StoreCorruptError,
    StorePathError,
    StoreVersionError,
)
from .fileio import DIR_MODE, FILE_MODE, atomic_write_json

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "HEX", "META_NAME", "dir_lock", "is_empty_or_partial",
           "lock_within", "open_root", "orphan", "read_meta"]

META_NAME = "blockpoint-store.json"
FORMAT_NAME = "blockpoint-store"
FORMAT_VERSION = 1


def read_meta(meta: Path, block_size: int | None, shared: bool | None) -> tuple[int, bool]:
    """The block size and sharing recorded in ``meta``, checked against the arguments."""
    try:
        doc = json.loads(meta.read_bytes())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME} document")
        version = int(doc["version"])
        bs = int(doc["block_size"])
        is_shared = doc.get("shared", False)
        if not isinstance(is_shared, bool):
            raise ValueError(f"'shared' is {is_shared!r}, not a bool")
        if version < 1:
            raise ValueError(f"version {version} is not a version")
        if version <= FORMAT_VERSION and not (MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE):
            raise ValueError(f"block size {bs} is out of range")
    except (ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise StoreCorruptError(f"store metadata {meta} is unreadable: {exc}",
                                path=str(meta)) from exc
    if version > FORMAT_VERSION:
        raise StoreVersionError(
            f"store {meta.parent} has format version {version}, newer than this blockpoint "
            f"reads ({FORMAT_VERSION}); upgrade blockpoint", path=str(meta), version=version,
            supported=FORMAT_VERSION)
    if block_size is not None and block_size != bs:
        raise StoreConfigError(f"store {meta.parent} has block size {bs}, not {block_size}")
    if shared is not None and bool(shared) != is_shared:
        raise StoreConfigError(f"store {meta.parent} was created with shared={is_shared}, "
                               f"not shared={bool(shared)} (sharing is fixed at creation)")
    return bs, is_shared


def open_root(root: Path, block_size: int | None, create: bool,
              shared: bool | None) -> tuple[int, bool]:
    """Open (or, with ``create``, make) the store at ``root``: its block size and whether
    it is shared. Creation is serialised by a lock on the directory; a directory that is
    neither empty nor a store is refused (``StorePathError``), I/O errors are
    ``StorageIOError``."""
    if root.exists() and not root.is_dir():
        raise StorePathError(f"{root} is not a directory", path=str(root))
    meta = root / META_NAME
    if meta.exists():
        return read_meta(meta, block_size, shared)
    if root.exists() and not is_empty_or_partial(root):
        # Another process may have finished creating the store (and written its first
        # lease) between the two looks: the meta decides, read again after the listing.
        if meta.exists():
            return read_meta(meta, block_size, shared)
        raise StorePathError(f"{root} is not a blockpoint store (no {META_NAME}) and is not "
                             "empty; refusing to write into it", path=str(root))
    if not create:
        raise StorePathError(f"{root} is not a blockpoint store", path=str(root))
    bs = check_new_block_size(DEFAULT_BLOCK_SIZE if block_size is None else block_size)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    except (NotADirectoryError, FileExistsError) as exc:
        raise StorePathError(f"cannot create store at {root}: a parent is not a directory",
                             path=str(root)) from exc
    except OSError as exc:
        raise StorageIOError(f"cannot create store at {root}: {exc}", path=str(root)) from exc
    # Two processes may create the same store at once (every worker opens it on start):
    # a lock on the directory itself serialises creation, and the loser reads the meta.
    with dir_lock(root):
        if meta.exists():
            return read_meta(meta, block_size, shared)
        if not is_empty_or_partial(root):
            raise StorePathError(f"{root} is not a blockpoint store (no {META_NAME}) and "
                                 "is not empty; refusing to write into it", path=str(root))
        try:
            # A directory that existed (empty) keeps only its owner's bits: stricter
            # than both 0700 and whatever umask it was made with.
            os.chmod(root, stat.S_IMODE(root.stat().st_mode) & DIR_MODE)
            (root / "leases").mkdir(exist_ok=True, mode=DIR_MODE)
            (root / "store.lock").touch(mode=FILE_MODE)
            # The meta last: until it exists, the directory is not a store.
            is_shared = bool(shared)
            atomic_write_json(meta, {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                                     "block_size": bs, "shared": is_shared})
        except OSError as exc:
            raise StorageIOError(f"cannot create store at {root}: {exc}",
                                 path=str(root)) from exc
    return bs, is_shared


def is_empty_or_partial(root: Path) -> bool:
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
def dir_lock(path: Path) -> Iterator[None]:
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


def lock_within(fd: int, mode: int, timeout: float, path: Path | str, what: str) -> None:
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


HEX = frozenset("0123456789abcdef")


def _is_lease_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def orphan(path: Path, records: set[str], now: float, min_age: float) -> GcItem | None:
    """What ``path`` is if gc may remove it, else None (live, young, or not ours)."""
    name = path.name
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if name.startswith(".") and name.endswith(".tmp"):
        # ".<record>.<pid>.<thread>.tmp" of a record write (fileio.atomic_write_json); a young
        # one may belong to a write in progress (record writes do not hold the store lock).
        if now - st.st_mtime < min_age:
            return None
        stem = name[1:].split(".", 1)[0]
        return GcItem(str(path), "temporary", st.st_size, stem if _is_lease_id(stem) else None)
    stem, _, ext = name.partition(".")
    if ext in ("dat", "lock") and _is_lease_id(stem) and stem not in records:
        kind = "orphan data" if ext == "dat" else "orphan lock"
        return GcItem(str(path), kind, st.st_blocks * 512 if ext == "dat" else 0, stem)
    return None
