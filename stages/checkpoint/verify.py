"""Verification of a whole checkpoint lease: every slot read and proven, nothing decoded.

What ``blockpoint verify`` (and ``blockpoint history``, the demo's store view) runs:
:func:`verify_lease` takes every header slot of a lease through the reader's checks
(:mod:`stages.checkpoint.reader`: header CRC, header MAC, block map, every chunk's CRC-32C and
the payload MAC) and reports each as a :class:`GenerationReport`; nothing is unpickled. The
reports also say which chunks a generation shares with others (incremental checkpoints),
since damage there fails every generation that names them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from blockstore import BlockStoreError, LeaseReader

from ..errors import (
    BadMagicError,
    CheckpointCorrupt,
    CheckpointTooLarge,
    NoCheckpointError,
    TornHeaderError,
)
from .mac import KeySetting, resolve_keys
from .format import Header
from .reader import load_map, read_payload, read_slots, scan_slots
from .restore import check_max_state_bytes, check_state_size

__all__ = ["GenerationReport", "verify_lease"]


@dataclass(frozen=True, slots=True)
class GenerationReport:
    """The verification result of one header slot (one row of ``blockpoint verify``).

    ``status`` is ``"ok"``, ``"empty"`` or the error text; ``block`` names the failing block.
    ``shared`` counts the chunks whose stored bytes other generations' maps also name
    (incremental checkpoints; damage there fails every one of them), ``shared_with`` lists
    those generations. ``has_mac``: the header carries a MAC (``None`` when no header was
    read); ``mac_checked``: it was verified under a configured key (without a key, a MAC'd
    generation's checksums are verified and its MAC is not). ``created_at``, ``duration_s``
    and ``depth`` (0: a full checkpoint) come from the header, when it parses.
    """

    lease_id: str
    name: str
    slot: int | None
    generation: int | None
    step: int | None
    size: int | None
    stored: int | None
    codec: str | None
    compression: str | None
    ratio: float | None
    status: str
    block: int | None = None
    shared: int | None = None
    shared_with: tuple[int, ...] = ()
    has_mac: bool | None = None
    mac_checked: bool = False
    created_at: float | None = None
    duration_s: float | None = None
    depth: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def corrupt(self) -> bool:
        """True if a committed generation (or a header that may be one) fails verification.

        Empty slots, the torn header of an interrupted commit and a generation a live writer
        recycled while it was being read (``"recycled: ..."``) are not corruption.
        """
        return self.status not in ("ok", "empty") and not self.status.startswith(
            ("uncommitted", "recycled"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_lease(reader: LeaseReader, *, key: KeySetting = None,
                 max_state_bytes: int | None = None) -> list[GenerationReport]:
    """Verify every header slot of a checkpoint lease (checksums, map, MAC); decode nothing.

    ``key`` None: the configured keys (``blockstore.keys.resolve_keys``), if any.
    ``max_state_bytes``: as for restore (:mod:`stages.checkpoint.restore`); a generation
    declaring more is reported failed (``not read: ...``), its payload never allocated.
    Progress goes to :mod:`blockstore.work` like a restore's, as ``verify_bytes``: the stored
    bytes of each generation as its read batches are checked (a caller shows it by wrapping
    the call in :func:`blockstore.work.watch`).

    Returns one report per slot, newest generation first, then unreadable and empty slots.
    The lease may be live (its stage checkpointing while this reads): a writer erases the
    slot of the generation it drops before it reuses that generation's blocks, so a
    generation that fails is checked again against its slot, and one whose header is no
    longer there is reported ``"recycled: ..."`` (dropped by a newer checkpoint while it was
    read, not corruption) instead of as the data block that no longer matches.
    Raises :class:`NoCheckpointError` if no slot holds the magic ``PCHK`` (an empty lease, or
    a lease that is not a checkpoint lease).
    """
    check_max_state_bytes(max_state_bytes)
    ring = resolve_keys(key)
    _, scans = scan_slots(reader)
    if not any(s.header is not None or (s.error is not None
                                        and not isinstance(s.error, BadMagicError))
               for s in scans):
        raise NoCheckpointError(f"lease {reader.name!r} ({reader.lease_id}) holds no "
                                "checkpoint header", lease_id=reader.lease_id, name=reader.name)
    out: list[GenerationReport] = []
    base = {"lease_id": reader.lease_id, "name": reader.name}
    chunk_sets: dict[int, set[tuple[int, int]]] = {}  # generation -> (block, offset) it names
    for s in sorted(scans, key=lambda s: -(s.header.generation if s.header else -1)):
        h = s.header
        if h is None:
            err = s.error
            gen = err.generation if err is not None else None
            if s.empty:
                status = "empty"
            elif isinstance(err, TornHeaderError):
                status = f"uncommitted: {err}"
            else:
                status = str(err)
            out.append(GenerationReport(**base, slot=s.slot, generation=gen, step=None,
                                        size=None, stored=None, codec=None, compression=None,
                                        ratio=None, status=status,
                                        block=None if s.empty else s.slot))
            continue
        status, block = "ok", None
        try:
            entries, _ = load_map(reader, h, key=ring)
            chunk_sets[h.generation] = {(e.block, e.offset) for e in entries}
            check_state_size(reader, h, max_state_bytes, authenticated=ring is not None)
            read_payload(reader, h, entries, key=ring, kind="verify_bytes")
        except CheckpointCorrupt as exc:
            status, block = str(exc), exc.block
            if _recycled(reader, s.slot, h):
                status, block = (f"recycled: generation {h.generation} was dropped by a newer "
                                 "checkpoint while it was read (its slot no longer holds it)"), None
        except CheckpointTooLarge as exc:
            status = f"not read: {exc}"
        out.append(GenerationReport(
            **base, slot=s.slot, generation=h.generation, step=h.step, size=h.data_length,
            stored=h.stored_bytes, codec=h.codec, compression=h.compression,
            ratio=round(h.data_length / h.stored_bytes, 3) if h.stored_bytes else None,
            status=status, block=block, has_mac=h.has_mac,
            mac_checked=ring is not None and status == "ok", created_at=h.created_at,
            duration_s=h.duration_s, depth=h.depth))
    return [_with_sharing(r, chunk_sets) for r in out]


def _recycled(reader: LeaseReader, slot: int, h: Header) -> bool:
    """True if header slot ``slot`` no longer holds ``h`` (erased or rewritten since it was
    scanned): a live writer dropped that generation, so its blocks may hold newer data."""
    try:
        block = read_slots(reader, [slot])[0]
    except BlockStoreError:
        return False
    return block is None or bytes(block[:h.header_length]) != h.raw


def _with_sharing(r: GenerationReport,
                  chunk_sets: dict[int, set[tuple[int, int]]]) -> GenerationReport:
    mine = chunk_sets.get(r.generation) if r.generation is not None else None
    if mine is None:
        return r
    others = {g: c for g, c in chunk_sets.items() if g != r.generation}
    shared = {k for c in others.values() for k in c} & mine
    with_ = tuple(sorted((g for g, c in others.items() if c & mine), reverse=True))
    return GenerationReport(**{**asdict(r), "shared": len(shared), "shared_with": with_})
