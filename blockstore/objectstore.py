"""Object-store backend (S3 and S3-compatible servers, GCS, Azure): fencing by conditional
writes of the lease record, blocks as immutable objects published on flush.

Why this shape: an object store has no per-write condition on data objects and no lock, so
the file store's rule "the store refuses a stale write atomically with applying it" becomes
"nothing a stale holder writes can ever become visible". Each lease has one record object
(``leases/<name>.json``, layout in :mod:`blockstore.objectlayout` and docs/FORMAT.md) that
holds the holder, the epoch, the expiry *and the block map*; every change to it is a
conditional put (``If-None-Match: *`` to create, ``If-Match: <etag>`` to update), so of two
writers racing from the same record exactly one succeeds and the other re-reads and
re-decides under the fencing rules (:mod:`blockstore.fencing`).

Writes upload each block at once as a new object under the holder's own generation prefix
``blocks/<lease_id>/e<epoch>.<token>/`` (a fresh token per flush cycle, so no published
object is ever overwritten). Nothing points at those objects until ``flush``, which puts
the record with the new block map on the condition that it is still the record that
carries the holder's epoch. A zombie whose takeover happened at any moment - before its
uploads, during them, after them - fails that put and gets ``StaleLeaseError``; its objects
stay unreferenced, invisible to every reader, and are garbage. Reads follow the record's
block map (a reader that meets a block deleted under it by a newer commit re-reads the
record and retries that block); a read snapshot lets a restore's many reads follow one
record read once (:mod:`blockstore.objectread`). Within one store object, reads also see that object's own
unflushed writes of the current epoch ("read your writes"); other processes see them after
``flush``. ``release`` publishes unflushed writes with the release (one conditional put).

Garbage - objects of failed or fenced flushes, blocks replaced by a later commit - is
removed without ever touching an object that a flush which can still succeed may publish:
replaced blocks right after the commit that replaced them; objects of an older epoch (their
flush can only fail now) and of a released lease after the first commit of each epoch and by
:meth:`ObjectStore.gc` (:mod:`blockstore.objectgc`). Objects of the current, held epoch that the record does not list are
kept: they may be the holder's unflushed writes.

Lease times are kept in the store's clock (see :class:`~blockstore.objectclient.StoreClock`)
and reported in the caller's.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .base import (
    DEFAULT_BLOCK_SIZE,
    BlockStore,
    GcReport,
    StoreCapabilities,
    bounds_error,
    check_block_size,
    check_min_age,
    new_lease_id,
)
from .checks import check_new_block_size
from .errors import (
    CommitUnknownError,
    LeaseError,
    LeaseHeldError,
    LeaseNotFoundError,
    StorageIOError,
    StoreConfigError,
    StoreCorruptError,
    StorePathError,
)
from .fencing import check_current, next_acquire, released, renewed
from .lease import LeaseInfo
from .objectclient import ObjectClient
from .objectgc import collect_lease, collect_store
from .objectlayout import (
    DOOM_WINDOW,
    LEASES,
    META_KEY,
    LeaseRecord,
    block_key,
    blocks_prefix,
    decode_meta,
    decode_record,
    encode_meta,
    encode_record,
    id_key,
    name_key,
    new_generation,
)
from .objectread import RecordSnapshot, read_blocks
from .urls import StoreURL, parse_store_url

__all__ = ["ObjectStore"]

#: Conditional puts that lose a race re-read and retry; this many losses in a row is an error.
MAX_RACES = 64
#: gc removes a tombstone (record of a deleted lease) only when it is at least this old.
TOMBSTONE_GRACE = 60.0


@dataclass
class _Pending:
    """This store object's unflushed writes to one lease: one generation per flush cycle."""

    epoch: int
    generation: str
    indices: set[int] = field(default_factory=set)
    #: A commit of these writes ended without a known outcome (an I/O error, or a lost race
    #: after its put): the record may name them, so they are never deleted on a refusal.
    maybe_published: bool = False


