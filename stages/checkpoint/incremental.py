"""Incremental checkpoints: reuse the stored chunks whose content did not change.

With ``CheckpointedStageState(..., incremental=True)`` a new generation's block map points
at the blocks of an older generation for every chunk whose bytes are the same, and only the
changed chunks are written (``docs/FORMAT.md`` section 4: shared entries are ordinary
entries). How it stays exactly as safe as a full checkpoint:

* **Change detection by a 128-bit content hash**, never by the CRC: every map entry of a
  hashed generation (format version 3, header flag ``FLAG_HASHES``) carries the XXH3-128 of
  the chunk's raw bytes; a chunk is reused only if the new chunk at the same payload
  position has the same raw length and the same 128-bit hash. (A 32-bit CRC match happens
  by chance once in 4 billion changed chunks - too often to call a chunk unchanged.) XXH3-128
  runs at memory speed (~25 GiB/s here, vs ~3.6 GiB/s for BLAKE3); an accidental collision
  is a 2^-128 event. It is not a cryptographic hash: a party that controls the *content*
  of a whole chunk of the state and knows the previous one could construct a collision;
  states that hostile inputs can shape byte by byte should stay on full checkpoints.
* **Reuse only from the newest committed generation this object wrote or restored** (the
  :class:`Base`). Why that one: (1) it is never the slot a commit overwrites - the target is
  an uncommitted slot or the *oldest* generation's, and retention >= 2 - so the blocks it
  references are in the allocator's protected set and nothing this commit writes can land
  on them; (2) its chunks were either just written by this process or verified chunk by
  chunk (CRC-32C) by the restore that produced it; a generation known only from reading
  its map is not trusted as a base (its blocks may be damaged), so the first checkpoint of
  a fresh object is full. Reusing from several older generations would save a little more
  but would make the protected set depend on chains of generations; one base keeps the
  rule "a block is free iff no retained generation's map names it" unchanged.
* **Reference counting is the retained maps**: a block is live while any committed,
  retained generation's map points into it (for packed zstd blocks: at any of its chunks).
  The allocator (``stages/checkpoint/writer.py``) and the compaction after a commit
  (``stages/checkpoint/compaction.py``) already work on exactly that union, so a shared block is never
  overwritten, discarded (hole-punched) or cut off by a shrink while any retained
  generation names it. On the object store a block index is an object that a later flush
  does not replace when the block is not rewritten, so the record keeps referencing it and
  its garbage collection keeps it (``docs/FORMAT.md`` 6.4).
* **A full checkpoint every** ``full_every`` **generations**: the header's *incremental
  depth* counts the generations since the last full one (0 = full); a checkpoint whose base
  has depth ``full_every - 1`` is written full. So a physical block is shared by at most
  ``full_every`` consecutive generations, and a bit flip in it damages at most those: with
  ``retention > full_every`` at least one retained generation never shares it and restore
  falls back to it. The default ``full_every = 8`` bounds the damage of one flipped block to
  8 checkpoints and costs, for a state of which a fraction f changes per checkpoint,
  ``(1 + 7 f) / 8`` of the full write on average (f = 1 %: 13 %). With the default retention
  of 2, the two retained generations share blocks after any incremental checkpoint (the new
  one reuses the other's): pick ``retention=3, full_every=2`` (or larger K) when one flipped
  block must never take every retained generation down.

A crash at any point of an incremental commit is a crash of an ordinary commit: nothing the
base references is touched, the header write is the commit.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from .format import MapEntry, pack_entries

__all__ = ["Base", "DEFAULT_FULL_EVERY", "StoredRun", "WriteStats", "content_hash",
           "reusable_base"]

#: A full checkpoint after at most this many generations (see the module docstring).
DEFAULT_FULL_EVERY = 8

content_hash = xxhash.xxh3_128_digest
"""The 16-byte XXH3-128 of a chunk's raw bytes (the value kept in version 3 map entries)."""


@dataclass(frozen=True, slots=True)
class Base:
    """A generation an incremental checkpoint may reuse chunks of.

    Attributes:
        generation: its generation number.
        slot: its header slot (it must still hold this generation when reused).
        depth: its incremental depth (0: it was a full checkpoint).
        entries: its block map, with content hashes.
    """

    generation: int
    slot: int
    depth: int
    entries: Sequence[MapEntry]


@dataclass(frozen=True, slots=True)
class StoredRun:
    """Consecutive whole-block chunks as one generation stores them, known unchanged by the
    writer (keyed state's clean key groups, ``stages/checkpoint/keyed.py``).

    Besides the map entries it keeps what a commit needs of them - the blocks they
    reference, their map bytes, their stored length - computed once, when the run is
    learnt, so a commit that reuses a run does no per-chunk work for it (only C-level
    copies: a list extend, a set union, a bytes join). Build it with :meth:`of`.
    """

    entries: tuple[MapEntry, ...]
    blocks: frozenset[int]
    packed: bytes  # the entries in the map layout (``format.pack_entries``)
    stored: int
    #: ``(block, offset)`` of each entry: where its stored bytes are (a chunk the commit
    #: encodes may not be reused as one of these - it would be referenced twice)
    places: frozenset[tuple[int, int]] = frozenset()

    @classmethod
    def of(cls, entries: Sequence[MapEntry], block_size: int) -> StoredRun | None:
        """The run of ``entries``; ``None`` unless every one is a whole block of raw bytes
        (the only chunks a commit may take by index without looking at them)."""
        run = tuple(entries)
        if not run or any(e.raw != block_size for e in run):
            return None
        return cls(run, frozenset(e.block for e in run), pack_entries(run),
                   sum(e.stored for e in run), frozenset((e.block, e.offset) for e in run))


    @classmethod
    def join(cls, runs: Sequence[StoredRun]) -> StoredRun:
        """The runs, stored one after the other, as one run (C-level copies only): a commit
        then takes consecutive clean groups as one item."""
        if len(runs) == 1:
            return runs[0]
        return cls(tuple(itertools.chain.from_iterable(r.entries for r in runs)),
                   frozenset().union(*(r.blocks for r in runs)),
                   b"".join(r.packed for r in runs), sum(r.stored for r in runs),
                   frozenset().union(*(r.places for r in runs)))


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What one commit wrote: chunks written vs reused, the bytes handed to the store
    (data blocks, spilled map blocks, erased slots and the header block), and the chunks
    it visited (read to hash, compare or encode; a known-unchanged run is not visited)."""

    chunks_written: int
    chunks_reused: int
    bytes_written: int
    chunks_visited: int = 0


def reusable_base(base: Base | None, *, committed_generation: int | None, target: int,
                  full_every: int) -> Base | None:
    """``base`` if the next commit may reuse its chunks, else ``None`` (write in full).

    Args:
        base: the newest generation this object wrote or restored with hashes, if any.
        committed_generation: the generation the writer believes committed in
            ``base.slot`` (``None``: nothing committed there).
        target: the slot the next commit overwrites.
        full_every: the policy (see the module docstring).
    """
    if base is None or committed_generation != base.generation or base.slot == target:
        return None
    if base.depth + 1 >= full_every:
        return None
    return base
