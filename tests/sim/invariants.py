"""The invariants of the object-store protocol, checked at every step of a simulated run.

The checker watches every mutation the bucket applies (so it knows each record put that
landed, who sent it, and each delete) and what clients report (a flush that returned, a
read's result). It fails the run - :class:`Violation`, naming the invariant - when:

* **dangling**: a live record (``leases/<name>.json``, not a tombstone) names a block object
  that does not exist ("every object a live record names exists");
* **reachable-deleted**: a DELETE removes a block object the current record of its lease
  names, or a lease record that is not a tombstone ("gc, release and delete remove only
  unreachable objects"; every record delete is of a tombstone);
* **zombie**: a record put that lands introduces a block of an epoch older than the
  record's own, or lowers the lease's epoch ("a stale holder's write is never visible");
* **lost-commit**: a flush returned success and then its blocks stopped being readable - the
  record no longer names them, or their objects are gone - while no newer epoch's commit
  (nor a later commit of the same holder, nor a delete of the lease) replaced them;
* **uncommitted-read**: a reader got bytes for a block that no landed record ever named;
* **unexpected-error**: a client call raised something that is not a
  :class:`~blockstore.errors.BlockStoreError` (a bug, not a specific error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blockstore.errors import StoreCorruptError
from blockstore.objectlayout import LEASES, LeaseRecord, block_key, decode_record, parse_block_key

from .store import Request, SimObject

__all__ = ["Checker", "Violation"]


class Violation(AssertionError):
    """An invariant failed; ``kind`` names it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass
class Commit:
    """A record put that landed: the blocks it named and their bytes at that moment."""

    version: int
    client: str
    lease_id: str
    epoch: int
    blocks: dict[int, str]
    payloads: dict[int, bytes]
    confirmed: set[int] = field(default_factory=set)  # indices a returned flush vouches for
    replaced: set[int] = field(default_factory=set)  # indices a legitimate commit replaced


#: Decoded records by their bytes: the checker reads every record at every step, and a
#: record's bytes decode to the same (never mutated) record every time.
_DECODED: dict[bytes, LeaseRecord | None] = {}


def _record(obj: SimObject | None) -> LeaseRecord | None:
    if obj is None:
        return None
    try:
        return _DECODED[obj.data]
    except KeyError:
        pass
    try:
        rec: LeaseRecord | None = decode_record(obj.data, "sim")
    except StoreCorruptError:
        rec = None
    if len(_DECODED) > 100_000:  # a long run: keep the memory bounded
        _DECODED.clear()
    _DECODED[obj.data] = rec
    return rec


