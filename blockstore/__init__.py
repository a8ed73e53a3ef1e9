"""Leased block storage: fixed-size blocks in fenced leases, behind one interface.

Quick use::

    from blockstore import open_store
    with open_store("/tmp/store", block_size=1 << 20) as store:
        with store.acquire("stage-1", ttl=30, num_blocks=4) as lease:
            lease.write_blocks({0: b"hello", 1: b"world"})
            lease.flush()
            assert lease.read_block(0)[:5] == b"hello"

``open_store`` takes a directory path or ``file://`` URL (the default backend) or
``memory://NAME`` (one shared store per name in this process), or an object-store URL
(``s3://bucket/prefix?endpoint_url=...``, ``gs://``, ``az://``; see :mod:`blockstore.urls`).
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
    BlockMissingError,
    BlockSizeError,
    BlockStoreError,
    CommitUnknownError,
    DocumentEncodeError,
    DocumentError,
    DocumentTooLargeError,
    KeyFileError,
    KeySettingError,
    LeaseError,
    LeaseExpiredError,
    LeaseHeldError,
    LeaseMismatchError,
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
from .errors import (  # object stores and URLs
    BucketNotFoundError,
    StoreAccessDeniedError,
    StoreEndpointError,
    StoreUnreachableError,
    StoreURLError,
)
from .file import FileStore
from .keys import KEY_ENV, KEY_FILE_ENV, OLD_KEYS_ENV, KeyRing, resolve_keys
from .lease import Lease, LeaseInfo, LeaseReader
from .memory import MemoryStore
from .objectstore import ObjectStore
from .urls import StoreURL, parse_store_url

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CLOCK_MARGIN",
    "DEFAULT_TTL",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "OLD_KEYS_ENV",
    "BlockError",
    "BlockIndexError",
    "BlockMissingError",
    "BlockSizeError",
    "BlockStore",
    "BlockStoreError",
    "BucketNotFoundError",
    "CommitUnknownError",
    "DocumentEncodeError",
    "DocumentError",
    "DocumentLoad",
    "DocumentTooLargeError",
    "FileStore",
    "GcItem",
    "GcReport",
    "KeyFileError",
    "KeyRing",
    "KeySettingError",
    "Lease",
    "LeaseError",
    "LeaseExpiredError",
    "LeaseHeldError",
    "LeaseInfo",
    "LeaseMismatchError",
    "LeaseNameError",
    "LeaseNotFoundError",
    "LeaseReader",
    "LeaseReleasedError",
    "LeaseScan",
    "LockTimeoutError",
    "MemoryStore",
    "ObjectStore",
    "SkippedSlot",
    "SlottedDocument",
    "StaleLeaseError",
    "StorageIOError",
    "StoreAccessDeniedError",
    "StoreCapabilities",
    "StoreClosedError",
    "StoreConfigError",
    "StoreCorruptError",
    "StoreEndpointError",
    "StorePathError",
    "StoreStats",
    "StoreURL",
    "StoreURLError",
    "StoreUnreachableError",
    "StoreVersionError",
    "canonical_json",
    "crc32c",
    "default_holder",
    "open_store",
    "parse_store_url",
    "resolve_keys",
]

_memory_stores: dict[str, MemoryStore] = {}
_memory_lock = threading.Lock()


def open_store(spec: str | os.PathLike[str], *, block_size: int | None = None,
               create: bool = True, shared: bool | None = None,
               clock_margin: float | None = None) -> BlockStore:
    """Open a store from a path or URL (the forms are in :mod:`blockstore.urls`).

    ``/path`` or ``file:///path``: :class:`FileStore`. ``memory://NAME``: the process's
    :class:`MemoryStore` of that name (created on first use). ``s3://``, ``gs://``,
    ``az://``: :class:`~blockstore.objectstore.ObjectStore` (needs the ``s3`` extra; always
    shared). A bad URL raises ``StoreURLError`` naming the wrong part. ``block_size`` and
    ``shared`` apply when a file store is created; an existing store keeps its own (a
    conflicting value raises ``StoreConfigError``). A memory store is never shared; with
    ``create=False`` a memory store this process has not made raises ``StorePathError``
    (it lives only in the process that made it, so a CLI never sees another's).
    ``clock_margin``: see :class:`BlockStore` ("Clocks").
    """
    url = parse_store_url(spec)
    if url.scheme == "memory":
        from .redact import redact_url

        shown = redact_url(str(spec))  # a URL given by mistake may carry a secret
        if shared:
            raise StoreConfigError(f"{shown}: a memory store is never shared")
        name = url.location
        with _memory_lock:
            st = _memory_stores.get(name)
            if (st is None or st.closed) and not create:
                raise StorePathError(
                    f"{shown}: no memory store of that name in this process (a memory "
                    "store lives only in the process that made it; give the file or "
                    "object-store URL the job used)", path=shown)
            if st is None or st.closed:
                st = MemoryStore(block_size or DEFAULT_BLOCK_SIZE, name=name,
                                 clock_margin=clock_margin)
                _memory_stores[name] = st
            elif block_size is not None and block_size != st.block_size:
                raise StoreConfigError(f"{url.to_url()} has block size {st.block_size}, "
                                       f"not {block_size}")
            return st
    if url.is_object_store:
        from .objectstore import ObjectStore
        return ObjectStore(url, block_size, create=create)
    return FileStore(url.location, block_size, create=create, shared=shared,
                     clock_margin=clock_margin)
