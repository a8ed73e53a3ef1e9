"""The write path of a checkpoint: chunks, encoding in a pool, block allocation, the map.

:class:`~stages.checkpoint.state.CheckpointedStageState` decides *what* a commit writes and in which
order (``stages/checkpoint/state.py`` states the protocol); these functions do the writing:

* :func:`chunks` cuts the serialized payload's segments into block-size chunks without
  joining them (only chunks straddling a segment boundary are copied), from any chunk on;
* :func:`write_chunks` encodes chunks (CRC-32C, zstd where it pays) in the shared worker
  pool a few batches ahead of the writer - both release the GIL, so encoding hides behind
  ``pwritev`` - and packs compressed chunks several to a block. For incremental
  checkpoints (``stages/checkpoint/incremental.py``) the same pool tasks hash every chunk and, where
  the hash and length equal the base generation's chunk at the same position, hand back
  the base's map entry instead: that chunk is neither compressed nor written. Runs of
  chunks the caller knows unchanged (keyed state's clean groups,
  :class:`~stages.checkpoint.incremental.StoredRun`) are not visited at all: the commit's
  work is proportional to the chunks it visits plus C-level copies of the runs' entries;
* :func:`learn_slots` builds the writer's knowledge of the header slots (which generation
  each holds, the blocks its map references) from a scan, once per writer or restore;
* :func:`allocate` yields, lowest first and only as many as are taken, the blocks no
  retained generation references, so a commit never overwrites what a reader may still need;
* :func:`write_map` writes the block map inline or as a chain of checksummed map blocks.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from blockstore import Lease, LeaseReader, crc32c
from blockstore.work import advance

from . import format as fmt
from .compress import ChunkCoder
from .format import CHUNK_RAW, ENTRY, MAPBLOCK, Header, MapEntry
from .incremental import StoredRun, content_hash
from ..errors import CheckpointCorrupt, CheckpointDowngradeRefused, UnsupportedFormatError
from .chunkchecks import MacChain
from .mac import KeySetting
from .reader import SlotScan, load_map, worker_pool

__all__ = ["MAX_WRITE_BATCH", "SlotState", "WINDOW", "WRITE_BATCH", "Written", "allocate", "blocks_of", "chunks",
           "encode_and_offer", "encode_batch", "learn_slots", "refuse_newer_format", "target_slot",
           "write_chunks", "write_map"]

log = logging.getLogger(__name__)

#: Bytes handed to one ``write_blocks`` call / one pool task.
WRITE_BATCH = 8 * 1024 * 1024
#: The most a write call carries, whatever the store prefers (``BlockStore.write_batch_bytes``):
#: the encoded blocks of one call are held in memory until it returns.
MAX_WRITE_BATCH = 64 * 1024 * 1024
#: Pool tasks in flight ahead of the writer.
WINDOW = 3


@dataclass(slots=True)
class SlotState:
    """The writer's knowledge of one header slot."""

    header: Header | None = None
    blocks: frozenset[int] = frozenset()
    committed: bool = False
    dirty: bool = False  # holds something (a header, garbage, or a possibly torn write)
    newer_version: int | None = None  # a header of a format version this code cannot read


def blocks_of(reader: LeaseReader, h: Header,
              key: KeySetting = None) -> tuple[list[MapEntry], frozenset[int]]:
    """A generation's checked map and every block it references (data and map blocks)."""
    entries, map_blocks = load_map(reader, h, key=key)
    return entries, frozenset(e.block for e in entries) | frozenset(map_blocks)


def learn_slots(reader: LeaseReader, k: int, scans: Sequence[SlotScan], *,
                key: KeySetting = None, restored: Header | None = None,
                restored_blocks: frozenset[int] = frozenset()) -> tuple[list[SlotState], int]:
    """The writer's view of ``k`` header slots from a scan, and the highest generation seen.

    A generation counts as committed (its blocks protected) if its header parses and its
    map loads. After a restore (``restored``), generations newer than the restored one
    failed verification: they are not committed (their slots are overwritten first).
    """
    slots = [SlotState() for _ in range(k)]
    max_gen = 0
    for s in scans:
        if s.slot >= k:
            continue
        slot = slots[s.slot]
        slot.dirty = not s.empty
        if isinstance(s.error, UnsupportedFormatError):
            slot.newer_version = s.error.version
        h = s.header
        gen = h.generation if h else (s.error.generation if s.error else None)
        max_gen = max(max_gen, gen or 0)
        if h is None or (restored is not None and h.generation > restored.generation):
            continue
        if restored is not None and h.generation == restored.generation:
            slot.header, slot.blocks, slot.committed = h, restored_blocks, True
            continue
        try:
            _, blocks = blocks_of(reader, h, key)
        except CheckpointCorrupt as exc:
            log.warning("generation %d of lease %r has a bad map (%s); it will be overwritten",
                        h.generation, reader.name, exc)
            continue
        slot.header, slot.blocks, slot.committed = h, blocks, True
    return slots, max_gen


