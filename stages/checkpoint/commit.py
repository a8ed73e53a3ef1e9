"""One commit of a generation: steps 3 to 5 of the protocol in ``stages/checkpoint/state.py``.

:class:`~stages.checkpoint.state.CheckpointedStageState` decides what to commit - which
generation, into which header slot, on which incremental base (``stages/checkpoint/state.py``
states the protocol, ``docs/FORMAT.md`` 3 the bytes) - and :func:`commit_generation` does it,
in this order:

1. make room: protect the header slots and every block another retained generation
   references, grow the lease once to the uncompressed worst case, allocate the rest;
2. start the payload MAC (keyed) in the worker pool, beside the writes;
3. erase the target slot and every slot that holds no committed generation;
4. write the chunks and the block map (:mod:`stages.checkpoint.writer`), ``flush``;
5. seal the header (duration, payload MAC, header MAC, CRC), write it into the target slot,
   ``flush`` - a failure from here on is :class:`~stages.errors.CheckpointCommitUnknown`;
6. give back what the retained generations no longer use (:mod:`stages.checkpoint.compaction`;
   never raises).

The writer's view of the slots (``slots``) is updated in place as the commit goes, so a
failure at any step leaves it describing the lease as it may now be.

Cost: the Python-level work of a commit is proportional to the chunks it visits (written,
or hashed against the base) and to the number of known-unchanged runs (keyed state's clean
groups), not to the size of the state: a run's entries, blocks and map bytes are carried as
they are (list extend, set union, bytes join, all in C), blocks are allocated lazily by a
C-level scan, and the block sets of the retained generations are combined by set
operations, never walked in Python. The map itself is still written whole every
generation (the format: one map per generation, ``docs/FORMAT.md`` 2.3), which is a copy
of ~48 bytes per chunk. ``tests/test_keyed_state.py`` counts this work.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass

from blockstore import Lease, StaleLeaseError

from ..errors import CheckpointCommitUnknown
from . import compaction
from . import format as fmt
from .codec import Payload
from .compress import ChunkCoder
from .format import Header, MapEntry
from .incremental import Base, WriteStats
from .chunkchecks import MacChain
from .mac import KeyRing, header_mac
from .writer import SlotState, allocate, write_chunks, write_map

__all__ = ["Commit", "Committed", "Encoding", "commit_generation"]


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a writer encodes every generation it commits (fixed per state object)."""

    codec: str
    compression: str
    level: int
    mac_algorithm: int  # of keyed generations; unkeyed ones record none
    hashed: bool  # incremental: content hashes in the map


@dataclass(frozen=True, slots=True)
class Commit:
    """The generation to commit: its number, step and meta, when it started, and how its
    errors name the state (``what``, ``lease_id``)."""

    generation: int
    step: int
    meta: bytes
    created_at: float
    started: float  # time.perf_counter() at the start, for the header's duration
    what: str
    lease_id: str


@dataclass(frozen=True, slots=True)
class Committed:
    """A durable generation: its header, the blocks it references, its map, its depth
    (incremental), what was written, the blocks compaction may not have given back
    (``None``: unknown, the next commit sweeps every free block) and the lease's size in
    blocks after the commit and its compaction (``None``: unknown, compaction failed)."""

    header: Header
    blocks: frozenset[int]
    entries: list[MapEntry]
    depth: int
    stats: WriteStats
    dropped: set[int] | None
    lease_blocks: int | None


