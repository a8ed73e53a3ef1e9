"""The restore path: the newest generation of a lease that verifies, read and decoded.

:meth:`CheckpointedStageState.restore <stages.checkpoint.state.CheckpointedStageState.restore>`
calls :func:`newest_valid` and binds what it returns to the lease. The search
(``docs/FORMAT.md`` 2.7):

1. Scan the header slots (:func:`~stages.checkpoint.reader.scan_slots`). Nothing, or only the
   torn header of an interrupted first commit: :class:`~stages.errors.NoCheckpointError`.
2. Take the candidates newest first (only those at or before ``max_step``, for a pipeline
   rollback). For each: load and check its map (its header MAC first, with a key), read and
   verify every chunk (:func:`~stages.checkpoint.reader.read_payload`: CRCs, the payload MAC),
   then decode. A generation that fails any of these is logged, listed as skipped, and the
   next older one is tried - except one that is well-formed but not authentic under any
   configured key (:class:`~stages.errors.CheckpointAuthError`: no MAC, or a MAC no key
   matches, with every CRC passing): that is a key this process lacks (a rotation not yet
   everywhere) or a writer without a key, and falling back would silently drop what it
   committed, so the restore raises it (``max_step=`` restores an older one on purpose).
3. If none verifies, raise the most informative failure
   (:func:`~stages.checkpoint.reports.restore_failure`), every one listed in ``.skipped``.

A read-only restore (a ``LeaseReader``: ``blockpoint verify`` or ``inspect`` during a run)
may run beside the lease's writer. With retention 2, two commits while it reads reuse the
blocks of the generation it reads; its chunks then fail their CRCs, and it reported "no
generation verifies", or fell back to an older generation, on a healthy lease (65 of 9,318
restores beside a writer committing in a loop; once, "holds no checkpoint": the slots read
one by one, each mid-commit). So when a generation failed, the slots are
scanned again; if they changed (a commit since), the search starts over, at most
:data:`RACE_RETRIES` times. A lease whose slots did not change is damaged: reported as
before. A restore that holds the lease (taken by force) has no writer beside it.

Before a candidate's payload buffer is allocated its declared length is bounded
(``max_state_bytes``). The map's checks bound raw chunks by the lease (each its own data
block), but a zstd chunk of 9 stored bytes may declare a whole block of raw bytes, so a
consistent forged header in a 4 MiB lease of 1 MiB blocks can declare ~21 GiB (21,845 inline
map entries of 1 MiB each): no bound by the lease's size alone is useful for compressed data.
So the caller's ``max_state_bytes`` bounds every restore, and without one a generation whose
header is not authenticated (no key) is bounded by :func:`default_max_state_bytes`; one whose
header MAC verified is the key holder's and is trusted. Exceeding the bound raises
:class:`~stages.errors.CheckpointTooLarge` at once (not skipped: an older generation would be
a silent rollback).

Nothing is decoded - nothing unpickled - before every byte of it passed its checks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from blockstore import LeaseReader

from ..errors import (
    CheckpointAuthError,
    CheckpointCorrupt,
    CheckpointTooLarge,
    NoCheckpointError,
    TornHeaderError,
)
from . import codec as codecs
from .format import Header, MapEntry
from .incremental import content_hash
from .mac import KeySetting, resolve_keys, warn_unauthenticated
from .reader import SlotScan, read_payload, scan_slots
from .reports import CheckpointInfo, RestoreReport, restore_failure
from .writer import blocks_of

__all__ = ["DEFAULT_MAX_RATIO", "MIN_STATE_LIMIT", "RACE_RETRIES", "Restored", "check_max_state_bytes",
           "check_state_size", "default_max_state_bytes", "newest_valid"]

#: A keyless restore allocates at most this many times the lease's data bytes ...
DEFAULT_MAX_RATIO = 100
#: ... or this much, whichever is more (a small lease may hold a sparse state of zeros).
MIN_STATE_LIMIT = 256 * 1024 * 1024


def default_max_state_bytes(num_blocks: int, slots: int, block_size: int) -> int:
    """The bound on an unauthenticated generation's declared state: ``DEFAULT_MAX_RATIO`` x
    the lease's data bytes (its blocks after the header slots), at least ``MIN_STATE_LIMIT``.

    zstd rarely compresses real state past 10-20x; zeros compress ~25,000x at 1 MiB blocks, so
    a sparse state may need ``max_state_bytes=`` (``docs/FORMAT.md`` 2.7, step 3a).
    """
    return max(MIN_STATE_LIMIT, DEFAULT_MAX_RATIO * max(num_blocks - slots, 0) * block_size)


def check_max_state_bytes(value: object) -> int | None:
    """``value`` if it can bound a restore (an int >= 0, or None for the default); else
    ``ValueError``. Checked where the bound is given (``@checkpointed``, ``StageSpec``'s
    restore, ``blockpoint verify``) as well as where it is used."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 0):
        raise ValueError(f"max_state_bytes must be an int >= 0 or None, got {value!r}")
    return value


