"""Document logs: small checksummed records of changes, appended after a slotted document.

A :class:`~blockstore.document.SlottedDocument` save rewrites the whole document and costs
two flushes (payload, then the committing header). A caller that changes a large document
by small steps - the LangGraph saver adds one checkpoint per super-step - can instead keep
the document as a **snapshot** and append each change as one **record** to a fixed region
of the same lease (``SlottedDocument(reserved=L)`` keeps that region free of payloads):
one write and one flush per change. Now and then the caller folds the records into a new
snapshot (a document save) and the log starts again at the region's first block. What a
record's payload means (a JSON operation, say) is the caller's business; this module only
writes records and says which ones form the valid continuation of a snapshot. The byte
layout is in ``docs/FORMAT.md`` (section 5.4).

Why one flush is enough: a record is only ever written to blocks at or after the end of
the valid log, never over a record the current chain uses, so a crash (or a refused write)
at any point of an append leaves every earlier record intact; the record itself is
checked by its header CRC (which covers its payload CRC) and, with a key, by a MAC, so a
torn or half-persisted record is never taken. Once the flush returns the record is
durable, and the next record is written only after that, so the chain's order on disk is
its order in time.

Why stale records beyond the end are never taken for the continuation: the region is
reused after every snapshot, and a crash can leave an orphan behind a torn record. So a
record counts only if it continues the chain exactly: it names the snapshot generation it
continues (``base``), carries the next sequence number, a writer epoch no lower than its
predecessor's (a later holder never extends an earlier holder's orphan) and the header CRC
of its predecessor (``prev``). A record of an older lap, of an older snapshot, or written
after a record that was later replaced fails one of these.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .checksum import crc32c
from .keys import KeyRing
from .lease import Lease, LeaseReader
from .macs import DOCUMENT_MAC, MAC_ALGORITHMS, MAC_NONE, algorithm_id, equal, new_mac

__all__ = [
    "RECORD_HEADER_SIZE",
    "RECORD_MAGIC",
    "RECORD_VERSION",
    "DocumentLog",
    "LogReplay",
    "LogTail",
]

RECORD_MAGIC = b"BPDL"
RECORD_VERSION = 1
#: magic, layout version, kind, flags, base generation, seq, epoch, payload length, payload
#: CRC, prev (header CRC of the previous record), MAC algorithm, MAC; then the header CRC.
_REC = struct.Struct("<4sI4sIQQQIIII32s")
_REC_CRC = struct.Struct("<I")
RECORD_HEADER_SIZE = _REC.size + _REC_CRC.size  # 92
_MAC_AT = _REC.size - 32
_FLAG_MAC = 1
#: Bytes of each region block read in one go by :meth:`DocumentLog.replay` (records
#: longer than this are read again whole).
_PREFIX = 4096
#: The HMAC-SHA256 domain tag of a record MAC (the others use "document log" keys).
HMAC_TAG = b"blockpoint document log v1\x00"


@dataclass(frozen=True, slots=True)
class LogTail:
    """Where the next record goes and what it must carry to continue the chain.

    Attributes:
        base: generation of the snapshot the log continues.
        seq: sequence number of the next record.
        block: region-relative block of the next record.
        prev: header CRC of the last record (0: none since the snapshot).
        epoch: writer epoch of the last record (0: none).
    """

    base: int
    seq: int
    block: int = 0
    prev: int = 0
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class LogReplay:
    """What :meth:`DocumentLog.replay` found.

    Attributes:
        payloads: the chain's record payloads, oldest first.
        tail: where the next record goes.
        stopped: why the scan ended (``"end of region"``, ``"empty block"``, ``"header
            checksum mismatch"``, ``"seq 7, expected 9"``, ...), for diagnostics.
    """

    payloads: tuple[bytes, ...]
    tail: LogTail
    stopped: str


class DocumentLog:
    """The record region of one lease: blocks ``first .. first + blocks - 1``.

    One writer at a time (the lease's holder, from one thread); replays may run anywhere
    and see a valid prefix of the chain (a record being written is either taken whole or
    ends the chain). Each record starts on a block boundary and occupies
    ``ceil((92 + length) / B)`` blocks.

    Args:
        lease: the lease; a held :class:`Lease` to append.
        kind: 4 bytes naming the records' owner (the snapshot's kind); others end a chain.
        first: the region's first block.
        blocks: the region's length in blocks.
        key: MAC key ring; with one, appends MAC (current key) and replays take only
            records whose MAC verifies under one of its keys. Without one, replays check
            CRCs only (the caller decides whether it trusts an unauthenticated thread).
        mac: the algorithm appends use (``"blake3"``, the default, ``"aes-gmac"`` or
            ``"hmac-sha256"``).
    """

    def __init__(self, lease: LeaseReader, *, kind: bytes, first: int, blocks: int,
                 key: KeyRing | None = None, mac: str = DOCUMENT_MAC) -> None:
        if not isinstance(kind, bytes) or len(kind) != 4:
            raise ValueError(f"kind must be 4 bytes, got {kind!r}")
        if first < 0 or blocks < 1:
            raise ValueError(f"bad log region: first {first}, {blocks} blocks")
        if lease.block_size < RECORD_HEADER_SIZE:
            raise ValueError(f"block size {lease.block_size} is smaller than a record header")
        self.lease = lease
        self.kind = kind
        self.first = first
        self.blocks = blocks
        self._keys = key
        self._alg = algorithm_id(mac) if key is not None else MAC_NONE

    def _mac(self, alg: int, key: bytes, head: bytes, payload: bytes | memoryview,
             verifying: bytes | None = None) -> bytes:
        m = new_mac(alg, key, purpose="document log", hmac_tag=HMAC_TAG, verifying=verifying)
        m.update(head)
        m.update(self.lease.lease_id.encode())
        m.update(payload)
        return m.digest()

    # -- write -----------------------------------------------------------------------------
    def record(self, tail: LogTail, payload: bytes, epoch: int) -> tuple[bytes, int]:
        """The bytes of the record that continues ``tail``, and its header CRC."""
        flags = _FLAG_MAC if self._keys is not None else 0
        head = _REC.pack(RECORD_MAGIC, RECORD_VERSION, self.kind, flags, tail.base, tail.seq,
                         epoch, len(payload), crc32c(payload), tail.prev, self._alg, bytes(32))
        if self._keys is not None:
            head = head[:_MAC_AT] + self._mac(self._alg, self._keys.current, head[:_MAC_AT],
                                              payload)
        crc = crc32c(head)
        return head + _REC_CRC.pack(crc) + payload, crc

    def append(self, tail: LogTail, payload: bytes) -> LogTail | None:
        """Write one record at ``tail`` and flush it; the new tail, or ``None`` (nothing
        written) if it does not fit in what is left of the region.

        Raises the store's errors (``StaleLeaseError`` when fenced, ``StorageIOError``);
        then the record may or may not be durable, and every earlier one is intact.
        """
        lease = self.lease
        if not isinstance(lease, Lease):
            raise TypeError(f"log on {lease.name!r} was opened on a reader; append needs a "
                            "held Lease")
        data, crc = self.record(tail, payload, lease.epoch)
        bs = lease.block_size
        n = -(-len(data) // bs)
        if tail.block + n > self.blocks:
            return None
        view = memoryview(data)
        at = self.first + tail.block
        # The commit: one write and its flush, in one call (one fencing check).
        # Unpadded: nothing reads a record's block past its end (docs/FORMAT.md 5.4).
        lease.write_blocks([(at + i, view[i * bs:(i + 1) * bs]) for i in range(n)], flush=True,
                           pad=False)
        return LogTail(tail.base, tail.seq + 1, tail.block + n, crc, lease.epoch)

    # -- read ------------------------------------------------------------------------------
    def replay(self, base: int, seq: int) -> LogReplay:
        """The records that continue snapshot generation ``base`` from sequence ``seq``.

        Raises only for the store itself; a damaged, torn, foreign or stale record ends the
        chain (``stopped`` says why).
        """
        lease = self.lease
        bs = lease.block_size
        count = min(self.blocks, max(lease.num_blocks - self.first, 0))
        tail = LogTail(base, seq)
        if count <= 0:
            return LogReplay((), tail, "no region")
        width = min(bs, _PREFIX)
        buf = bytearray(width * count)
        view = memoryview(buf)
        lease.read_blocks_into(range(self.first, self.first + count),
                               [view[i * width:(i + 1) * width] for i in range(count)])
        payloads: list[bytes] = []
        while True:
            if tail.block >= count:
                return LogReplay(tuple(payloads), tail, "end of region")
            at = tail.block * width
            head = bytes(view[at:at + RECORD_HEADER_SIZE])
            why, length = self._check_head(head, tail)
            if why:
                return LogReplay(tuple(payloads), tail, why)
            n = -(-(RECORD_HEADER_SIZE + length) // bs)
            if tail.block + n > count:
                return LogReplay(tuple(payloads), tail, "record runs past the region")
            if RECORD_HEADER_SIZE + length <= width:
                payload = bytes(view[at + RECORD_HEADER_SIZE:at + RECORD_HEADER_SIZE + length])
            else:
                whole = bytearray(RECORD_HEADER_SIZE + length)
                lease.read_run_into(self.first + tail.block, memoryview(whole))
                if bytes(whole[:RECORD_HEADER_SIZE]) != head:
                    return LogReplay(tuple(payloads), tail, "record changed while read")
                payload = bytes(whole[RECORD_HEADER_SIZE:])
            why = self._check_payload(head, payload)
            if why:
                return LogReplay(tuple(payloads), tail, why)
            payloads.append(payload)
            (crc,) = _REC_CRC.unpack_from(head, _REC.size)
            (_, _, _, _, _, _, epoch, _, _, _, _, _) = _REC.unpack_from(head)
            tail = LogTail(base, tail.seq + 1, tail.block + n, crc, epoch)

    def _check_head(self, head: bytes, tail: LogTail) -> tuple[str, int]:
        """Why ``head`` does not continue ``tail`` ("" if it does), and its payload length."""
        if not any(head):
            return "empty block", 0
        (magic, layout, kind, flags, base, seq, epoch, length, _crc, prev, alg,
         _mac) = _REC.unpack_from(head)
        (stored,) = _REC_CRC.unpack_from(head, _REC.size)
        if crc32c(head[:_REC.size]) != stored:
            return "header checksum mismatch", 0
        if magic != RECORD_MAGIC or layout != RECORD_VERSION or kind != self.kind:
            return f"not a record of this log (magic {magic!r}, version {layout})", 0
        if flags & ~_FLAG_MAC or (alg != MAC_NONE) != bool(flags & _FLAG_MAC) or \
                alg not in (MAC_NONE, *MAC_ALGORITHMS.values()):
            return f"inconsistent header (flags {flags:#x}, MAC algorithm {alg})", 0
        if base != tail.base:
            return f"record of snapshot {base}, expected {tail.base}", 0
        if seq != tail.seq:
            return f"seq {seq}, expected {tail.seq}", 0
        if prev != tail.prev or epoch < tail.epoch:
            return f"seq {seq} does not follow its predecessor (stale)", 0
        return "", length

    def _check_payload(self, head: bytes, payload: bytes) -> str:
        (_, _, _, flags, _, _, _, _, crc, _, alg, mac) = _REC.unpack_from(head)
        if crc32c(payload) != crc:
            return "payload checksum mismatch"
        if self._keys is not None:
            if not flags & _FLAG_MAC:
                return "no MAC, but a key is configured"
            if not any(equal(self._mac(alg, k, head[:_MAC_AT], payload, mac), mac)
                       for k in self._keys.all):
                return "MAC mismatch (wrong key or forged)"
        return ""
