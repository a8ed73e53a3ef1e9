"""Garbage of an object store: which block objects, pointers and tombstones can go, and when.

The rule (docs/FORMAT.md 6.4): a block object is garbage when no reader can see it and no
flush that may still succeed can publish it. Judging that from a listing is only sound in
one order, because a record changes while the collector works and every request of another
process can land between two of ours:

1. **List the objects first, then read the records.** A block object is written only by
   the holder of its epoch, after the acquire that created that epoch; so an object that
   the object listing shows was written after its epoch's record existed, and a record
   read after the listing carries that epoch or a newer one. The reverse order (records,
   then objects) judges a lease created - or a released lease re-acquired - between the two
   listings by a record that predates it, and deletes its published blocks.
2. **Re-read the record of every lease with a candidate just before deciding**, and keep
   whatever that record names. A verdict "garbage" under a record is final: the object's
   epoch is older than the record's (its holder's flush must fail) or that epoch was
   released (its writes were published by the release); a later record can never name it.
3. **Keep objects written at or after the collection began** (their ``last_modified``, in
   the store's clock): defence in depth for listings that lag; on S3 the stamps are whole
   seconds, so rule 1 is what makes a collection safe, this rule only narrows it further.

A lease whose record is gone (its tombstone collected) leaves objects only when its
``delete_lease`` was interrupted; without a record to judge them by, they are removed only
once older than the collection's ``min_age``.

Tombstones (records of deleted leases) are removed only here, by :func:`remove_tombstone`:
the record key is shared with any lease created under the name later, and an object store
has no conditional delete.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

from .base import GcItem, GcReport
from .errors import StorageIOError
from .objectlayout import (
    DOOM_WINDOW,
    LEASES,
    LeaseRecord,
    blocks_prefix,
    encode_record,
    parse_block_key,
)
from .objectclient import ObjectClient


class ObjectStore(Protocol):
    """What collection needs of :class:`blockstore.objectstore.ObjectStore` (named by this
    Protocol so the modules do not import each other)."""

    _c: ObjectClient

    @property
    def url(self) -> str: ...

    def _all_records(self, strict: bool) -> tuple[list[tuple[str, LeaseRecord, str]],
                                                  list[Any]]: ...

    def _current_record(self, lease_id: str) -> LeaseRecord | None: ...

    def _get_record(self, key: str) -> tuple[LeaseRecord, str] | None: ...

    def _delete_quietly(self, keys: Sequence[str]) -> None: ...


__all__ = ["collect_lease", "collect_store", "is_garbage", "remove_tombstone"]


def is_garbage(rec: LeaseRecord | None, generation: str, epoch: int, index: int) -> bool:
    """Whether a block object can be removed, given its lease's record read after the
    object was listed (module docstring, rule 1).

    Referenced objects never are. Unreferenced ones are garbage when no flush that may still
    succeed can publish them: the lease is gone, the object's epoch is older than the
    record's (that holder's flush must fail), or the record's epoch was released (its
    writes were published by the release). An object of an epoch newer than the record's
    is never garbage: the record read is older than the object, so it cannot judge it.
    """
    if rec is None or rec.deleted:
        return True
    if rec.blocks.get(index) == generation:
        return False
    if epoch > rec.info.epoch:
        return False
    return epoch < rec.info.epoch or rec.info.holder is None


def _stamp(meta: Any) -> float:
    lm = meta.get("last_modified")
    return lm.timestamp() if lm is not None else float("inf")


def _item(meta: Any, lease_id: str) -> GcItem:
    return GcItem(meta["path"], "block", int(meta.get("size") or 0), lease_id)


def collect_lease(store: ObjectStore, lease_id: str, metas: list[Any] | None,
                  rec: LeaseRecord | None, dry_run: bool, *,
                  since: float | None = None) -> tuple[list[GcItem], int]:
    """Judge and (unless ``dry_run``) remove the garbage among ``metas``, the lease's block
    objects listed before ``rec`` was read (``None``: list them now). Objects stamped at or
    after ``since`` (store clock) are kept. Returns ``(removed items, kept)``, where kept
    counts unreferenced objects left on purpose."""
    if metas is None:
        metas = store._c.list(blocks_prefix(lease_id))
    garbage: list[GcItem] = []
    kept = 0
    for meta in metas:
        parsed = parse_block_key(meta["path"])
        if parsed is None:
            continue
        _, gen, epoch, index = parsed
        young = since is not None and _stamp(meta) >= since
        if is_garbage(rec, gen, epoch, index) and not young:
            garbage.append(_item(meta, lease_id))
        elif rec is None or rec.blocks.get(index) != gen:
            kept += 1
    if not dry_run:
        store._delete_quietly([i.path for i in garbage])
    return garbage, kept


def collect_store(store: ObjectStore, dry_run: bool, min_age: float) -> GcReport:
    """:meth:`ObjectStore.gc`: the whole store, in the order the module docstring gives."""
    c = store._c
    start = c.clock.now()
    by_lease: dict[str, list[Any]] = defaultdict(list)
    for meta in c.list("blocks/"):
        parsed = parse_block_key(meta["path"])
        if parsed is not None:
            by_lease[parsed[0]].append(meta)
    pointers = c.list("ids/")
    records, _ = store._all_records(strict=False)  # read after both listings (rule 1)
    listed = {r.info.lease_id: (key, r) for key, r, _ in records}
    live = {lid for lid, (_, r) in listed.items() if not r.deleted}
    items: list[GcItem] = []
    kept = 0
    for lease_id in sorted(by_lease):
        metas = by_lease[lease_id]
        entry = listed.get(lease_id)
        if entry is None:  # no record: removed only when old (a delete cut short)
            rec = store._current_record(lease_id)
            since = start - min_age if rec is None else start
        else:
            rec, since = entry[1], start
            if not rec.deleted and any(
                    is_garbage(rec, *parse_block_key(m["path"])[1:]) for m in metas):  # type: ignore[misc]
                rec = store._current_record(lease_id)  # rule 2: the newest verdict
        found, k = collect_lease(store, lease_id, metas, rec, dry_run, since=since)
        items += found
        kept += k
    for m in pointers:
        lease_id = m["path"].split("/", 1)[1]
        if lease_id not in live and store._current_record(lease_id) is None:
            items.append(GcItem(m["path"], "id pointer", int(m.get("size") or 0), lease_id))
    if not dry_run:
        store._delete_quietly([i.path for i in items if i.kind == "id pointer"])
    now = c.clock.now()
    listing = {m["path"]: m for m in c.list(LEASES)}
    for key, rec, etag in records:
        meta = listing.get(key)
        age = now - meta["last_modified"].timestamp() if meta else 0.0
        if rec.deleted and age >= min_age and (dry_run or remove_tombstone(store, key, rec,
                                                                            etag)):
            items.append(GcItem(key, "lease record", int(meta.get("size") or 0) if meta
                                else 0, rec.info.lease_id))
    return GcReport(store.url, tuple(items), len(live), bool(dry_run), kept=kept)


def remove_tombstone(store: ObjectStore, key: str, rec: LeaseRecord, etag: str) -> bool:
    """Remove a tombstone unless a lease was created over it: the doom protocol of
    docs/FORMAT.md 6.4. An object store has no conditional delete, so the tombstone is first
    doomed by a conditional put (which fails if anyone replaced it since ``etag``); a
    creator leaves a doomed tombstone alone for ``DOOM_WINDOW``, and the delete is sent only
    while less than half of that has passed since the doom put was sent."""
    c = store._c
    sent = time.monotonic()
    doomed = dataclasses.replace(rec, doomed_at=c.clock.now(), nonce=secrets.token_hex(8))
    if c.put_if(key, encode_record(doomed), etag) is None:
        again = store._get_record(key)  # an answer lost and retried: 412 on our own put
        if again is None or again[0].nonce != doomed.nonce:
            return False  # replaced (a lease created over it) or removed: not ours
    if time.monotonic() - sent >= DOOM_WINDOW / 2:
        return False  # too slow: a creator may reuse it soon; the next gc dooms it again
    try:  # sent once: a client retry landing after a re-create would remove a live record
        c.delete_once(key)
    except StorageIOError:
        pass  # removed or not: either is safe; the next gc sees which
    return True