def check_state_size(reader: LeaseReader, h: Header, max_state_bytes: int | None,
                     authenticated: bool) -> None:
    """``CheckpointTooLarge`` if ``h`` declares more state than this restore may allocate."""
    if max_state_bytes is None:
        if authenticated:
            return
        limit = default_max_state_bytes(reader.num_blocks, h.slots, reader.block_size)
        how = (f"the default for an unauthenticated header ({DEFAULT_MAX_RATIO}x the lease's "
               f"data bytes, at least {MIN_STATE_LIMIT})")
    else:
        limit, how = max_state_bytes, "max_state_bytes"
    if h.data_length > limit:
        raise CheckpointTooLarge(
            f"lease {reader.name!r} ({reader.lease_id}) generation {h.generation} declares a "
            f"state of {h.data_length} bytes, more than {limit} ({how}); nothing was "
            "allocated. If it is genuine, restore with a larger max_state_bytes= (or with "
            "the key); if not, max_step= restores an older generation",
            lease_id=reader.lease_id, name=reader.name, generation=h.generation,
            data_length=h.data_length, limit=limit)


@dataclass(frozen=True, slots=True)
class Restored:
    """The generation a restore returns, and what its writer must know of the lease.

    ``slots``: the lease's header slot count (2 when no valid header names one); ``scans``
    the slots as found; ``blocks`` every block the restored generation references (data
    and map); ``entries`` its checked map (a trusted incremental base when hashed).
    ``fell_back``: newer generations passed over because they did not verify - fewer than
    ``report.skipped`` lists, which also holds the torn header of a commit a crash cut
    short (never committed) and damaged generations older than the one returned.
    """

    state: Any
    header: Header
    entries: list[MapEntry]
    blocks: frozenset[int]
    slots: int
    scans: list[SlotScan]
    report: RestoreReport
    fell_back: int = 0


def newest_valid(reader: LeaseReader, *, log: logging.Logger, key: KeySetting = None,
                 max_step: int | None = None, max_state_bytes: int | None = None) -> Restored:
    """The newest generation of ``reader``'s lease (at or before ``max_step``) that verifies
    and decodes; see the module docstring. ``key`` None: the configured keys, if any.
    ``log``: the caller's logger, which reports each skipped generation (restore's events
    stay under ``stages.checkpoint.state``, where log filters select them).

    ``max_state_bytes``: the largest state a generation may declare (see the module
    docstring; None: :func:`default_max_state_bytes` for unauthenticated headers).

    Raises:
        NoCheckpointError: the lease holds no checkpoint (at or before ``max_step``).
        CheckpointAuthError: the newest candidate is well-formed but not authentic under
            any configured key (never skipped: see the module docstring).
        CheckpointCorrupt: no generation verifies (``.skipped`` lists them all).
        CheckpointTooLarge: the newest candidate that passed its map checks declares more
            than the bound.
        ValueError: ``max_state_bytes`` is not an int >= 0 or None.
    """
    check_max_state_bytes(max_state_bytes)
    for attempt in range(RACE_RETRIES + 1):
        # One record lookup (object stores) for the slot scan, the maps and the payloads:
        # one consistent view of the lease, and no serial lookups before the payload's reads.
        failure: CheckpointCorrupt | NoCheckpointError | None = None
        with reader.snapshot():
            k, scans = scan_slots(reader)
            try:
                got = _newest_valid(reader, k, scans, log=log, key=key, max_step=max_step,
                                    max_state_bytes=max_state_bytes)
            except (CheckpointCorrupt, NoCheckpointError) as exc:
                failure = exc
        if failure is None and got.fell_back == 0:
            return got
        # A generation failed: real damage, or a writer beside this read-only restore that
        # committed twice while it read and reused that generation's blocks (retention 2).
        # Only then the slots moved: read again (bounded), never report that as damage.
        if attempt == RACE_RETRIES or not _slots_moved(reader, scans):
            break
        log.info("restore of lease %r: its header slots changed while it was read (a writer "
                 "beside this restore); reading again", reader.name)
    if failure is not None:
        raise failure
    return got


#: Re-reads of a lease whose header slots changed while a restore read it.
RACE_RETRIES = 8


def _slots_moved(reader: LeaseReader, scans: Sequence[SlotScan]) -> bool:
    """True if the header slots no longer hold what ``scans`` found (a commit since)."""
    with reader.snapshot():
        _, now = scan_slots(reader)
    return _slot_view(now) != _slot_view(scans)


def _slot_view(scans: Sequence[SlotScan]) -> list[tuple[int, int | None, bool]]:
    return [(s.slot, None if s.header is None else s.header.generation, s.empty)
            for s in scans]


