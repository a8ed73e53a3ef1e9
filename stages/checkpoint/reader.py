"""The checkpoint reader: header slots, block map and payload, read back and proven intact.

This module is the read side of the format (``docs/FORMAT.md``) - what ``restore``
(:mod:`stages.checkpoint.restore`) depends on, and what ``blockpoint verify`` runs without
decoding anything (:mod:`stages.checkpoint.verify`):

* :func:`scan_slots` finds the header slots and parses each one (magic, version, header CRC).
* :func:`load_map` loads a generation's block map (inline or spilled) and checks its CRC and
  every entry's bounds - a block beyond the lease means the lease was truncated.
* :func:`read_payload` reads every chunk into ONE preallocated buffer of the payload length
  (raw chunks land in place through ``read_blocks_into`` memoryview slices, no per-block bytes
  objects). The buffer is a numpy ``uint8`` array rather than a ``bytearray``: numpy asks
  the kernel for transparent huge pages on large allocations, which makes filling 256 MiB
  ~5x faster here (0.026 s vs 0.14 s: a bytearray takes 65,536 page faults). It checks
  each chunk's CRC-32C in a small thread pool while later chunks are read
  (CRC-32C and zstd release the GIL; the tasks are :mod:`stages.checkpoint.chunkchecks`),
  decompresses zstd chunks in place, and feeds the payload MAC (when a key is set) in
  payload order as batches land - by the read tasks themselves when every chunk is raw,
  else on the calling thread - never as a second pass after the last read
  (``bench/notes/restore.md``).
* headers are authenticated by :func:`~stages.checkpoint.mac.check_header_mac` before the
  map or the payload they point to is read.

Nothing here returns or decodes data that failed a check: the first failure raises a
:class:`~stages.errors.CheckpointCorrupt` subclass naming lease, generation and block.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from threading import Lock
from typing import Any

import numpy as np

from blockstore import BlockIndexError, BlockMissingError, LeaseReader, crc32c
from blockstore.work import advance

from . import format as fmt
from .chunkchecks import Failure, MacChain, check_zstd, first_bad, read_and_check
from ..errors import CheckpointAuthError, CheckpointCorrupt, TruncatedCheckpointError
from .format import CHUNK_RAW, CHUNK_ZSTD, MAPBLOCK, Header, MapEntry
from .mac import KeyRing, KeySetting, PayloadMac, check_header_mac, equal, resolve_keys

__all__ = [
    "SlotScan",
    "load_map",
    "read_payload",
    "read_slots",
    "scan_slots",
    "worker_pool",
]

log = logging.getLogger(__name__)

#: The smallest stored zstd chunk (frame magic, header, one block header, one byte); a map
#: claiming less is forged, and this bounds how many chunks one block can hold.
MIN_ZSTD_FRAME = 9
READ_BATCH = 2 * 1024 * 1024  # small enough to CRC while cached, big enough to amortize a read call
#: With a key and raw chunks only, the read tasks feed the MAC (``chunkchecks.MacChain``):
#: larger batches there - each costs a store call and a hand-over in the chain, and the MAC
#: reads a batch back from L3 nearly as fast as from L2 (4 MiB measured best of 2-16 MiB).
KEYED_READ_BATCH = 4 * 1024 * 1024
_pool: ThreadPoolExecutor | None = None
_pool_lock = Lock()


def _forget_pool_in_child() -> None:
    global _pool
    _pool = None  # threads do not survive fork(); a child builds its own pool on first use


os.register_at_fork(after_in_child=_forget_pool_in_child)


def worker_pool() -> ThreadPoolExecutor:
    """The process-wide pool that checksums and (de)compresses chunks beside the I/O."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=min(4, max(2, os.cpu_count() or 2)),
                                           thread_name_prefix="blockpoint-chunks")
    return _pool


@dataclass(frozen=True, slots=True)
class SlotScan:
    """One header slot as found: a parsed header, or the reason it is not one.

    ``empty`` means the slot reads as all zeros (never written, or erased before a commit).
    """

    slot: int
    header: Header | None
    error: CheckpointCorrupt | None
    empty: bool


def _read_full(reader: LeaseReader, indices: Sequence[int]) -> list[bytearray]:
    bs = reader.block_size
    bufs = [bytearray(bs) for _ in indices]
    reader.read_blocks_into(list(indices), [memoryview(b) for b in bufs])
    return bufs