def chunks(segments: Sequence[memoryview], bs: int, start: int = 0, stop: int | None = None,
           starts: Sequence[int] | None = None) -> Iterator[memoryview]:
    """Cut segments into ``bs``-byte chunks (last one shorter); copy only straddling ones.

    Yields chunks ``start .. stop - 1`` (default: all). ``starts``: each segment's payload
    offset and, last, the payload length (``segment_starts``), when the caller has them.
    """
    if starts is None:
        starts = segment_starts(segments)
    end = starts[-1] if stop is None else min(starts[-1], stop * bs)
    pos = start * bs
    si = bisect.bisect_right(starts, pos) - 1
    cur: list[memoryview] = []
    cur_len = 0
    while pos < end:
        seg = segments[si]
        off = pos - starts[si]
        n = seg.nbytes
        if off >= n:
            si += 1
            continue
        take = min(bs - cur_len, n - off, end - pos)
        piece = seg[off:off + take]
        pos += take
        if cur_len == 0 and (take == bs or pos == end):
            yield piece
            continue
        cur.append(piece)
        cur_len += take
        if cur_len == bs or pos == end:
            yield memoryview(b"".join(cur))
            cur, cur_len = [], 0


def segment_starts(segments: Sequence[memoryview]) -> list[int]:
    """Each segment's payload offset, then the payload length."""
    return list(itertools.accumulate((s.nbytes for s in segments), initial=0))


#: What the pool hands back per chunk: (stored bytes, flags, CRC, raw length, content hash,
#: the base's entry when the chunk is unchanged - then nothing else is meaningful).
Encoded = tuple["memoryview | bytes | None", int, int, int, bytes, "MapEntry | None"]
_NO_HASH = bytes(fmt.HASH_SIZE)


def encode_batch(coder: ChunkCoder, chunks: list[memoryview], start: int = 0,
                 hashing: bool = False,
                 base: Sequence[MapEntry] | None = None,
                 claimed: frozenset[tuple[int, int]] = frozenset()) -> list[Encoded]:
    """Encode chunks ``start, start + 1, ...`` of a payload (runs in the pool, or in the
    caller when it is the commit's only batch).

    With ``hashing`` each chunk's content hash is computed; a chunk whose raw length and
    hash equal those of ``base[i]`` (the base generation's chunk at the same position) is
    unchanged and comes back as that entry, not encoded - unless that entry's place
    (``(block, offset)``) is ``claimed`` by a known run the commit also takes (a run moved
    over it): a stored chunk is referenced once only (docs/FORMAT.md 2.7, step 3).
    """
    out: list[Encoded] = []
    for i, c in enumerate(chunks, start):
        digest = content_hash(c) if hashing else _NO_HASH
        if base is not None and i < len(base):
            old = base[i]
            if (old.raw == c.nbytes and old.hash == digest
                    and (not claimed or (old.block, old.offset) not in claimed)):
                out.append((None, old.flags, old.crc, old.raw, digest, old))
                continue
        stored, flags = coder.encode(c)
        out.append((stored, flags, crc32c(stored), c.nbytes, digest, None))
    return out


def refuse_newer_format(slots: Sequence[SlotState], lease: LeaseReader) -> None:
    """Raise :class:`CheckpointDowngradeRefused` if a slot holds a newer format's header.

    Such a generation's map cannot be read, so its blocks are not protected: writing into
    its slot, or into any block it may use, would destroy it (``docs/FORMAT.md`` 2.7).
    """
    for i, s in enumerate(slots):
        if s.newer_version is not None:
            raise CheckpointDowngradeRefused(
                f"lease {lease.name!r} ({lease.lease_id}): header slot {i} holds format "
                f"version {s.newer_version}, newer than this blockpoint's {fmt.FORMAT_VERSION}; "
                "refusing to checkpoint (it would overwrite the newer writer's generations). "
                "Use the newer blockpoint for this lease", version=s.newer_version, slot=i,
                lease_id=lease.lease_id)


def target_slot(slots: list[SlotState]) -> int:
    """The slot a new generation goes to: an uncommitted one, else the oldest generation's."""
    for i, s in enumerate(slots):
        if not s.committed:
            return i
    gens = [s.header.generation if s.header else 0 for s in slots]
    return min(range(len(slots)), key=gens.__getitem__)


