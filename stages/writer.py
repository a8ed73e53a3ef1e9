"""The write path of a checkpoint: chunks, encoding in a pool, block allocation, the map.

:class:`~stages.state.CheckpointedStageState` decides *what* a commit writes and in which
order (``stages/state.py`` states the protocol); these functions do the writing:

* :func:`chunks` cuts the serialized payload's segments into block-size chunks without
  joining them (only chunks straddling a segment boundary are copied);
* :func:`write_chunks` encodes chunks (CRC-32C, zstd where it pays) in the shared worker
  pool a few batches ahead of the writer - both release the GIL, so encoding hides behind
  ``pwritev`` - and packs compressed chunks several to a block;
* :func:`allocate` picks blocks no retained generation references, so a commit never
  overwrites what a reader may still need;
* :func:`write_map` writes the block map inline or as a chain of checksummed map blocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from blockstore import Lease, crc32c

from . import format as fmt
from .compress import ChunkCoder
from .format import CHUNK_RAW, ENTRY, MAPBLOCK, Header, MapEntry
from .mac import PayloadMac
from .reader import worker_pool

__all__ = ["SlotState", "WINDOW", "WRITE_BATCH", "allocate", "chunks", "encode_batch",
           "hash_payload", "target_slot", "write_chunks", "write_map"]

#: Bytes handed to one ``write_blocks`` call / one pool task.
WRITE_BATCH = 8 * 1024 * 1024
#: Pool tasks in flight ahead of the writer.
WINDOW = 3


@dataclass(slots=True)
class SlotState:
    """The writer's knowledge of one header slot."""

    header: Header | None = None
    blocks: frozenset[int] = frozenset()
    committed: bool = False
    dirty: bool = False  # holds something (a header, garbage, or a possibly torn write)


def chunks(segments: Sequence[memoryview], bs: int) -> Iterator[memoryview]:
    """Cut segments into ``bs``-byte chunks (last one shorter); copy only straddling ones."""
    cur: list[memoryview] = []
    cur_len = 0
    for seg in segments:
        n = seg.nbytes
        pos = 0
        while pos < n:
            if cur_len == 0 and n - pos >= bs:
                yield seg[pos:pos + bs]
                pos += bs
                continue
            take = min(bs - cur_len, n - pos)
            cur.append(seg[pos:pos + take])
            cur_len += take
            pos += take
            if cur_len == bs:
                yield memoryview(b"".join(cur))
                cur, cur_len = [], 0
    if cur_len:
        yield memoryview(b"".join(cur))


def encode_batch(coder: ChunkCoder,
                  chunks: list[memoryview]) -> list[tuple[memoryview | bytes, int, int, int]]:
    out = []
    for c in chunks:
        stored, flags = coder.encode(c)
        out.append((stored, flags, crc32c(stored), c.nbytes))
    return out


def hash_payload(key: bytes, segments: Sequence[memoryview]) -> PayloadMac:
    return PayloadMac(key).update_all(segments)


def target_slot(slots: list[SlotState]) -> int:
    """The slot a new generation goes to: an uncommitted one, else the oldest generation's."""
    for i, s in enumerate(slots):
        if not s.committed:
            return i
    gens = [s.header.generation if s.header else 0 for s in slots]
    return min(range(len(slots)), key=gens.__getitem__)


def allocate(protected: set[int], k: int, need: int) -> list[int]:
    """The ``need`` lowest data blocks (``>= k``) that no retained generation references."""
    out: list[int] = []
    b = k
    while len(out) < need:
        if b not in protected:
            out.append(b)
        b += 1
    return out


def write_chunks(lease: Lease, coder: ChunkCoder, segments: Sequence[memoryview],
                 alloc: Iterator[int], bs: int) -> tuple[list[MapEntry], set[int]]:
    """Encode (CRC, maybe zstd) chunks in the pool while earlier ones are written; pack
    compressed chunks several to a block. Returns the map entries and the blocks used."""
    pool = worker_pool()
    per_task = max(1, WRITE_BATCH // bs)
    chunk_iter = chunks(segments, bs)
    inflight: deque[Future[list[tuple[memoryview | bytes, int, int, int]]]] = deque()

    def submit_next() -> bool:
        batch = [c for _, c in zip(range(per_task), chunk_iter)]
        if not batch:
            return False
        inflight.append(pool.submit(encode_batch, coder, batch))
        return True

    while len(inflight) < WINDOW and submit_next():
        pass
    entries: list[MapEntry] = []
    used: set[int] = set()
    writes: list[tuple[int, memoryview | bytes | bytearray]] = []
    wbytes = 0
    pack: bytearray | None = None
    pack_block = -1
    pack_fill = 0
    while inflight:
        results = inflight.popleft().result()
        submit_next()
        for stored, flags, crc, raw in results:
            n = len(stored) if isinstance(stored, bytes) else stored.nbytes
            if flags == CHUNK_RAW:
                b = next(alloc)
                writes.append((b, stored))
                wbytes += n
                entries.append(MapEntry(b, 0, n, raw, crc, flags))
                used.add(b)
            else:
                if pack is None or pack_fill + n > bs:
                    if pack is not None:
                        writes.append((pack_block, memoryview(pack)[:pack_fill]))
                        wbytes += pack_fill
                    pack, pack_block, pack_fill = bytearray(bs), next(alloc), 0
                    used.add(pack_block)
                pack[pack_fill:pack_fill + n] = stored
                entries.append(MapEntry(pack_block, pack_fill, n, raw, crc, flags))
                pack_fill += n
            if wbytes >= WRITE_BATCH:
                lease.write_blocks(writes)
                writes, wbytes = [], 0
    if pack is not None:
        writes.append((pack_block, memoryview(pack)[:pack_fill]))
    if writes:
        lease.write_blocks(writes)
    return entries, used


def write_map(lease: Lease, entries: list[MapEntry], alloc: Iterator[int],
              inline: bool, n_map: int, bs: int) -> tuple[int, int, list[int], bytes]:
    """Write the block map (spilled into chained map blocks unless ``inline``); return its
    CRC, first map block, map blocks and the inline bytes."""
    raw = fmt.pack_entries(entries)
    if inline:
        return crc32c(raw), 0, [], raw
    epb = fmt.entries_per_map_block(bs)
    blocks = [next(alloc) for _ in range(n_map)]
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