def read_slots(reader: LeaseReader, indices: Sequence[int]) -> list[bytearray | None]:
    """Whole blocks, ``None`` for each whose object is missing from the store (a header
    slot that is gone is an unreadable slot, not a failed scan)."""
    try:
        return list(_read_full(reader, indices))
    except BlockMissingError:
        out: list[bytearray | None] = []
        for i in indices:
            try:
                out.append(_read_full(reader, [i])[0])
            except BlockMissingError:
                out.append(None)
        return out


def scan_slots(reader: LeaseReader) -> tuple[int | None, list[SlotScan]]:
    """Parse the header slots of a lease: ``(slot count K or None, scans)``.

    K is taken from the newest valid header. If neither of the first two blocks (K >= 2
    always) holds a valid header, the first bytes of blocks up to :data:`format.MAX_SLOTS`
    are probed for a header whose slot index matches its position, so a lease whose first
    slots are damaged is still found.
    """
    nb = reader.num_blocks
    lid, name = reader.lease_id, reader.name
    if nb == 0:
        return None, []

    def parse(i: int, block: bytearray | None) -> SlotScan:
        if block is None:
            return SlotScan(i, None, CheckpointCorrupt(
                f"header slot {i} of lease {name!r} ({lid}): its block is missing from the "
                "store", lease_id=lid, name=name, slot=i, block=i), False)
        if fmt.is_zero(block):
            return SlotScan(i, None, None, True)
        try:
            return SlotScan(i, fmt.parse_header(block, slot=i, lease_id=lid, name=name),
                            None, False)
        except CheckpointCorrupt as exc:
            return SlotScan(i, None, exc, False)

    first = min(2, nb)
    scans = [parse(i, b) for i, b in enumerate(read_slots(reader, range(first)))]
    valid = [s.header for s in scans if s.header is not None]
    if not valid and nb > first:
        limit = min(nb, fmt.MAX_SLOTS)
        for i, head in zip(range(first, limit), read_slots(reader, range(first, limit))):
            if head is not None and head[:4] == fmt.MAGIC:
                s = parse(i, head)
                if s.header is not None:
                    valid.append(s.header)
    if not valid:
        return None, scans
    k = max(valid, key=lambda h: h.generation).slots
    if k > first:
        rest = list(range(first, min(k, nb)))
        scans += [parse(i, b) for i, b in zip(rest, read_slots(reader, rest))]
        for i in range(min(k, nb), k):
            scans.append(SlotScan(i, None, TruncatedCheckpointError(
                f"header slot {i} of lease {name!r} ({lid}) is beyond the lease of {nb} blocks",
                lease_id=lid, name=name, slot=i, block=i), False))
    return k, scans[:k]


def _ctx(reader: LeaseReader, h: Header) -> dict[str, Any]:
    return {"lease_id": reader.lease_id, "name": reader.name, "generation": h.generation,
            "slot": h.slot}


def _ring(key: KeySetting) -> KeyRing | None:
    """``key`` as a ring; ``None`` stays None (here None means "no key", never the env)."""
    return None if key is None else resolve_keys(key)


def _missing(reader: LeaseReader, h: Header, exc: BlockMissingError) -> CheckpointCorrupt:
    """Blocks of a generation whose objects are gone (an object store): the generation is
    corrupt like one with a damaged block; an older one may still restore."""
    return CheckpointCorrupt(
        f"lease {reader.name!r} ({reader.lease_id}) generation {h.generation}: blocks "
        f"{list(exc.indices)} are missing from the store", block=exc.indices[0]
        if exc.indices else None, **_ctx(reader, h))


def load_map(reader: LeaseReader, h: Header, *,
             key: KeySetting = None) -> tuple[list[MapEntry], list[int]]:
    """:func:`_load_map`, with blocks missing from the store reported as corruption of this
    generation (:class:`CheckpointCorrupt`)."""
    try:
        with reader.snapshot():  # one record lookup for all its reads (object stores)
            return _load_map(reader, h, key=key)
    except BlockMissingError as exc:
        raise _missing(reader, h, exc) from exc