def allocate(protected: set[int], k: int) -> Iterator[int]:
    """The data blocks (``>= k``) no retained generation references, lowest first, lazily:
    a commit takes only the blocks it writes (the caller grew the lease for its worst case),
    and skipping the protected ones runs in C."""
    return itertools.filterfalse(protected.__contains__, itertools.count(k))


@dataclass(slots=True)
class Written:
    """What :func:`write_chunks` did: the new map (entries and their packed bytes), the
    blocks it references (reused ones included), the chunks written, the chunks visited
    (sliced and handed to encoding: hashed, compared or encoded - never a known run's),
    the bytes handed to the store, and the stored bytes of every entry."""

    entries: list[MapEntry]
    packed: bytes
    blocks: set[int]
    written: int
    visited: int
    bytes_written: int
    stored: int
    #: the payload MAC, when ``write_chunks`` was given a :class:`MacChain` to feed
    payload_mac: bytes | None = None


def _plan(n_chunks: int, whole: int, per_task: int,
          known: Sequence[tuple[int, StoredRun]]) -> Iterator[tuple[int, int] | StoredRun]:
    """The commit's work in payload order: ranges of chunks to encode (at most ``per_task``
    each) and the known runs, taken only in order, not overlapping, on whole chunks (the
    first ``whole``); any other is encoded like the chunks around it."""
    pos = 0
    for start, run in known:
        stop = start + len(run.entries)
        if start < pos or stop > whole:
            continue
        for lo in range(pos, start, per_task):
            yield lo, min(start, lo + per_task)
        yield run
        pos = stop
    for lo in range(pos, n_chunks, per_task):
        yield lo, min(n_chunks, lo + per_task)


def encode_and_offer(coder: ChunkCoder, batch: list[memoryview], lo: int, hashing: bool,
                     base: Sequence[MapEntry] | None, mac: MacChain | None,
                     n: int, claimed: frozenset[tuple[int, int]] = frozenset()
                     ) -> list[Encoded]:
    """:func:`encode_batch`, then the batch's bytes offered to the payload MAC as item ``n``
    while they are still in this core's cache (``None`` if encoding failed: the chain is
    broken and the commit fails with the encoding's error)."""
    out = None
    try:
        out = encode_batch(coder, batch, lo, hashing, base, claimed)
    finally:
        if mac is not None:
            mac.offer(n, batch if out is not None else None)
    return out


