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
   next older one is tried.
3. If none verifies, raise the most informative failure
   (:func:`~stages.checkpoint.reports.restore_failure`), every one listed in ``.skipped``.

Nothing is decoded - nothing unpickled - before every byte of it passed its checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from blockstore import LeaseReader

from ..errors import CheckpointCorrupt, NoCheckpointError, TornHeaderError
from . import codec as codecs
from .format import Header, MapEntry
from .mac import KeySetting, resolve_keys, warn_unauthenticated
from .reader import SlotScan, read_payload, scan_slots
from .reports import CheckpointInfo, RestoreReport, restore_failure
from .writer import blocks_of

__all__ = ["Restored", "newest_valid"]


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
                 max_step: int | None = None) -> Restored:
    """The newest generation of ``reader``'s lease (at or before ``max_step``) that verifies
    and decodes; see the module docstring. ``key`` None: the configured keys, if any.
    ``log``: the caller's logger, which reports each skipped generation (restore's events
    stay under ``stages.checkpoint.state``, where log filters select them).

    Raises:
        NoCheckpointError: the lease holds no checkpoint (at or before ``max_step``).
        CheckpointCorrupt: no generation verifies (``.skipped`` lists them all).
    """
    rkey = resolve_keys(key)
    k, scans = scan_slots(reader)
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
            entries, blocks = blocks_of(reader, h, rkey)
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
        except CheckpointCorrupt as exc:
            log.warning("restore of %s: skipping generation %d: %s", where, h.generation,
                        exc, extra={"stage": reader.name, "generation": h.generation,
                                    "cause": type(exc).__name__})
            skipped.append((h.generation, str(exc)))
            newest_err = newest_err or exc
            fell_back += 1
            continue
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