def _load_map(reader: LeaseReader, h: Header, *,
              key: KeySetting = None) -> tuple[list[MapEntry], list[int]]:
    """The generation's block map and its spilled map blocks, checked.

    With ``key`` (a ring or one key) the header MAC is checked first. The work is bounded by the lease, whatever
    the header claims: at most one pass over each map block (a revisited one is a loop),
    at most as many map blocks as the lease has, and the entries must reference distinct
    blocks (raw chunks) or disjoint ranges (packed zstd chunks) of the lease.

    Raises :class:`TruncatedCheckpointError` if any referenced block lies beyond the lease,
    :class:`CheckpointCorrupt` if the map CRC or an entry's bounds are wrong,
    :class:`CheckpointAuthError` if ``key`` is set and the header MAC does not verify.
    """
    ring = _ring(key)
    if ring is not None:
        check_header_mac(reader, h, ring)
    ctx = _ctx(reader, h)
    nb = reader.num_blocks
    bs = reader.block_size
    where = f"lease {reader.name!r} ({reader.lease_id}) generation {h.generation}"
    map_blocks: list[int] = []
    if not h.spilled:
        raw = h.inline_map
        if crc32c(raw) != h.map_crc:
            raise CheckpointCorrupt(f"{where}: block map CRC-32C mismatch (in header slot "
                                    f"{h.slot})", block=h.slot, **ctx)
        entries = fmt.unpack_entries(raw, h.version)
    else:
        epb = fmt.entries_per_map_block(bs, h.version)
        if h.map_blocks > max(nb - h.slots, 0) or h.chunks > h.map_blocks * epb:
            raise CheckpointCorrupt(f"{where}: header claims {h.map_blocks} map blocks for "
                                    f"{h.chunks} chunks; the lease has {nb} blocks",
                                    block=h.slot, **ctx)
        entries = []
        crc = 0
        nxt = h.first_map_block
        visited: set[int] = set()
        for k in range(h.map_blocks):
            if nxt in visited:
                raise CheckpointCorrupt(f"{where}: map block {nxt} is referenced twice (the "
                                        "map chain loops)", block=nxt, **ctx)
            visited.add(nxt)
            if nxt >= nb:
                raise TruncatedCheckpointError(f"{where}: map block {nxt} is beyond the lease "
                                               f"of {nb} blocks", block=nxt, **ctx)
            if nxt < h.slots:
                raise CheckpointCorrupt(f"{where}: map block {nxt} points into the header "
                                        "slots", block=nxt, **ctx)
            blk = _read_full(reader, [nxt])[0]
            following, count, own_crc = MAPBLOCK.unpack_from(blk, 0)
            if count > epb:
                raise CheckpointCorrupt(f"{where}: map block {nxt} claims {count} entries",
                                        block=nxt, **ctx)
            used = memoryview(blk)[:MAPBLOCK.size + count * h.entry_size]
            check = bytearray(used)
            MAPBLOCK.pack_into(check, 0, following, count, 0)
            if crc32c(check) != own_crc:
                raise CheckpointCorrupt(f"{where}: map block {nxt} fails its CRC-32C",
                                        block=nxt, **ctx)
            crc = crc32c(used, crc)
            entries += fmt.unpack_entries(used[MAPBLOCK.size:], h.version)
            if len(entries) > h.chunks:
                raise CheckpointCorrupt(f"{where}: the map holds more than the {h.chunks} "
                                        "entries the header says", block=nxt, **ctx)
            map_blocks.append(nxt)
            nxt = following
        if crc != h.map_crc:
            raise CheckpointCorrupt(f"{where}: spilled block map CRC-32C mismatch (map blocks "
                                    f"{map_blocks})", block=map_blocks[0] if map_blocks else None,
                                    **ctx)
    if len(entries) != h.chunks:
        raise CheckpointCorrupt(f"{where}: block map has {len(entries)} entries, header says "
                                f"{h.chunks}", **ctx)
    total = 0
    in_map = set(map_blocks)
    raw_blocks: set[int] = set()
    packed: dict[int, list[tuple[int, int]]] = {}
    for e in entries:
        if e.block >= nb:
            raise TruncatedCheckpointError(f"{where}: data block {e.block} is beyond the lease "
                                           f"of {nb} blocks (truncated lease)", block=e.block,
                                           **ctx)
        bad = (e.block < h.slots or e.offset + e.stored > bs or e.raw > bs
               or e.flags not in (CHUNK_RAW, CHUNK_ZSTD)
               or (e.flags == CHUNK_RAW and (e.offset != 0 or e.stored != e.raw))
               or (e.flags == CHUNK_ZSTD and e.stored < MIN_ZSTD_FRAME)
               or e.block in in_map)
        if bad:
            raise CheckpointCorrupt(f"{where}: block map entry for block {e.block} is invalid",
                                    block=e.block, **ctx)
        if e.flags == CHUNK_RAW:
            if e.block in raw_blocks or e.block in packed:
                raise CheckpointCorrupt(f"{where}: block {e.block} is referenced by more than "
                                        "one chunk", block=e.block, **ctx)
            raw_blocks.add(e.block)
        else:
            if e.block in raw_blocks:
                raise CheckpointCorrupt(f"{where}: block {e.block} is referenced by more than "
                                        "one chunk", block=e.block, **ctx)
            packed.setdefault(e.block, []).append((e.offset, e.offset + e.stored))
        total += e.raw
    for block, ranges in packed.items():
        ranges.sort()
        if any(a_end > b_start for (_, a_end), (b_start, _) in zip(ranges, ranges[1:])):
            raise CheckpointCorrupt(f"{where}: packed chunks of block {block} overlap",
                                    block=block, **ctx)
    if total != h.data_length:
        raise CheckpointCorrupt(f"{where}: block map covers {total} bytes, header says "
                                f"{h.data_length}", **ctx)
    return entries, map_blocks


