"""Thread storage: a thread's snapshot document and its change log, in the thread's lease.

Why a log: LangGraph adds one small checkpoint per super-step and a task's writes after
it, while the thread document (``blockpoint_langgraph/thread.py``) holds up to
``retention`` checkpoints. Rewriting that whole document per change cost two flushes and
a write that grew with the history. So the document is a **snapshot**
(:class:`blockstore.document.SlottedDocument`, layout ``"v": 2``) and each ``put`` and
``put_writes`` appends one operation as a record to the log region of the same lease
(:class:`blockstore.doclog.DocumentLog`): one write of a few KiB and one flush. When the
region is full (or for a rare change - prune, copy, delete of runs) the writer saves a new
snapshot with everything folded in, and the log starts again at the region's start.
Layout and crash safety: ``docs/FORMAT.md`` 5.4.

Lease layout: blocks ``0 .. 2`` the snapshot's header slots, blocks ``3 .. 3 + L - 1``
the log region (L = :func:`log_blocks`, recorded in the snapshot), snapshot payloads after
it (``SlottedDocument(reserved=L)``). A layout 1 thread (no log; its payloads may lie in
what is now the region) is read as it is, and its first change saves a layout 2
snapshot before any record is written.

The writer keeps the thread's decoded document and the log's tail in memory
(:class:`ThreadState`) for as long as it holds the thread at the same lease epoch: no
re-read before a write. Fencing is unchanged: every record write and flush is checked by
the store against that epoch, so a writer that was taken over has its record refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from blockstore import LeaseReader, SlottedDocument
from blockstore.canonical import canonical_json
from blockstore.doclog import DocumentLog, LogTail
from blockstore.document import DocumentLoad
from blockstore.keys import KeyRing
from blockstore.lease import Lease

from . import thread as td

__all__ = ["DOCUMENT_KIND", "SLOTS", "ThreadState", "append", "log_blocks", "open_document",
           "replay", "snapshot"]

#: The slotted-document kind of a thread document (and of its log records).
DOCUMENT_KIND = b"BPLG"
SLOTS = 3  # the newest snapshot and two fallbacks
_REGION_BYTES = 256 * 1024


def log_blocks(block_size: int) -> int:
    """L, the log region's length in blocks: 256 KiB, at least 16 records, at most 1024."""
    return max(16, min(1024, _REGION_BYTES // block_size))


@dataclass(slots=True)
class ThreadState:
    """What the thread's writer knows: valid while it holds the lease at ``epoch``.

    Attributes:
        doc: the decoded thread document, every committed change applied.
        tail: where the next record goes; ``None`` when the next change must be a
            snapshot (a new thread, or a layout 1 document).
        lease_id: the thread's lease.
        epoch: the writer's lease epoch when this state was current.
        keys: the key ring it was read and written with.
    """

    doc: dict[str, Any]
    tail: LogTail | None
    lease_id: str
    epoch: int
    keys: KeyRing | None

    def current(self, lease: Lease, keys: KeyRing | None) -> bool:
        """Still the truth for a write under ``lease`` with ``keys``."""
        return (self.lease_id == lease.lease_id and self.epoch == lease.epoch
                and self.keys == keys)


def open_document(lease: LeaseReader, keys: KeyRing | None) -> SlottedDocument:
    """The thread's snapshot document (of layout 1 or 2)."""
    return SlottedDocument(lease, kind=DOCUMENT_KIND, version=td.DOC_VERSION, slots=SLOTS,
                           key=keys, reserved=log_blocks(lease.block_size))


def replay(lease: LeaseReader, keys: KeyRing | None, found: DocumentLoad,
           doc: dict[str, Any]) -> LogTail | None:
    """Apply the log records that continue ``found`` (the loaded snapshot) to ``doc``, in
    order; the log's tail, or ``None`` if the document has no log (layout 1).

    Raises ``ValueError``/``TypeError`` for a record that verifies but holds no known operation (the
    caller reports the thread as corrupt).
    """
    log = doc.get("log")
    if doc.get("v") != td.LAYOUT_VERSION or not isinstance(log, dict) or \
            found.generation is None:
        return None
    first, blocks, seq = log.get("first"), log.get("blocks"), log.get("seq")
    if not all(isinstance(v, int) and v >= 0 for v in (first, blocks, seq)) or \
            first < SLOTS or not blocks:
        raise ValueError(f"snapshot names a bad log region {log!r}")
    found_log = DocumentLog(lease, kind=DOCUMENT_KIND, first=first, blocks=blocks, key=keys)
    result = found_log.replay(found.generation, seq)
    for payload in result.payloads:
        op = json.loads(payload)
        if not isinstance(op, dict):
            raise TypeError("a log record is not a JSON object")
        td.apply(doc, op)
    return result.tail


def append(lease: Lease, keys: KeyRing | None, doc: dict[str, Any], tail: LogTail,
           op: dict[str, Any]) -> LogTail | None:
    """Append ``op`` to the log (one write, one flush); the new tail, or ``None`` (nothing
    written) if it does not fit in the region: then the caller saves a snapshot."""
    log = doc["log"]
    region = DocumentLog(lease, kind=DOCUMENT_KIND, first=log["first"], blocks=log["blocks"],
                         key=keys)
    return region.append(tail, canonical_json(op))


def snapshot(lease: Lease, keys: KeyRing | None, doc: dict[str, Any],
             tail: LogTail | None) -> LogTail:
    """Save ``doc`` (every change applied) as the new snapshot, with an empty log after it;
    the tail of that log. Two flushes (``SlottedDocument.save``)."""
    seq = tail.seq if tail is not None else 1
    doc["v"] = td.LAYOUT_VERSION
    doc["log"] = {"first": SLOTS, "blocks": log_blocks(lease.block_size), "seq": seq}
    generation = open_document(lease, keys).save(doc)
    return LogTail(generation, seq)
