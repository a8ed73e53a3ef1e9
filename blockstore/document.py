"""Slotted documents: one small JSON document per lease, saved crash-atomically.

Runs (step records and the run status, ``stages/pipeline/runs.py``) and the scheduler's registry
(``scheduler/registry.py``) each keep one JSON-able dict in a lease of the store and rewrite
it often. This module is the one mechanism for that; the byte layout is in
``docs/FORMAT.md`` (section "Slotted documents").

Layout: blocks ``0 .. K-1`` are header slots (K >= 2), one :data:`HEADER_SIZE`-byte header
each (the rest of the slot block is never read); payloads (canonical JSON,
:func:`blockstore.canonical.canonical_json`) fill whole runs of consecutive blocks from
block K on. A header names its payload's first block, length and CRC-32C, carries a
generation (+1 per save) and, when the caller passed a key, a MAC over the header, the
lease id and the payload - keyed BLAKE3 by default (``blockstore.macs.DOCUMENT_MAC``),
AES-GMAC or HMAC-SHA256 on request, HMAC-SHA256 in every document of layout version 1;
layout version 2 names the algorithm (``blockstore/macs.py``).
The whole header fits in one 512-byte sector, so a torn sector can only ever make it fail
its CRC.

Why this shape: the newest verified document must survive a crash at any point of the next
save, so a save never writes where that document lives (neither its slot nor its payload
blocks); the only write that makes a save visible is one small header write, checked by
CRC. K > 2 keeps K - 1 older documents as fallbacks against later damage.

The lease is the caller's: it acquires it (fencing is the store's job), hands it to
:class:`SlottedDocument` and, by closing the document, releases it. The caller also
chooses the key (this module never reads the environment; callers resolve the configured
keys with :func:`blockstore.keys.resolve_keys`, as checkpoints do). A key ring saves with
its current key and loads a document whose MAC verifies under any of its keys (rotation).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_json
from .checksum import crc32c
from .errors import DocumentEncodeError, DocumentTooLargeError
from .keys import KeyRing, resolve_keys
from .lease import Lease, LeaseReader
from .macs import DOCUMENT_MAC, MAC_ALGORITHMS, MAC_HMAC_SHA256, MAC_NONE, algorithm_id, equal
from .macs import new_mac

__all__ = [
    "DOCUMENT_MAGIC",
    "DOCUMENT_VERSION",
    "HEADER_SIZE",
    "DocumentLoad",
    "SkippedSlot",
    "SlottedDocument",
]

DOCUMENT_MAGIC = b"BPDC"
#: Version of the slot layout itself (the caller's ``kind``/``version`` version the fields).
#: 2: the u32 at 52 (reserved in 1) is the MAC algorithm id; 1 is still read (HMAC-SHA256).
DOCUMENT_VERSION = 2
READ_VERSIONS = (1, 2)
#: magic, layout version, kind, kind version, generation, length, first block, payload CRC,
#: slot count, slot index, flags, MAC algorithm, MAC; then the header CRC (FORMAT.md 5.1).
_HEAD = struct.Struct("<4sI4sIQQQIHHII32s")
_HEAD_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _HEAD_CRC.size  # 92
_MAC_AT = _HEAD.size - 32  # bytes [0, 56) are MACed, the MAC field itself is not
_FLAG_MAC = 1
#: The reasons a slot whose checksums verify fails authentication (``SkippedSlot.reason``).
REASON_NO_MAC = "no MAC, but a key is configured"
REASON_BAD_MAC = "MAC mismatch (wrong key or forged)"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SkippedSlot:
    """A header slot that was written but whose document was not returned, and why.

    Attributes:
        slot: the slot index (block number).
        generation: the generation its header claims, or ``None`` if the header is unreadable.
        reason: what failed (``header checksum mismatch``, ``payload checksum mismatch``,
            ``MAC mismatch``, ``kind ...``, ``unsupported version ...``).
    """

    slot: int
    generation: int | None
    reason: str

    @property
    def authentication(self) -> bool:
        """The slot verified but failed authentication (no MAC, or a MAC no key accepts)."""
        return self.reason in (REASON_NO_MAC, REASON_BAD_MAC)


@dataclass(frozen=True, slots=True)
class DocumentLoad:
    """What :meth:`SlottedDocument.load` found.

    Attributes:
        generation: the returned document's generation, or ``None`` if none verifies.
        document: the newest document that verifies, or ``None``.
        slot: the slot it was read from, or ``None``.
        skipped: the written slots that failed: every slot whose header is unreadable (its
            age is unknown), then the verified-CRC headers newer than the returned document
            (all of them when nothing verifies), newest first. Empty slots are not listed.
        mac: the returned document carries a MAC (verified when a key is configured; a
            reader without a key learns that the writer had one).
    """

    generation: int | None
    document: dict[str, Any] | None
    slot: int | None = None
    skipped: tuple[SkippedSlot, ...] = ()
    mac: bool = False


@dataclass(frozen=True, slots=True)
class _Header:
    slot: int
    generation: int
    length: int
    first: int
    crc: int
    flags: int
    mac: bytes
    raw: bytes  # bytes [0, HEADER_SIZE) as read
    mac_algorithm: int = MAC_NONE

    def blocks(self, block_size: int) -> int:
        return -(-self.length // block_size)


class SlottedDocument:
    """One JSON document kept in ``lease``: K header slots, payloads in other blocks.

    Commit protocol of :meth:`save` (``B`` = the block size):

    1. Load (as :meth:`load`) to find the newest verified document N. The target slot is
       an empty or failed slot, else the slot of the oldest verified generation; never N's.
    2. Choose the lowest run of blocks >= K + ``reserved`` that no verifying header other
       than the target's uses, and grow the lease to hold it (``Lease.grow``).
    3. If the target's old payload overlaps that run, erase the target slot (zero block).
    4. Write the payload blocks; flush.
    5. Write the header into the target slot; flush. This one write is the commit.

    What holds after a failure (crash, I/O error, fencing) at each step: before step 5
    nothing N depends on was written, so :meth:`load` returns N; a header cut during step 5
    fails its CRC (it fits one sector), so load returns N; once step 5's write is applied,
    load returns the new document. A refused write (stale epoch after a takeover, expired
    lease) raises ``StaleLeaseError``/``LeaseExpiredError`` and the only things it may
    have written are blocks no header refers to, so nothing visible changed. Bad input
    (``DocumentEncodeError``, ``DocumentTooLargeError``) is refused before any write.

    Guarantees of :meth:`load`: it returns a document only if its header CRC, payload
    CRC, kind, version and (with a key) MAC verify; it falls back to older slots and says
    why it skipped newer ones; it never raises for damaged content, and reads at most the
    lease's own blocks (a forged length is refused, not allocated).

    A context manager: leaving the ``with`` block closes the document, which releases the
    lease it was handed (the data stays). A document on a :class:`LeaseReader` only loads.
    One saver at a time: the lease's holder, from one thread (loads may run anywhere).

    Args:
        lease: the lease holding the document; a held :class:`Lease` to save.
        kind: 4 bytes naming what the document is (e.g. ``b"BPRD"``); load skips others.
        version: the caller's version of the document's fields; load skips others.
        reserved: blocks after the K slots that save never puts a payload in, left to the
            caller (the LangGraph saver keeps its threads' change logs there,
            ``blockstore/doclog.py``). Load reads a verifying payload wherever it lies.
        slots: K, the number of header slots (>= 2); every reader of a lease must use the
            same K.
        key: MAC key or :class:`~blockstore.keys.KeyRing`; with one, save MACs (current key)
            and load refuses documents without a MAC valid under one of its keys.
        mac: the MAC algorithm save uses, ``"blake3"`` (keyed BLAKE3, default),
            ``"aes-gmac"`` (not read by blockpoint before 2026-12-07) or ``"hmac-sha256"``;
            load reads any (the header names it).
        max_bytes: the largest encoded document save accepts and load reads.
    """

    def __init__(self, lease: LeaseReader, *, kind: bytes, version: int, slots: int = 2,
                 key: KeyRing | bytes | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, mac: str = DOCUMENT_MAC,
                 reserved: int = 0) -> None:
        if not isinstance(kind, bytes) or len(kind) != 4:
            raise ValueError(f"kind must be 4 bytes, got {kind!r}")
        if not isinstance(slots, int) or not 2 <= slots <= 0xFFFF:
            raise ValueError(f"slots must be an int in [2, 65535], got {slots!r}")
        if not isinstance(version, int) or not 0 <= version <= 0xFFFFFFFF:
            raise ValueError(f"version must be a u32, got {version!r}")
        if not isinstance(reserved, int) or reserved < 0:
            raise ValueError(f"reserved must be an int >= 0, got {reserved!r}")
        if key is not None and not isinstance(key, (KeyRing, bytes)):
            raise ValueError("key must be a KeyRing, non-empty bytes or None")
        if lease.block_size < HEADER_SIZE:
            raise ValueError(f"block size {lease.block_size} is smaller than a header")
        self.lease = lease
        self.kind = kind
        self.version = version
        self.slots = slots
        self.reserved = reserved
        self.max_bytes = max_bytes
        self._keys: KeyRing | None = None if key is None else resolve_keys(key)
        self._mac_alg = algorithm_id(mac)
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the lease if it is a held :class:`Lease` (data stays). Idempotent."""
        if not self._closed:
            self._closed = True
            if isinstance(self.lease, Lease):
                self.lease.release()

    def __enter__(self) -> SlottedDocument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- read ------------------------------------------------------------------------------
    def load(self) -> DocumentLoad:
        """The newest document that verifies, and the newer written slots that did not.

        Raises only for the store itself (``StorageIOError``, ``LeaseNotFoundError``,
        ``StoreClosedError``); damaged, torn, foreign or unauthenticated slots are skipped.
        """
        found, _ = self._scan()
        return found

    def _scan(self) -> tuple[DocumentLoad, list[_Header]]:
        """The load result, and every header whose own CRC verifies (for the allocator)."""
        lease = self.lease
        num_blocks = lease.num_blocks
        count = min(num_blocks, self.slots)
        bufs = [bytearray(HEADER_SIZE) for _ in range(count)]
        if count:
            lease.read_blocks_into(range(count), [memoryview(b) for b in bufs])
        skipped: list[SkippedSlot] = []
        headers: list[_Header] = []
        for slot, raw in enumerate(bufs):
            if not any(raw):
                continue  # empty: never written, or erased by a save in progress
            header, why = self._parse(slot, bytes(raw), num_blocks)
            if header is None:
                skipped.append(SkippedSlot(slot, None, why))
            else:
                headers.append(header)
        skipped.sort(key=lambda s: s.slot)
        for header in sorted(headers, key=lambda h: h.generation, reverse=True):
            doc, why = self._verify(header)
            if doc is not None:
                return DocumentLoad(header.generation, doc, header.slot, tuple(skipped),
                                    bool(header.flags & _FLAG_MAC)), headers
            skipped.append(SkippedSlot(header.slot, header.generation, why))
        return DocumentLoad(None, None, None, tuple(skipped)), headers

    def _parse(self, slot: int, raw: bytes, num_blocks: int) -> tuple[_Header | None, str]:
        (magic, layout, kind, version, generation, length, first, crc, k, index, flags,
         mac_alg, mac) = _HEAD.unpack_from(raw)
        (stored,) = _HEAD_CRC.unpack_from(raw, _HEAD.size)
        if crc32c(raw[:_HEAD.size]) != stored:
            return None, "header checksum mismatch"
        if magic != DOCUMENT_MAGIC:
            return None, f"bad magic {magic!r}"
        if layout not in READ_VERSIONS:
            return None, f"unsupported document layout version {layout}"
        if kind != self.kind:
            return None, f"kind {kind!r}, expected {self.kind!r}"
        if version != self.version:
            return None, f"unsupported version {version} of {kind!r} (reads {self.version})"
        if layout == 1:  # the u32 at 52 is reserved; a MAC is HMAC-SHA256
            if mac_alg:
                return None, f"inconsistent header (reserved field {mac_alg})"
            mac_alg = MAC_HMAC_SHA256 if flags & _FLAG_MAC else MAC_NONE
        if k != self.slots or index != slot or flags & ~_FLAG_MAC:
            return None, f"inconsistent header (K={k}, slot {index}, flags {flags:#x})"
        if mac_alg not in (MAC_NONE, *MAC_ALGORITHMS.values()) or (mac_alg != MAC_NONE) != bool(flags):
            return None, f"inconsistent header (MAC algorithm {mac_alg}, flags {flags:#x})"
        bs = self.lease.block_size
        if length > self.max_bytes or first < self.slots or first + -(-length // bs) > num_blocks:
            return None, (f"generation {generation}: payload of {length} bytes at block "
                          f"{first} does not fit the lease ({num_blocks} blocks)")
        return _Header(slot, generation, length, first, crc, flags, mac, raw, mac_alg), ""

    def _verify(self, h: _Header) -> tuple[dict[str, Any] | None, str]:
        payload = bytearray(h.length)
        if h.length:
            self.lease.read_run_into(h.first, memoryview(payload))
        if crc32c(payload) != h.crc:
            return None, "payload checksum mismatch"
        if self._keys is not None:
            if not h.flags & _FLAG_MAC:
                return None, REASON_NO_MAC
            head = h.raw[:_MAC_AT]
            if not any(equal(self._mac(h.mac_algorithm, k, head, payload, h.mac), h.mac)
                       for k in self._keys.all):
                return None, REASON_BAD_MAC
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return None, f"payload is not JSON: {exc}"
        if not isinstance(doc, dict):
            return None, "payload is not a JSON object"
        return doc, ""

    def _mac(self, alg: int, key: bytes, head: bytes, payload: bytes | bytearray,
             verifying: bytes | None = None) -> bytes:
        m = new_mac(alg, key, purpose="document", verifying=verifying)
        m.update(head)
        m.update(self.lease.lease_id.encode())
        m.update(payload)
        return m.digest()

    # -- write -----------------------------------------------------------------------------
    def encode(self, document: Mapping[str, Any]) -> bytes:
        """The payload ``save`` would write; raises the errors ``save`` raises for bad input."""
        if not isinstance(document, Mapping):
            raise DocumentEncodeError(
                f"a document is a dict, not {type(document).__name__}",
                lease_id=self.lease.lease_id, name=self.lease.name)
        try:
            payload = canonical_json(dict(document))
        except (TypeError, ValueError) as exc:
            raise DocumentEncodeError(f"document for lease {self.lease.name!r} is not JSON: "
                                      f"{exc}", lease_id=self.lease.lease_id,
                                      name=self.lease.name) from exc
        if len(payload) > self.max_bytes:
            raise DocumentTooLargeError(
                f"document for lease {self.lease.name!r} is {len(payload)} bytes, more than "
                f"{self.max_bytes}", size=len(payload), limit=self.max_bytes,
                lease_id=self.lease.lease_id, name=self.lease.name)
        return payload

    def save(self, document: Mapping[str, Any]) -> int:
        """Save ``document`` as the new newest generation; return that generation.

        Follows the commit protocol in the class docstring. Raises ``DocumentEncodeError``
        or ``DocumentTooLargeError`` (nothing written), ``TypeError`` if the document was
        opened on a reader, or the store's errors (``StaleLeaseError`` when fenced,
        ``StorageIOError``); after any of them :meth:`load` returns the previous document
        or, if the commit write was applied, the new one.
        """
        lease = self.lease
        if not isinstance(lease, Lease):
            raise TypeError(f"document on {lease.name!r} was opened on a reader; save needs "
                            "a held Lease")
        payload = self.encode(document)
        found, headers = self._scan()
        bs = lease.block_size
        newest = found.slot
        by_slot = {h.slot: h for h in headers}
        failed = {s.slot for s in found.skipped}
        # Prefer a slot with nothing to lose (empty, unreadable, known bad), then the oldest.
        order = sorted(range(self.slots), key=lambda s: (
            s in by_slot, s in by_slot and s not in failed,
            by_slot[s].generation if s in by_slot else 0, s))
        target = next(s for s in order if s != newest)
        generation = max((h.generation for h in headers), default=0) + 1
        n = -(-len(payload) // bs)
        used = sorted((h.first, h.first + h.blocks(bs)) for h in headers if h.slot != target)
        first = self.slots + self.reserved
        for start, end in used:
            if first + n <= start:
                break
            first = max(first, end)
        flags = _FLAG_MAC if self._keys is not None else 0
        alg = self._mac_alg if self._keys is not None else MAC_NONE
        head = _HEAD.pack(DOCUMENT_MAGIC, DOCUMENT_VERSION, self.kind, self.version,
                          generation, len(payload), first, crc32c(payload), self.slots,
                          target, flags, alg, bytes(32))
        if self._keys is not None:
            head = head[:_MAC_AT] + self._mac(alg, self._keys.current, head[:_MAC_AT], payload)
        head += _HEAD_CRC.pack(crc32c(head))
        lease.grow(max(first + n, self.slots))
        old = by_slot.get(target)
        if old is not None and old.first < first + n and first < old.first + old.blocks(bs):
            lease.write_blocks({target: bytes(HEADER_SIZE)})
        view = memoryview(payload)
        lease.write_blocks({first + i: view[i * bs:(i + 1) * bs] for i in range(n)})
        lease.flush()
        lease.write_blocks({target: head})  # the commit
        lease.flush()
        return generation

    def __repr__(self) -> str:
        return (f"SlottedDocument(lease={self.lease.name!r}, kind={self.kind!r}, "
                f"version={self.version}, slots={self.slots}, mac={self._keys is not None})")