def _mac_in_order(key: bytes, alg: int, mv: memoryview,
                  regions: list[tuple[int, int, Future[Failure]]],
                  verifying: bytes) -> bytes:
    """The payload MAC of ``mv``, each region hashed as soon as the task filling it is done.

    Runs on the calling thread while the pool reads and checks later chunks (blake3,
    hashlib and OpenSSL's GMAC release the GIL on large updates). A region whose task
    failed is hashed anyway: the caller checks the tasks' results before it compares the
    digest, so a CRC failure is reported as one.
    """
    mac = PayloadMac(key, alg, verifying)
    regions = sorted(regions, key=lambda r: r[0])
    i = 0
    while i < len(regions):
        start, n, fut = regions[i]
        end = start + n
        i += 1
        while i < len(regions) and regions[i][2] is fut and regions[i][0] == end:
            end += regions[i][1]  # consecutive chunks of one task: one update
            i += 1
        fut.result()
        mac.update_all([mv[start:end]])
    return mac.digest()


def read_payload(reader: LeaseReader, h: Header, entries: Sequence[MapEntry], *,
                 key: KeySetting, kind: str = "restore_bytes") -> np.ndarray:
    """:func:`_read_payload`, with blocks missing from the store reported as corruption of
    this generation (:class:`CheckpointCorrupt`).

    Progress goes to :func:`blockstore.work.advance` as each batch's check completes, as
    ``kind``: ``"restore_bytes"`` counts payload bytes, ``"verify_bytes"`` (what
    :func:`~stages.checkpoint.verify.verify_lease` reads) the stored bytes read."""
    if kind not in ("restore_bytes", "verify_bytes"):
        raise ValueError(f"kind must be 'restore_bytes' or 'verify_bytes', got {kind!r}")
    try:
        with reader.snapshot():  # one record lookup for all its reads (object stores)
            return _read_payload(reader, h, entries, key=key, kind=kind)
    except BlockMissingError as exc:
        raise _missing(reader, h, exc) from exc


