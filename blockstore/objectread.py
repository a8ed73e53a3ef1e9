"""Reads of an object store: block objects fetched by a lease record's block map, and the
read snapshot that lets a whole restore follow one record.

Why a snapshot: a read must never miss a flush that returned before it began, so a plain
read call fetches the lease record (overlapped with fetching the blocks by the record it
saw last: one round trip when the record has not changed). A restore reads a checkpoint in
many calls - 128 calls of 2 MiB for 256 MiB - and paid one record GET for each, half as
many GETs again as it had blocks. Inside :meth:`blockstore.lease.LeaseReader.snapshot` the
reads of that handle follow the record as it was when the snapshot opened: one record GET
for the whole restore, and every flush that returned before the snapshot opened is seen.
What the snapshot does not see - flushes that land while it is open - the layer above never
relies on: it checks what it read against checksums and the commit protocol of its own
(docs/FORMAT.md), never against read isolation.

Missing objects are handled as by a plain read: a block object that the snapshot's record
names and that is gone was replaced by a newer commit and deleted (as garbage of that
commit, or by gc). The read then re-reads the record, moves the snapshot to it and fetches
those blocks again by it, up to :data:`ATTEMPTS` records in all; if the objects are still
missing, :class:`~blockstore.errors.BlockMissingError` names them (a restore reports that
generation as corrupt and falls back to an older one). A snapshot never invents a record:
every record it follows is one the store held, so the fencing of writers is untouched -
reads carry no epoch and publish nothing.

Within one store object, reads also see that object's own unflushed writes of the record's
epoch, and a commit this store object makes to the lease while a snapshot is open moves
the snapshot to the committed record ("read your writes", as for plain reads).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .base import bounds_error
from .errors import BlockMissingError
from .lease import LeaseInfo
from .objectlayout import LeaseRecord, block_key

__all__ = ["ATTEMPTS", "RecordSnapshot", "fetch_blocks", "read_blocks"]

#: Records a read follows before it reports block objects as missing.
ATTEMPTS = 4

Item = tuple[int, memoryview]


def fetch_blocks(store: Any, lease_id: str, rec: LeaseRecord, todo: list[Item]) -> list[Item]:
    """Fill the buffers by ``rec``'s block map (and ``store``'s unflushed writes of its
    epoch), the objects fetched in the client's pool; return the items whose object was
    gone (replaced by a newer commit)."""
    with store._lease_lock(lease_id):
        pending = store._own_pending(lease_id, rec.info.epoch)
        mine = set(pending.indices) if pending else set()
        mine_gen = pending.generation if pending else ""
    client = store._c

    def fetch(item: Item) -> bool:
        i, buf = item
        gen = mine_gen if i in mine else rec.blocks.get(i)
        if gen is None:
            buf[:] = bytes(len(buf))
            return True
        got = client.get(block_key(lease_id, gen, i))
        if got is None:
            return False
        data = got[0]
        n = min(len(data), len(buf))
        buf[:n] = data[:n]
        if n < len(buf):
            buf[n:] = bytes(len(buf) - n)
        return True

    ok = client.map(fetch, todo)
    return [item for item, done in zip(todo, ok) if not done]


def _check_bounds(rec: LeaseRecord, todo: Sequence[Item]) -> None:
    for i, _buf in todo:
        if i >= rec.info.num_blocks:
            raise bounds_error(rec.info.lease_id, rec.info.name, i, rec.info.num_blocks)


def _missing(store: Any, lease_id: str, todo: Sequence[Item]) -> BlockMissingError:
    return BlockMissingError(f"lease {lease_id} in {store.url}: the objects of blocks "
                             f"{[i for i, _ in todo]} named by its record are missing",
                             path=store.url, lease_id=lease_id,
                             indices=tuple(i for i, _ in todo))


def read_blocks(store: Any, lease_id: str, indices: Sequence[int],
                buffers: Sequence[memoryview]) -> None:
    """A plain read: by the current record, fetched while the blocks are fetched by the
    record seen last (``store._seen``); a changed record means fetching again by it."""
    todo = list(zip(indices, buffers))
    hint = store._seen.get(lease_id)
    for _attempt in range(ATTEMPTS):
        if hint is not None and all(i < hint[0].info.num_blocks for i, _ in todo):
            # The record is read after the call began, so a flush that returned before it
            # is never missed; as usual it has not changed, and the blocks are already in.
            current = store._c.submit(store._record_by_id, lease_id)
            missing = fetch_blocks(store, lease_id, hint[0], todo)
            _, rec, etag = current.result()
            if etag == hint[1]:
                if not missing:
                    return
                todo, hint = missing, None
                continue
        else:
            _, rec, etag = store._record_by_id(lease_id)
        hint = None
        _check_bounds(rec, todo)
        store._seen[lease_id] = (rec, etag)
        todo = fetch_blocks(store, lease_id, rec, todo)
        if not todo:
            return
    raise _missing(store, lease_id, todo)


class RecordSnapshot:
    """The record one handle's reads follow while its snapshot is open (module docstring).

    Opened by ``ObjectStore._open_snapshot``, which reads the record once; thread-safe (a
    restore reads from a pool of threads through one handle).
    """

    def __init__(self, store: Any, lease_id: str) -> None:
        self._store = store
        self.lease_id = lease_id
        self._lock = threading.Lock()
        self._commits = store._commits.get(lease_id, 0)
        _, rec, etag = store._record_by_id(lease_id)
        self._rec: LeaseRecord = rec
        store._seen[lease_id] = (rec, etag)

    def _record(self, refresh: bool) -> LeaseRecord:
        """The record to follow: the snapshot's, unless ``refresh`` (objects it names are
        gone) or this store object committed to the lease since it was read."""
        st = self._store
        with self._lock:
            commits = st._commits.get(self.lease_id, 0)
            if not refresh and commits == self._commits:
                return self._rec
        _, rec, etag = st._record_by_id(self.lease_id)
        with self._lock:
            self._rec, self._commits = rec, commits
        st._seen[self.lease_id] = (rec, etag)
        return rec

    def info(self) -> LeaseInfo:
        """The lease as the snapshot's record has it (times in the caller's clock)."""
        return self._store._local(self._record(False).info)

    def read(self, indices: Sequence[int], buffers: Sequence[memoryview]) -> None:
        """Fill ``buffers[i]`` with block ``indices[i]`` by the snapshot's record: no record
        request, unless objects it names are missing (then as a plain read does)."""
        todo = list(zip(indices, buffers))
        for attempt in range(ATTEMPTS):
            rec = self._record(refresh=attempt > 0)
            _check_bounds(rec, todo)
            todo = fetch_blocks(self._store, self.lease_id, rec, todo)
            if not todo:
                return
        raise _missing(self._store, self.lease_id, todo)