def commit_generation(lease: Lease, slots: list[SlotState], target: int, payload: Payload,
                      todo: Commit, enc: Encoding, *, coder: ChunkCoder,
                      ring: KeyRing | None, base: Base | None,
                      dropped_before: set[int] | None) -> Committed:
    """Commit ``payload`` as ``todo.generation`` into header slot ``target``; see the module
    docstring. ``base``: the incremental base whose unchanged chunks are reused, if any."""
    k = len(slots)
    bs = lease.block_size
    gen = todo.generation
    tslot = slots[target]
    n_chunks = max(1, math.ceil(payload.length / bs))
    inline = fmt.inline_fits(bs, len(todo.meta), n_chunks)
    epb = fmt.entries_per_map_block(bs)
    n_map = 0 if inline else math.ceil(n_chunks / epb)
    need = n_chunks + n_map

    protected = set(range(k))
    for i, s in enumerate(slots):
        if i != target and s.committed:
            protected |= s.blocks
    nb = lease.num_blocks  # one lookup: on an object store a record GET in the commit's path
    free_now = max(0, nb - k) - len(protected.intersection(range(k, max(k, nb))))
    if nb < k or free_now < need:  # grows only: the new size is above ``nb``
        nb = lease.resize(max(k, nb) + max(0, need - free_now)).num_blocks
    alloc = allocate(protected, k)  # lazy: at most ``need`` are taken, all below ``nb``
    # The payload MAC is fed by the encode tasks, each batch right after it was encoded
    # (its bytes still in that core's cache), in payload order (``writer.write_chunks``).
    chain = MacChain(ring.current, enc.mac_algorithm) if ring is not None else None

    # Erase before any data write: the target slot (its old generation's
    # blocks are about to be reused), and every slot holding something that is not a
    # committed generation (a damaged or failed header, a torn write): its blocks are not
    # protected, so no header may keep describing them once they are overwritten.
    # The target is always erased when it holds anything: a header write that is cut
    # short must leave a zero trailer behind it (see format.TRAILER).
    erase = [i for i, s in enumerate(slots) if s.dirty and (i == target or not s.committed)]
    if erase:
        # No flush of its own: the data flush below makes it durable before the header is
        # written (so a torn header always has a zero trailer). A process crash keeps the
        # write order anyway; on power loss the worst case is an old header that survives
        # while its blocks were overwritten - its CRCs fail, and it was the generation
        # being replaced, never the only copy.
        lease.write_blocks({i: b"" for i in erase})
        for i in erase:
            slots[i].dirty = False
    dropped = tslot.blocks  # the replaced generation's: reused below, or given back after
    tslot.committed = False
    tslot.header = None

    # Known-unchanged chunks (keyed state) only ride on the base they were stored by.
    known = (payload.reuse if base is not None and payload.reuse
             and payload.reuse_generation == base.generation else ())
    w = write_chunks(lease, coder, payload.segments, alloc, bs, hashing=enc.hashed,
                     base=None if base is None else base.entries, known=known, mac=chain)
    entries, used, n_written = w.entries, w.blocks, w.written
    reused = len(entries) - n_written
    depth = base.depth + 1 if base is not None and reused else 0
    map_crc, first_map, map_blocks, inline_map = write_map(lease, w.packed, alloc,
                                                           inline, n_map, bs)
    used.update(map_blocks)
    lease.flush()

    stored = w.stored
    header = fmt.pack_header(
        data_length=payload.length, generation=gen, step=todo.step, created_at=todo.created_at,
        duration_s=0.0, stored_bytes=stored, chunks=len(entries), block_size=bs, slots=k,
        slot=target, codec=enc.codec, compression=enc.compression, level=enc.level,
        mac_algorithm=enc.mac_algorithm if ring is not None else 0, meta=todo.meta,
        map_blocks=n_map, map_crc=map_crc, first_map_block=first_map,
        inline_map=inline_map, hashed=enc.hashed,
        depth=depth)
    # The duration field is filled in last, just before the MAC and CRC seal the header.
    struct.pack_into("<d", header, 40, time.perf_counter() - todo.started)
    mac = None
    if chain is not None:
        assert w.payload_mac is not None
        fmt.set_payload_mac(header, w.payload_mac)
        mac = header_mac(ring.current, lease.lease_id, lease.name,
                         fmt.header_mac_input(header), enc.mac_algorithm)
    fmt.seal_header(header, mac)
    tslot.dirty = True
    # From here on a failure leaves the commit state unknown: the header may be durable
    # (restore would return this generation) or not. A stale-epoch refusal is the one
    # exception: the store changed nothing, so the generation is certainly not committed.
    try:
        lease.write_blocks({target: header})
    except StaleLeaseError:
        raise
    except Exception as exc:
        raise CheckpointCommitUnknown(
            f"checkpoint of {todo.what}: generation {gen} may or may not be "
            f"committed (the header write failed: {type(exc).__name__}: {exc})",
            lease_id=todo.lease_id, generation=gen) from exc
    try:
        lease.flush()
    except Exception as exc:  # a takeover now is too late to un-write the header
        raise CheckpointCommitUnknown(
            f"checkpoint of {todo.what}: generation {gen} may or may not be "
            f"committed (the flush after the header write failed: {type(exc).__name__}: {exc})",
            lease_id=todo.lease_id, generation=gen) from exc

    h = fmt.parse_header(header, slot=target, lease_id=lease.lease_id, name=lease.name)
    tslot.header, tslot.blocks, tslot.committed = h, frozenset(used), True
    stats = WriteStats(n_written, reused, (len(erase) + n_map + 1) * bs + w.bytes_written,
                       w.visited)
    # Step 6: never raises; None (unknown) makes the next commit sweep every free block.
    dropped_now, nb_now = compaction.give_back(lease, slots, k, nb, need, dropped,
                                               dropped_before)
    return Committed(h, frozenset(used), entries, depth, stats, dropped_now, nb_now)
