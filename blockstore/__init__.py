"""Leased block storage: fixed-size blocks in fenced leases, behind one interface.

Quick use::

    from blockstore import open_store
    with open_store("/tmp/store", block_size=1 << 20) as store:
        with store.acquire("stage-1", ttl=30, num_blocks=4) as lease:
            lease.write_blocks({0: b"hello", 1: b"world"})
            lease.flush()
            assert lease.read_block(0)[:5] == b"hello"

``open_store`` takes a directory path or ``file://`` URL (the default backend) or
``memory://NAME`` (one shared store per name in this process).
"""

from __future__ import annotations

import os
import threading

from .base import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CLOCK_MARGIN,
    DEFAULT_TTL,
    BlockStore,
    GcItem,
    GcReport,
    LeaseScan,
    StoreCapabilities,
    StoreStats,
    default_holder,
)
from .canonical import canonical_json
from .checksum import crc32c
from .document import DocumentLoad, SkippedSlot, SlottedDocument
from .errors import (
    BlockError,
    BlockIndexError,
    BlockSizeError,
    BlockStoreError,
    DocumentEncodeError,
    DocumentError,
    DocumentTooLargeError,
    LeaseError,
    LeaseExpiredError,
    LeaseHeldError,
    LeaseNameError,
    LeaseNotFoundError,
    LeaseReleasedError,
    LockTimeoutError,
    StaleLeaseError,
    StorageIOError,
    StoreClosedError,
    StoreConfigError,
    StoreCorruptError,
    StorePathError,
    StoreVersionError,
)
from .file import FileStore
from .keys import KEY_ENV, OLD_KEYS_ENV, KeyRing, resolve_keys
from .lease import Lease, LeaseInfo, LeaseReader
from .memory import MemoryStore

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CLOCK_MARGIN",
    "DEFAULT_TTL",
    "KEY_ENV",
    "OLD_KEYS_ENV",
    "BlockError",
    "BlockIndexError",
    "BlockSizeError",
    "BlockStore",
    "BlockStoreError",
    "DocumentEncodeError",
    "DocumentError",
    "DocumentLoad",
    "DocumentTooLargeError",
    "FileStore",
    "GcItem",
    "GcReport",
    "KeyRing",
    "Lease",
    "LeaseError",
    "LeaseExpiredError",
    "LeaseHeldError",
    "LeaseInfo",
    "LeaseNameError",
    "LeaseNotFoundError",
    "LeaseReader",
    "LeaseReleasedError",
    "LeaseScan",
    "LockTimeoutError",
    "MemoryStore",
    "SkippedSlot",
    "SlottedDocument",
    "StaleLeaseError",
    "StorageIOError",
    "StoreCapabilities",
    "StoreClosedError",
    "StoreConfigError",
    "StoreCorruptError",
    "StorePathError",
    "StoreVersionError",
    "StoreStats",
    "canonical_json",
    "crc32c",
    "default_holder",
    "open_store",
    "resolve_keys",
]

_memory_stores: dict[str, MemoryStore] = {}
_memory_lock = threading.Lock()


def open_store(spec: str | os.PathLike[str], *, block_size: int | None = None,
               create: bool = True, shared: bool | None = None,
               clock_margin: float | None = None) -> BlockStore:
    """Open a store from a path or URL.

    ``/path`` or ``file:///path``: :class:`FileStore`. ``memory://NAME``: the process's
    :class:`MemoryStore` of that name (created on first use). ``s3://`` comes with the S3
    backend. ``block_size`` and ``shared`` apply when the store is created; an existing store
    keeps its own (a conflicting value raises ``StoreConfigError``). A memory store is never
    shared. ``clock_margin``: see :class:`BlockStore` ("Clocks").
    """
    s = os.fspath(spec)
    if s.startswith("memory://"):
        if shared:
            raise StoreConfigError(f"{s}: a memory store is never shared")
        name = s[len("memory://"):]
        with _memory_lock:
            st = _memory_stores.get(name)
            if st is None or st.closed:
                st = MemoryStore(block_size or DEFAULT_BLOCK_SIZE, name=name,
                                 clock_margin=clock_margin)
                _memory_stores[name] = st
            elif block_size is not None and block_size != st.block_size:
                raise StoreConfigError(f"{s} has block size {st.block_size}, not {block_size}")
            return st
    if s.startswith("file://"):
        s = s[len("file://"):]
    elif "://" in s:
        raise StoreConfigError(f"unknown store scheme in {s!r} (file://, memory:// supported)")
    return FileStore(s, block_size, create=create, shared=shared, clock_margin=clock_margin)