class ObjectStore(BlockStore):
    """A block store in an object-store bucket prefix (``s3://``, ``gs://``, ``az://``).

    Guarantees (each checked by the conformance suite and tests/test_store_s3*.py against a
    real S3 server): acquire, takeover, renew, release, resize and flush are conditional
    writes of the lease record, so across processes and machines exactly one of two racing
    holders wins and a fenced holder's writes never become visible. ``flush`` returns once
    the record naming every block written since the last flush is durable in the store.
    """

    # Shared by nature: every machine with the credentials reads it, so pickle checkpoints
    # on it need a key (stages/checkpoint/state.py refuses them otherwise).
    capabilities = StoreCapabilities(cross_process=True, durable=True, conditional_write=True,
                                     publish_on_flush=True, shared=True)

    def __init__(self, url: StoreURL | str, block_size: int | None = None, *,
                 create: bool = True, client: ObjectClient | None = None) -> None:
        self._u = url if isinstance(url, StoreURL) else parse_store_url(url)
        if not self._u.is_object_store:
            raise StoreConfigError(f"{self._u.to_url()} is not an object-store URL")
        self._c = client or ObjectClient(self._u)
        self._lock = threading.Lock()
        self._lease_locks: dict[str, threading.RLock] = {}
        self._pending: dict[str, _Pending] = {}
        self._names: dict[str, str] = {}  # lease id -> name, learned on the way
        self._collected: set[tuple[str, int]] = set()
        self._seen: dict[str, tuple[LeaseRecord, str]] = {}  # last record read, per lease
        self._commits: Counter[str] = Counter()  # record puts of ours that landed, per lease
        try:
            super().__init__(self._open_meta(block_size, create))
        except BaseException:
            self._c.close()
            raise

    def _open_meta(self, block_size: int | None, create: bool) -> int:
        if block_size is not None:
            check_block_size(block_size)
        got = self._c.get(META_KEY)
        if got is None:
            if not create:
                raise StorePathError(f"no blockpoint store at {self.url}", path=self.url)
            bs = check_new_block_size(block_size or DEFAULT_BLOCK_SIZE)
            if self._c.put_new(META_KEY, encode_meta(bs)) is not None:
                return bs
            got = self._c.get(META_KEY)  # created by a racing opener
            if got is None:
                raise StorageIOError(f"store metadata of {self.url} vanished", path=self.url)
        bs = decode_meta(bytes(got[0]), f"{self.url}/{META_KEY}")
        if block_size is not None and block_size != bs:
            raise StoreConfigError(f"{self.url} has block size {bs}, not {block_size}")
        return bs

    @property
    def url(self) -> str:
        return self._u.to_url()

    @property
    def requests(self) -> dict[str, int]:
        """Requests sent so far, by kind (``GET``, ``PUT``, ``LIST``, ``DELETE``)."""
        return dict(self._c.requests)

    # -- records ----------------------------------------------------------------------------
    def _lease_lock(self, lease_id: str) -> threading.RLock:
        with self._lock:
            return self._lease_locks.setdefault(lease_id, threading.RLock())

    def _local(self, info: LeaseInfo) -> LeaseInfo:
        """``info`` with its times moved from the store's clock to ours."""
        off = self._c.clock.offset
        if off == 0.0:
            return info
        return dataclasses.replace(
            info, created_at=info.created_at - off,
            expires_at=info.expires_at - off if info.expires_at else 0.0)

    def _get_record(self, key: str) -> tuple[LeaseRecord, str] | None:
        got = self._c.get(key)
        if got is None:
            return None
        rec = decode_record(bytes(got[0]), f"{self.url}/{key}")
        return rec, got[1]["e_tag"] or ""

    def _record_by_id(self, lease_id: str) -> tuple[str, LeaseRecord, str]:
        """``(record key, record, etag)`` of the live lease ``lease_id``."""
        candidates = []
        if lease_id in self._names:
            candidates.append(self._names[lease_id])
        pointer = None if candidates else self._c.get(id_key(lease_id))
        if pointer is not None:
            candidates.append(bytes(pointer[0]).decode("utf-8", "replace"))
        for name in candidates:
            got = self._get_record(name_key(name))
            if got is not None and got[0].info.lease_id == lease_id and not got[0].deleted:
                return name_key(name), got[0], got[1]
        if pointer is None and not candidates:  # a record whose pointer is not written yet
            for key, rec, etag in self._all_records(strict=False)[0]:
                if rec.info.lease_id == lease_id and not rec.deleted:
                    self._names[lease_id] = rec.info.name
                    return key, rec, etag
        raise LeaseNotFoundError(f"no lease {lease_id} in {self.url}", lease_id=lease_id)

    def _all_records(self, strict: bool) -> tuple[list[tuple[str, LeaseRecord, str]],
                                                  list[StoreCorruptError]]:
        keys = [m["path"] for m in self._c.list(LEASES) if m["path"].endswith(".json")]
        errors: list[StoreCorruptError] = []

        def one(key: str) -> tuple[str, LeaseRecord, str] | None:
            try:
                got = self._get_record(key)
            except StoreCorruptError as exc:
                if strict:
                    raise
                errors.append(exc)
                return None
            return None if got is None else (key, got[0], got[1])

        out = [r for r in self._c.map(one, keys) if r is not None]
        for _, rec, _ in out:
            if not rec.deleted:
                self._names.setdefault(rec.info.lease_id, rec.info.name)
        return out, errors

    def _update(self, lease_id: str, change: Callable[[LeaseRecord, float], LeaseRecord],
                pending: _Pending | None = None) -> tuple[LeaseRecord, LeaseRecord]:
        """Apply ``change`` to the record by a conditional put, re-reading after each lost
        race; ``change`` may raise (fencing) and is then re-raised with nothing written.
        Returns ``(record before, record after)``.

        ``pending``: the writes this put publishes. When ``change`` refuses after a put of
        them may have landed (a lost race whose winner is not recognisably us, or an
        earlier attempt that failed), the refusal is no proof that nothing was committed: a
        record naming their generation shows the commit landed (returned as ``(rec, rec)``:
        committed, nothing superseded here); otherwise :class:`CommitUnknownError`."""
        raced = False
        for _ in range(MAX_RACES):
            key, rec, etag = self._record_by_id(lease_id)
            try:
                changed = change(rec, self._c.clock.now())
            except LeaseError as exc:
                if pending is None or not (raced or pending.maybe_published):
                    raise
                if self._names_all(rec, pending):
                    return rec, rec  # our put landed; the record (now another's) names it
                raise CommitUnknownError(
                    f"lease {lease_id} in {self.url}: the commit of epoch {pending.epoch} may "
                    f"or may not have landed before epoch {rec.info.epoch} took over (its "
                    f"answer was lost); nothing it may have published was removed",
                    lease_id=lease_id, name=rec.info.name, epoch=pending.epoch,
                    current_epoch=rec.info.epoch) from exc
            new = dataclasses.replace(changed, nonce=secrets.token_hex(8))
            landed = self._c.put_if(key, encode_record(new), etag) is not None
            if not landed:
                again = self._get_record(key)
                landed = again is not None and again[0].nonce == new.nonce  # a retry landed
            if landed:
                self._commits[lease_id] += 1
                return rec, new
            raced = True
        raise StorageIOError(f"lease {lease_id} in {self.url}: lost {MAX_RACES} races in a row "
                             "for its record", path=self.url)

    # -- primitives -------------------------------------------------------------------------
    def _acquire(self, name: str, holder: str, ttl: float, num_blocks: int,
                 steal: bool) -> LeaseInfo:
        key = name_key(name)
        for _ in range(MAX_RACES):
            got = self._get_record(key)
            if got is not None and got[0].doomed_at:
                got = self._await_doomed(key, got)
            now = self._c.clock.now()
            nonce = secrets.token_hex(8)
            if got is None or got[0].deleted:
                info = next_acquire(None, lease_id=new_lease_id(), name=name, holder=holder,
                                    ttl=ttl, num_blocks=num_blocks, steal=steal,
                                    block_size=self.block_size, now=now)
                rec = LeaseRecord(info=info, ttl=ttl, nonce=nonce)
                body = encode_record(rec)
                done = (self._c.put_new(key, body) if got is None
                        else self._c.put_if(key, body, got[1]))
            else:
                info = next_acquire(got[0].info, lease_id=got[0].info.lease_id, name=name,
                                    holder=holder, ttl=ttl, num_blocks=num_blocks,
                                    steal=steal, block_size=self.block_size, now=now)
                rec = dataclasses.replace(got[0], info=info, ttl=ttl, nonce=nonce)
                done = self._c.put_if(key, encode_record(rec), got[1])
            if done is None:
                again = self._get_record(key)
                if again is None or again[0].nonce != nonce:
                    continue  # lost the race: decide again from the winner's record
            if info.epoch == 1:
                self._c.put(id_key(info.lease_id), name.encode())
            self._commits[info.lease_id] += 1
            self._names[info.lease_id] = name
            self._drop_pending(info.lease_id)
            return self._local(info)
        raise StorageIOError(f"lease {name!r} in {self.url}: lost {MAX_RACES} races in a row",
                             path=self.url)

    def _await_doomed(self, key: str, got: tuple[LeaseRecord, str]) -> tuple[LeaseRecord,
                                                                            str] | None:
        """A gc is removing this tombstone (docs/FORMAT.md 6.4): wait until it is gone (or
        replaced) and return what is there then; after ``DOOM_WINDOW`` it is safe to reuse."""
        until = got[0].doomed_at + DOOM_WINDOW
        while got is not None and got[0].doomed_at and self._c.clock.now() < until:
            time.sleep(0.05)
            got = self._get_record(key)
        return got

    def _renew(self, lease_id: str, holder: str, epoch: int, ttl: float) -> LeaseInfo:
        # No lease lock: a keepalive renewal must not wait behind a long upload; a renewal
        # racing this object's own flush loses one conditional put and re-applies itself.
        _, new = self._update(lease_id, lambda r, now: dataclasses.replace(
            r, info=renewed(r.info, epoch, ttl, now=now), ttl=ttl))
        return self._local(new.info)

    def _release(self, lease_id: str, holder: str, epoch: int) -> None:
        with self._lease_lock(lease_id):
            pending = self._own_pending(lease_id, epoch)

            def change(r: LeaseRecord, now: float) -> LeaseRecord:
                return dataclasses.replace(self._with_pending(r, pending),
                                           info=released(r.info, epoch))
            self._commit(lease_id, epoch, pending, change)

    def _resize(self, lease_id: str, epoch: int, num_blocks: int) -> LeaseInfo:
        with self._lease_lock(lease_id):
            def change(r: LeaseRecord, now: float) -> LeaseRecord:
                check_current(r.info, epoch, now=now)
                return dataclasses.replace(
                    r, info=dataclasses.replace(r.info, num_blocks=num_blocks),
                    blocks={i: g for i, g in r.blocks.items() if i < num_blocks})
            old, new = self._update(lease_id, change)
            self._delete_quietly(self._superseded(lease_id, old, new))
            pending = self._own_pending(lease_id, epoch)
            if pending is not None:
                dropped = [i for i in pending.indices if i >= num_blocks]
                pending.indices.difference_update(dropped)
                self._delete_quietly([block_key(lease_id, pending.generation, i)
                                      for i in dropped])
            return self._local(new.info)

    def _write(self, lease_id: str, epoch: int, indices: Sequence[int],
               datas: Sequence[memoryview]) -> None:
        """Upload under this flush cycle's generation while the record is read for the
        check (epoch, expiry, bounds): one round trip less per call, as reads overlap
        theirs. The uploads are invisible until a flush names them, so a refused write
        still changes nothing: what it uploaded is removed before the refusal is raised.
        A rewrite of a block already written this cycle is checked before it is uploaded
        (it replaces an object a refusal could not restore)."""
        def read() -> tuple[LeaseRecord, float]:
            return self._record_by_id(lease_id)[1], self._c.clock.now()

        def check(rec: LeaseRecord, now: float) -> None:
            # ``now``: when the record was read, as before the overlap; a hold that ran out
            # during a long upload is the next flush's to judge (it allows expiry).
            check_current(rec.info, epoch, now=now)
            for i in indices:
                if i >= rec.info.num_blocks:
                    raise bounds_error(lease_id, rec.info.name, i, rec.info.num_blocks)

        with self._lease_lock(lease_id):
            pending = self._own_pending(lease_id, epoch)
            other = pending is None and lease_id in self._pending  # another epoch's writes
            # Checked first: a rewrite, and a write that would drop another epoch's pending
            # writes (only a current epoch may; a stale handle must not drop the holder's).
            fresh = not other and (pending is None or not pending.indices.intersection(indices))
            current = self._c.submit(read) if fresh else None
            if current is None:
                check(*read())
            if pending is None:
                self._drop_pending(lease_id)
                pending = _Pending(epoch, new_generation(epoch))
                self._pending[lease_id] = pending
            elif pending.maybe_published and not fresh:
                pending = self._regenerate(lease_id, pending, set(indices))
            gen = pending.generation
            keys = [block_key(lease_id, gen, i) for i in indices]
            try:
                self._c.map(lambda pair: self._c.put(*pair), list(zip(keys, datas)))
            finally:
                if current is not None:
                    try:
                        check(*current.result())
                    except BaseException:
                        self._delete_quietly(keys)
                        if not pending.indices and self._pending.get(lease_id) is pending:
                            del self._pending[lease_id]  # created by this refused write
                        raise
            pending.indices.update(indices)

    def _regenerate(self, lease_id: str, old: _Pending, rewritten: set[int]) -> _Pending:
        """Move pending writes whose commit may have landed to a fresh generation before
        any of them is rewritten: a landed record may name the old generation's objects,
        and overwriting one would publish bytes no flush committed. The blocks not being
        rewritten are copied; the old objects stay (named, or gc's garbage)."""
        new = _Pending(old.epoch, new_generation(old.epoch), set(old.indices))
        keep = sorted(old.indices - rewritten)

        def copy(i: int) -> None:
            got = self._c.get(block_key(lease_id, old.generation, i))
            if got is None:
                raise StorageIOError(f"lease {lease_id} in {self.url}: unflushed block {i} "
                                     "is gone from the store", path=self.url)
            self._c.put(block_key(lease_id, new.generation, i), got[0])
        self._c.map(copy, keep)
        self._pending[lease_id] = new
        return new

    def _read(self, lease_id: str, indices: Sequence[int], buffers: Sequence[memoryview]) -> None:
        read_blocks(self, lease_id, indices, buffers)

    def _open_snapshot(self, lease_id: str) -> RecordSnapshot:
        return RecordSnapshot(self, lease_id)

    @property
    def read_batch_bytes(self) -> int:
        """One block per request the client's pool can have in flight."""
        return self._c.concurrency * self.block_size

    @property
    def write_batch_bytes(self) -> int:
        """Four blocks per request the client's pool can have in flight: a write call
        checks the record once and then waits for its slowest upload, so fewer, larger
        calls keep the pool busy (``docs/FORMAT.md`` 6.2)."""
        return 4 * self._c.concurrency * self.block_size

    def _flush(self, lease_id: str, epoch: int) -> None:
        with self._lease_lock(lease_id):
            pending = self._own_pending(lease_id, epoch)
            if pending is None or not pending.indices:
                _, rec, _ = self._record_by_id(lease_id)
                check_current(rec.info, epoch, now=self._c.clock.now(), allow_expired=True)
                return

            def change(r: LeaseRecord, now: float) -> LeaseRecord:
                check_current(r.info, epoch, now=now, allow_expired=True)
                return self._with_pending(r, pending)
            self._commit(lease_id, epoch, pending, change)

    def _info(self, lease_id: str) -> LeaseInfo:
        return self._local(self._record_by_id(lease_id)[1].info)

    def _list(self) -> list[LeaseInfo]:
        recs, _ = self._all_records(strict=True)
        return [self._local(r.info) for _, r, _ in recs if not r.deleted]

    def _scan(self) -> tuple[list[LeaseInfo], list[StoreCorruptError]]:
        recs, errors = self._all_records(strict=False)
        return [self._local(r.info) for _, r, _ in recs if not r.deleted], errors

    def find(self, name: str) -> LeaseInfo | None:
        """The record of lease ``name`` (one request: records are keyed by name)."""
        self._check_open()
        got = self._get_record(name_key(name))
        if got is None or got[0].deleted:
            return None
        self._names[got[0].info.lease_id] = name
        return self._local(got[0].info)

    def _delete(self, lease_id: str, holder: str | None, epoch: int | None) -> None:
        with self._lease_lock(lease_id):
            def change(r: LeaseRecord, now: float) -> LeaseRecord:
                if epoch is not None:
                    check_current(r.info, epoch, now=now, allow_expired=True)
                elif r.info.is_held(now):
                    raise LeaseHeldError(
                        f"lease {r.info.name!r} is held by {r.info.holder!r}",
                        holder=r.info.holder, expires_at=r.info.expires_at,
                        lease_id=lease_id, name=r.info.name, epoch=r.info.epoch)
                return dataclasses.replace(
                    r, deleted=True, blocks={},
                    info=dataclasses.replace(r.info, holder=None, expires_at=0.0))
            # The tombstone put is the decision; what follows only removes what it orphaned,
            # all under this lease's id (never reused). The tombstone stays: the record key
            # is shared with any lease created under the name later, and an object store
            # has no conditional delete, so only gc removes tombstones (objectgc.py).
            self._update(lease_id, change)
            self._pending.pop(lease_id, None)
            keys = [m["path"] for m in self._c.list(blocks_prefix(lease_id))]
            self._c.delete(keys + [id_key(lease_id)])
            self._names.pop(lease_id, None)
            self._seen.pop(lease_id, None)

    def _close(self) -> None:
        self._pending.clear()
        self._c.close()

    # -- commits and garbage ----------------------------------------------------------------
    def _own_pending(self, lease_id: str, epoch: int) -> _Pending | None:
        p = self._pending.get(lease_id)
        return p if p is not None and p.epoch == epoch else None

    def _drop_pending(self, lease_id: str) -> None:
        """Forget unflushed writes of an older epoch: they can never be published."""
        p = self._pending.pop(lease_id, None)
        if p is not None and not p.maybe_published:
            self._delete_quietly([block_key(lease_id, p.generation, i) for i in p.indices])

    @staticmethod
    def _names_all(r: LeaseRecord, pending: _Pending) -> bool:
        """Whether ``r`` names every block of ``pending`` (the proof that its commit landed).
        The generation alone proves nothing: an earlier commit of the same generation whose
        answer was lost (its writes stay pending) may have landed naming only some of them."""
        return all(r.blocks.get(i) == pending.generation
                   for i in pending.indices if i < r.info.num_blocks)

    @staticmethod
    def _with_pending(r: LeaseRecord, pending: _Pending | None) -> LeaseRecord:
        if pending is None or not pending.indices:
            return r
        blocks = dict(r.blocks)
        for i in pending.indices:
            if i < r.info.num_blocks:
                blocks[i] = pending.generation
        return dataclasses.replace(r, blocks=blocks)

    def _commit(self, lease_id: str, epoch: int, pending: _Pending | None,
                change: Callable[[LeaseRecord, float], LeaseRecord]) -> None:
        """Publish by a conditional record put; then remove what the commit made garbage.
        A refused commit (fenced, released) drops the writes it would have published."""
        try:
            old, new = self._update(lease_id, change, pending)
        except CommitUnknownError:
            self._pending.pop(lease_id, None)  # forgotten, never deleted: they may be named
            raise
        except LeaseError:
            if pending is not None:
                self._drop_pending(lease_id)
            raise
        except BaseException:
            if pending is not None:  # I/O error: the put may have landed
                pending.maybe_published = True
            raise
        if pending is not None:
            self._pending.pop(lease_id, None)
        self._delete_quietly(self._superseded(lease_id, old, new))
        if (lease_id, epoch) not in self._collected and epoch > 1:
            self._collected.add((lease_id, epoch))
            self._collect_lease(lease_id)

    @staticmethod
    def _superseded(lease_id: str, old: LeaseRecord, new: LeaseRecord) -> list[str]:
        return [block_key(lease_id, g, i) for i, g in old.blocks.items()
                if new.blocks.get(i) != g]

    def _collect_lease(self, lease_id: str) -> None:
        """Remove this lease's garbage, judged by its record as it is now: listed first,
        then the record read again (never this object's own last record: the lease may
        have a next holder already, whose flush that record cannot judge)."""
        metas = self._c.list(blocks_prefix(lease_id))
        collect_lease(self, lease_id, metas, self._current_record(lease_id), False)

    def _current_record(self, lease_id: str) -> LeaseRecord | None:
        """The live record of ``lease_id`` read now, or ``None`` if the lease is gone."""
        try:
            return self._record_by_id(lease_id)[1]
        except LeaseNotFoundError:
            return None

    def _delete_quietly(self, keys: Sequence[str]) -> None:
        """Remove garbage now if we can; what fails here is left to the next ``gc``."""
        if keys:
            try:
                self._c.delete(keys)
            except StorageIOError:
                pass

    def gc(self, *, dry_run: bool = False, min_age: float = TOMBSTONE_GRACE) -> GcReport:
        """Remove every object no reader can see and no flush that may still succeed can
        publish, and the records of deleted leases. The rule, and the order that makes it
        safe against leases created and flushed while it runs, are in
        :mod:`blockstore.objectgc`.

        Safe while holders are running: objects of the current epoch of a held lease are
        kept even when unreferenced (they may be unflushed writes; counted in
        ``GcReport.kept``). Tombstones are removed when older than ``min_age`` seconds (in
        the store's clock; default ``TOMBSTONE_GRACE``). ``dry_run`` lists, removes nothing.
        """
        self._check_open()
        return collect_store(self, bool(dry_run), check_min_age(min_age))