class Checker:
    """Attach with :meth:`attach`; every check raises :class:`Violation`."""

    def __init__(self, world: object) -> None:
        self.world = world
        self.commits: dict[str, list[Commit]] = {}  # lease id -> landed record puts
        self.seen: dict[tuple[str, int], set[bytes]] = {}  # bytes any landed record named
        self.violations: list[Violation] = []
        self._records_at: tuple[int, dict[str, tuple[str, LeaseRecord]]] = (-1, {})

    def attach(self) -> Checker:
        w = self.world
        w.bucket.watchers.append(self._on_mutation)  # type: ignore[attr-defined]
        w.checks.append(self.check)  # type: ignore[attr-defined]
        return self

    def fail(self, kind: str, message: str) -> None:
        v = Violation(kind, message)
        self.violations.append(v)
        raise v

    # -- the bucket's mutations ------------------------------------------------------------
    @property
    def _objects(self) -> dict[str, SimObject]:
        return self.world.bucket.objects  # type: ignore[attr-defined]

    def _records(self) -> dict[str, tuple[str, LeaseRecord]]:
        """lease id -> (record key, record) of every record in the bucket now (computed once
        per bucket version: the bucket's objects change only with its version)."""
        version = self.world.bucket.version  # type: ignore[attr-defined]
        if self._records_at[0] == version:
            return self._records_at[1]
        out = {}
        for key, obj in self._objects.items():
            if key.startswith(LEASES):
                rec = _record(obj)
                if rec is not None:
                    out[rec.info.lease_id] = (key, rec)
        self._records_at = (version, out)
        return out

    def _on_mutation(self, req: Request, key: str, old: SimObject | None,
                     new: SimObject | None) -> None:
        if new is None:
            self._on_delete(req, key, old)
        elif key.startswith(LEASES):
            self._on_record_put(req, key, _record(old), _record(new))

    def _on_delete(self, req: Request, key: str, old: SimObject | None) -> None:
        if key.startswith(LEASES):
            rec = _record(old)
            if rec is not None and not rec.deleted:
                self.fail("reachable-deleted",
                          f"{req.client} deleted the live record {key} of lease "
                          f"{rec.info.lease_id} epoch {rec.info.epoch} (holder "
                          f"{rec.info.holder!r})")
            return
        parsed = parse_block_key(key)
        if parsed is None:
            return
        lease_id, gen, _epoch, index = parsed
        current = self._records().get(lease_id)
        if current is not None and not current[1].deleted and \
                current[1].blocks.get(index) == gen:
            self.fail("reachable-deleted",
                      f"{req.client} deleted {key}, which the current record of lease "
                      f"{lease_id} (epoch {current[1].info.epoch}) names")

    def _on_record_put(self, req: Request, key: str, old: LeaseRecord | None,
                       new: LeaseRecord | None) -> None:
        if new is None:
            return
        lid = new.info.lease_id
        prev = old if old is not None and old.info.lease_id == lid else None
        if prev is not None and new.info.epoch < prev.info.epoch:
            self.fail("zombie", f"{req.client} put {key} with epoch {new.info.epoch} over "
                                f"epoch {prev.info.epoch}")
        for i, g in new.blocks.items():
            parsed = parse_block_key(block_key(lid, g, i))
            assert parsed is not None
            carried = prev is not None and prev.blocks.get(i) == g
            if parsed[2] != new.info.epoch and not carried:
                self.fail("zombie", f"{req.client}'s put of {key} (epoch {new.info.epoch}) "
                                    f"publishes block {i} of generation {g}")
        payloads = {}
        for i, g in new.blocks.items():
            obj = self._objects.get(block_key(lid, g, i))
            if obj is not None:
                payloads[i] = obj.data
                self.seen.setdefault((lid, i), set()).add(obj.data)
        commit = Commit(self.world.bucket.version + 1, req.client, lid,  # type: ignore[attr-defined]
                        new.info.epoch, dict(new.blocks), payloads)
        for c in self.commits.get(lid, []):
            legit = new.deleted or new.info.epoch > c.epoch or (
                new.info.epoch == c.epoch and req.client == c.client)
            if legit:
                for i, g in c.blocks.items():
                    if new.deleted or new.blocks.get(i) != g:
                        c.replaced.add(i)
        self.commits.setdefault(lid, []).append(commit)

    # -- what clients report ----------------------------------------------------------------
    def flushed(self, client: str, lease_id: str, epoch: int, since: int,
                written: dict[int, bytes | None]) -> None:
        """``client``'s flush (or a call that commits: delete...) returned success; its
        writes ``written`` (index -> bytes, ``None`` where a failed write left the block
        unknown) must now be readable until replaced."""
        known = {i: d for i, d in written.items() if d is not None}
        if not known:
            return
        mine = [c for c in self.commits.get(lease_id, [])
                if c.client == client and c.version > since and c.epoch == epoch]
        if not mine:
            self.fail("lost-commit", f"{client}'s flush of lease {lease_id} epoch {epoch} "
                                     f"returned, but none of its record puts landed")
        c = mine[-1]
        for i, data in known.items():
            if c.payloads.get(i) != data and i not in c.replaced:
                self.fail("lost-commit", f"{client}'s flush of lease {lease_id} epoch "
                                         f"{epoch} returned, but its commit names "
                                         f"{c.payloads.get(i)!r} for block {i}, not {data!r}")
            c.confirmed.add(i)

    def read(self, client: str, lease_id: str, index: int, data: bytes) -> None:
        data = data.rstrip(b"\0")
        if data and data not in self.seen.get((lease_id, index), set()):
            self.fail("uncommitted-read", f"{client} read {data!r} from block {index} of "
                                          f"lease {lease_id}, which no record ever named")

    # -- after every step -------------------------------------------------------------------
    def check(self) -> None:
        if self.violations:  # found in a client's thread: fail the run
            raise self.violations[0]
        objects = self._objects
        records = self._records()
        for lid, (key, rec) in records.items():
            if rec.deleted:
                continue
            for i, g in rec.blocks.items():
                if block_key(lid, g, i) not in objects:
                    self.fail("dangling", f"the record {key} of lease {lid} epoch "
                                          f"{rec.info.epoch} names block {i} of generation "
                                          f"{g}, whose object is gone")
        for lid, commits in self.commits.items():
            for c in commits:
                for i in c.confirmed - c.replaced:
                    cur = records.get(lid)
                    if cur is None or cur[1].blocks.get(i) != c.blocks[i]:
                        where = "its record is gone" if cur is None else \
                            f"its record (epoch {cur[1].info.epoch}) names " \
                            f"{cur[1].blocks.get(i)!r}"
                        self.fail("lost-commit", f"block {i} that {c.client} flushed to "
                                                 f"lease {lid} epoch {c.epoch} is lost: "
                                                 f"{where}")
                    obj = objects.get(block_key(lid, c.blocks[i], i))
                    if obj is None or obj.data != c.payloads.get(i):
                        self.fail("lost-commit", f"block {i} that {c.client} flushed to "
                                                 f"lease {lid} epoch {c.epoch} is lost: "
                                                 "its object is gone")