def _read_payload(reader: LeaseReader, h: Header, entries: Sequence[MapEntry], *,
                  key: KeySetting, kind: str) -> np.ndarray:
    """Read, check and assemble the payload of a generation into one new buffer.

    Every chunk's CRC is verified (and the MAC, when ``key`` is set) before this returns; the
    caller may decode the result. ``key`` set and no MAC in the header, or a header MAC that
    matches no key -> :class:`CheckpointAuthError` before any data is read. The payload
    MAC is checked under the one key the header MAC matched.

    With a key, the CRCs of raw chunks are checked only if the payload MAC fails: a MAC
    that matches proves every payload byte (a raw chunk's stored bytes are payload bytes),
    and skipping the redundant CRCs is what lets a keyed restore keep up with an unkeyed
    one on two cores. On a mismatch they are checked then, so damage is still reported as
    a CRC failure naming the block, and only a payload whose chunks all pass their CRCs is
    called unauthentic. zstd chunks are always CRC-checked before they are decompressed.
    """
    ctx = _ctx(reader, h)
    where = f"lease {reader.name!r} ({reader.lease_id}) generation {h.generation}"
    ring = _ring(key)
    writer_key = check_header_mac(reader, h, ring) if ring is not None else None
    pool = worker_pool()
    try:
        buf = np.empty(h.data_length, dtype=np.uint8)
    except MemoryError as exc:
        raise CheckpointCorrupt(f"{where}: claims a payload of {h.data_length} bytes, more "
                                "than can be allocated", **ctx) from exc
    mv = memoryview(buf)
    bs = reader.block_size
    read_batch = max(READ_BATCH, reader.store.read_batch_bytes)  # keep the store busy
    pending: list[Future[Failure]] = []
    # (payload offset, length, the task that fills and checks it): the MAC is fed in payload
    # order as tasks finish, so it runs beside the reads instead of as a second pass.
    regions: list[tuple[int, int, Future[Failure]]] = []
    stored: dict[Future[Failure], int] = {}  # the stored bytes each task read (verify_bytes)
    raw_items: list[tuple[memoryview, MapEntry]] = []  # CRCs checked later (keyed)
    crc_now = writer_key is None
    # Raw chunks only (the usual numpy state): the read tasks feed the MAC themselves.
    chain = (MacChain(writer_key, h.mac_algorithm, h.payload_mac)
             if writer_key is not None and all(e.flags == CHUNK_RAW for e in entries)
             else None)
    limit = max(read_batch, READ_BATCH if chain is None else KEYED_READ_BATCH)
    idx: list[int] = []
    views: list[memoryview] = []
    batch: list[tuple[memoryview, MapEntry]] = []
    offs: list[tuple[int, int]] = []
    zstd: list[tuple[int, MapEntry]] = []
    nbytes = 0

    def flush_raw() -> None:
        nonlocal idx, views, batch, offs, nbytes
        if idx and chain is not None:
            first, last = offs[0][0], offs[-1][0] + offs[-1][1]
            fut = pool.submit(chain.read_and_feed, len(pending), reader, idx, batch,
                              mv[first:last])
        elif idx:
            fut = pool.submit(read_and_check, reader, idx, batch, crc_now)
        if idx:
            if not crc_now:
                raw_items.extend(batch)
            pending.append(fut)
            stored[fut] = nbytes
            regions.extend((o, n, fut) for o, n in offs)
        idx, views, batch, offs, nbytes = [], [], [], [], 0

    try:
        off = 0
        for e in entries:
            if e.flags == CHUNK_RAW:
                view = mv[off:off + e.raw]
                idx.append(e.block)
                views.append(view)
                batch.append((view, e))
                offs.append((off, e.raw))
                nbytes += e.raw
                if nbytes >= limit:
                    flush_raw()
            else:
                zstd.append((off, e))
            off += e.raw
        flush_raw()
        if zstd:
            distinct = sorted({e.block for _, e in zstd})
            scratch: dict[int, memoryview] = {}
            for start in range(0, len(distinct), max(1, read_batch // bs)):
                part = distinct[start:start + max(1, read_batch // bs)]
                for b, data in zip(part, _read_full(reader, part)):
                    scratch[b] = memoryview(data)
            work = [(scratch[e.block][e.offset:e.offset + e.stored], mv[o:o + e.raw], e)
                    for o, e in zstd]
            step = max(1, len(work) // 8)
            for i in range(0, len(work), step):
                fut = pool.submit(check_zstd, work[i:i + step])
                pending.append(fut)
                stored[fut] = sum(e.stored for _, e in zstd[i:i + step])
                regions.extend((o, e.raw, fut) for o, e in zstd[i:i + step])
    except BlockIndexError as exc:
        raise TruncatedCheckpointError(f"{where}: a block is beyond the lease: {exc}",
                                       block=exc.index, **ctx) from exc
    try:
        digest = (_mac_in_order(writer_key, h.mac_algorithm, mv, regions, h.payload_mac)
                  if writer_key is not None and chain is None else None)
        sizes: dict[Any, int] = {}  # per task: the payload bytes, or the stored bytes
        if kind == "restore_bytes":
            for _, n, fut in regions:
                sizes[fut] = sizes.get(fut, 0) + n
        else:
            for fut, n in stored.items():
                sizes[fut] = n
        failed = []
        for f in pending:
            failed.append(f.result())
            advance(kind, sizes.get(f, 0))
    except BlockIndexError as exc:
        raise TruncatedCheckpointError(f"{where}: a block is beyond the lease: {exc}",
                                       block=exc.index, **ctx) from exc
    if chain is not None:
        digest = chain.digest(len(pending))  # every task succeeded (else raised above)
    bad = next((f for f in failed if f is not None), None)
    if bad is None and digest is not None and not equal(digest, h.payload_mac):
        bad = first_bad(raw_items)  # damage, not forgery, if a CRC fails too
    if bad is not None:
        entry, why = bad
        raise CheckpointCorrupt(f"{where}: data block {entry.block} {why}", block=entry.block,
                                **ctx)
    if digest is not None:
        # The header MAC (checked above) covers the payload MAC stored in the header.
        if not equal(digest, h.payload_mac):
            raise CheckpointAuthError(f"{where}: payload MAC mismatch (wrong key or tampered "
                                      "data); nothing was unpickled", **ctx)
    return buf