def _newest_valid(reader: LeaseReader, k: int | None, scans: list[SlotScan], *,
                  log: logging.Logger, key: KeySetting, max_step: int | None,
                  max_state_bytes: int | None) -> Restored:
    rkey = resolve_keys(key)
    where = f"lease {reader.name!r} ({reader.lease_id})"
    if all(s.empty or isinstance(s.error, TornHeaderError) for s in scans):
        # Nothing, or only the remains of an interrupted first commit: never committed.
        raise NoCheckpointError(f"{where} holds no checkpoint", lease_id=reader.lease_id,
                                name=reader.name)
    headers = sorted((s.header for s in scans if s.header is not None
                      and (max_step is None or s.header.step <= max_step)),
                     key=lambda h: -h.generation)
    if max_step is not None and not headers:
        raise NoCheckpointError(f"{where} holds no checkpoint at or before step {max_step}",
                                lease_id=reader.lease_id, name=reader.name)
    errors: list[CheckpointCorrupt] = [s.error for s in scans if s.error is not None]
    skipped: list[tuple[int | None, str]] = [(e.generation, str(e)) for e in errors]
    newest_err: CheckpointCorrupt | None = None
    fell_back = 0
    for h in headers:
        try:
            entries, blocks = blocks_of(reader, h, rkey)  # with a key: header MAC checked
            check_state_size(reader, h, max_state_bytes, authenticated=rkey is not None)
            buf = read_payload(reader, h, entries, key=rkey)
            if rkey is None and h.codec == "pickle":
                warn_unauthenticated(where, stacklevel=4)  # the restore's caller
            try:
                state = codecs.decode(memoryview(buf), h.codec)
            except Exception as exc:
                raise CheckpointCorrupt(
                    f"{where} generation {h.generation}: payload does not decode: "
                    f"{type(exc).__name__}: {exc}", lease_id=reader.lease_id,
                    name=reader.name, generation=h.generation, slot=h.slot) from exc
        except CheckpointAuthError as exc:
            # Well-formed (its CRCs pass: damage is a CheckpointCorrupt above) but not
            # authentic under any configured key: written under a key this process lacks
            # (a rotation not yet on every node) or by a writer without one. An older
            # generation would silently drop what this one committed: refuse instead.
            raise CheckpointAuthError(
                f"{exc}. Refusing to fall back to an older generation: generation "
                f"{h.generation} is well-formed, so falling back would silently lose what it "
                "committed. If this process lacks the key it was written with (a key "
                "rotation not yet on every node: docs/OPERATIONS.md, 'Keys and rotation'), "
                "give it that key, as an old key, and restore again; to give up that "
                "generation, restore with max_step= below its step",
                lease_id=reader.lease_id, name=reader.name, generation=h.generation,
                slot=h.slot) from exc
        except CheckpointCorrupt as exc:
            log.warning("restore of %s: skipping generation %d: %s", where, h.generation,
                        exc, extra={"stage": reader.name, "generation": h.generation,
                                    "cause": type(exc).__name__})
            skipped.append((h.generation, str(exc)))
            newest_err = newest_err or exc
            fell_back += 1
            continue
        if h.hashed:  # the entries become the next commit's incremental base
            entries = _hashes_of(entries, buf)
        info = CheckpointInfo.from_header(h, reader.lease_id, reader.name, len(blocks))
        skipped.sort(key=lambda t: -(t[0] if t[0] is not None else -1))
        report = RestoreReport(generation=h.generation, step=h.step, meta=dict(h.meta),
                               info=info, skipped=tuple(skipped))
        # A damaged header newer than the one restored is a fallback too; the torn header
        # of an interrupted commit (never committed) and an older damaged one are not.
        fell_back += sum(1 for e in errors if not isinstance(e, TornHeaderError)
                         and e.generation is not None and e.generation > h.generation)
        return Restored(state, h, entries, blocks, k or 2, scans, report, fell_back)
    raise restore_failure(where, newest_err, errors, tuple(skipped))


def _hashes_of(entries: Sequence[MapEntry], buf: Any) -> list[MapEntry]:
    """``entries`` with each chunk's content hash taken from the verified payload ``buf``,
    not from the map: a spilled map is checked by CRC-32C only, so a store writer without
    the key could set an entry's hash (keeping the CRCs) to one of other bytes, and the next
    incremental commit would reuse a stale chunk for them (FORMAT.md 2.2). Found by a
    review; costs one XXH3 pass over the payload of a hashed generation."""
    mv = memoryview(buf)
    out: list[MapEntry] = []
    pos = 0
    for e in entries:
        digest = content_hash(mv[pos:pos + e.raw])
        pos += e.raw
        out.append(e if e.hash == digest else e._replace(hash=digest))
    return out