def write_chunks(lease: Lease, coder: ChunkCoder, segments: Sequence[memoryview],
                 alloc: Iterator[int], bs: int, *, hashing: bool = False,
                 base: Sequence[MapEntry] | None = None,
                 known: Sequence[tuple[int, StoredRun]] = (),
                 mac: MacChain | None = None) -> Written:
    """Encode (CRC, maybe zstd, maybe hash) chunks in the pool while earlier ones are
    written; pack compressed chunks several to a block; reuse ``base`` entries of unchanged
    chunks (see :func:`encode_batch`) and the entries of the ``known`` runs (``(first chunk,
    run)``, see ``codec.Payload.reuse``) without visiting their chunks. Blocks come from
    ``alloc`` only for written chunks. When the chunks to visit fit one batch they are
    encoded in the calling thread: nothing would overlap, and a hand-over costs more than
    a few chunks' work on a busy machine.

    ``mac``: the payload MAC to feed, in payload order - each encoded batch by the task that
    encoded it, a known run by this thread (its chunks are not otherwise read) - returned as
    :attr:`Written.payload_mac`.
    """
    pool = worker_pool()
    per_task = max(1, WRITE_BATCH // bs)
    starts = segment_starts(segments)
    length = starts[-1]
    n_chunks = -(-length // bs)
    plan = _plan(n_chunks, length // bs, per_task, known)
    todo = n_chunks - sum(len(run.entries) for _, run in known)
    # Where the known runs' chunks are stored: never reused again for another position.
    claimed: frozenset[tuple[int, int]] = (
        frozenset().union(*(run.places for _, run in known)) if known and base is not None
        else frozenset())
    inline = todo <= per_task
    inflight: deque[Future[list[Encoded]] | list[Encoded] | StoredRun] = deque()
    futures = 0
    visited = 0
    pos = 0  # the next plan item's first chunk (the plan covers the payload in order)
    seq = 0  # the next plan item's number in the MAC chain

    def submit_next() -> bool:
        nonlocal futures, visited, pos, seq
        item = next(plan, None)
        if item is None:
            return False
        n, seq = seq, seq + 1
        if isinstance(item, StoredRun):
            if mac is not None:  # unchanged bytes are authenticated all the same
                mac.offer(n, list(chunks(segments, bs, pos, pos + len(item.entries), starts)))
            pos += len(item.entries)
            inflight.append(item)
            return True
        lo, hi = item
        pos = hi
        batch = list(chunks(segments, bs, lo, hi, starts))
        visited += len(batch)
        if inline:
            inflight.append(encode_and_offer(coder, batch, lo, hashing, base, mac, n, claimed))
        else:
            inflight.append(pool.submit(encode_and_offer, coder, batch, lo, hashing, base,
                                        mac, n, claimed))
            futures += 1
        return True

    def refill() -> None:
        while futures < WINDOW and submit_next():
            pass

    refill()
    # A store with a request's round trip per block (an object store) gets larger calls:
    # each call checks the epoch once and waits for its slowest upload. Bounded: a call's
    # blocks are held until it returns (``held`` counts a pack's whole buffer).
    write_batch = min(MAX_WRITE_BATCH, max(WRITE_BATCH, lease.store.write_batch_bytes))
    entries: list[MapEntry] = []
    packed: list[bytes] = []
    used: set[int] = set()
    writes: list[tuple[int, memoryview | bytes | bytearray]] = []
    wbytes = 0  # stored bytes in ``writes`` (progress)
    held = 0  # memory ``writes`` holds (a pack: its whole block)
    pack: bytearray | None = None
    pack_block = -1
    pack_fill = 0
    written = 0
    total_bytes = 0
    stored_total = 0
    while inflight:
        item = inflight.popleft()
        if isinstance(item, StoredRun):
            entries.extend(item.entries)
            packed.append(item.packed)
            used |= item.blocks
            stored_total += item.stored
            refill()
            continue
        if isinstance(item, Future):
            futures -= 1
            results = item.result()
        else:
            results = item
        refill()
        for stored, flags, crc, raw, digest, reused in results:
            if reused is not None or stored is None:
                assert reused is not None
                entries.append(reused)
                packed.append(ENTRY.pack(*reused))
                used.add(reused.block)
                stored_total += reused.stored
                continue
            written += 1
            n = len(stored) if isinstance(stored, bytes) else stored.nbytes
            stored_total += n
            if flags == CHUNK_RAW:
                b = next(alloc)
                writes.append((b, stored))
                wbytes += n
                held += n
                total_bytes += bs  # a short last chunk is padded to a block by the store
                entry = MapEntry(b, 0, n, raw, crc, flags, digest)
                used.add(b)
            else:
                if pack is None or pack_fill + n > bs:
                    if pack is not None:
                        writes.append((pack_block, memoryview(pack)[:pack_fill]))
                        wbytes += pack_fill
                        held += bs
                        total_bytes += bs
                    pack, pack_block, pack_fill = bytearray(bs), next(alloc), 0
                    used.add(pack_block)
                pack[pack_fill:pack_fill + n] = stored
                entry = MapEntry(pack_block, pack_fill, n, raw, crc, flags, digest)
                pack_fill += n
            entries.append(entry)
            packed.append(ENTRY.pack(*entry))
            if held >= write_batch:
                lease.write_blocks(writes)
                advance("checkpoint_bytes", wbytes)
                writes, wbytes, held = [], 0, 0
    if pack is not None:
        writes.append((pack_block, memoryview(pack)[:pack_fill]))
        wbytes += pack_fill
        total_bytes += bs
    if writes:
        lease.write_blocks(writes)
        advance("checkpoint_bytes", wbytes)
    digest = mac.digest(seq) if mac is not None else None
    return Written(entries, b"".join(packed), used, written, visited, total_bytes, stored_total,
                   digest)


def write_map(lease: Lease, raw: bytes, alloc: Iterator[int],
              inline: bool, n_map: int, bs: int) -> tuple[int, int, list[int], bytes]:
    """Write the block map ``raw`` (the packed entries, :attr:`Written.packed`; spilled into
    chained map blocks unless ``inline``); return its CRC, first map block, map blocks and
    the inline bytes."""
    if inline:
        return crc32c(raw), 0, [], raw
    epb = fmt.entries_per_map_block(bs)
    blocks = [next(alloc) for _ in range(n_map)]  # never a reused block: alloc skips them
    crc = 0
    writes = []
    for i, b in enumerate(blocks):
        part = raw[i * epb * ENTRY.size:(i + 1) * epb * ENTRY.size]
        nxt = blocks[i + 1] if i + 1 < n_map else 0
        blk = bytearray(MAPBLOCK.pack(nxt, len(part) // ENTRY.size, 0) + part)
        MAPBLOCK.pack_into(blk, 0, nxt, len(part) // ENTRY.size, crc32c(blk))
        crc = crc32c(blk, crc)
        writes.append((b, blk))
    lease.write_blocks(writes)
    return crc, blocks[0], blocks, b""
