"""The checks a restore's pool tasks run on a payload's chunks, beside the reads.

:func:`~stages.checkpoint.reader.read_payload` reads a generation's payload into one buffer
in batches, each batch one task of the shared worker pool; a task reads its blocks in place
and checks them while they are in that core's cache:

* :func:`read_and_check`: raw chunks, their CRC-32C (skipped with a key: the payload MAC
  proves those bytes, and the CRCs are checked only if it fails);
* :func:`check_zstd`: zstd chunks, CRC-32C of the stored bytes, then decompression into
  place, bounded by the raw length;
* :class:`MacChain`: with a key and only raw chunks (the usual numpy state), the read tasks
  feed the payload MAC themselves, each its own batch right after reading it, in payload
  order - the MAC then reads bytes still in cache and no third thread competes with the two
  readers for two cores (``bench/notes/restore.md``). Otherwise the reader feeds the MAC on
  the calling thread as tasks finish (``reader._mac_in_order``).

Every task returns ``None`` or the first failed chunk and why (:data:`Failure`); CRC-32C and
zstd and the MACs release the GIL.
"""

from __future__ import annotations

import threading

from blockstore import LeaseReader, crc32c

from .compress import decompress_into
from .format import MapEntry
from .mac import PayloadMac

__all__ = ["Failure", "MacChain", "check_zstd", "first_bad", "read_and_check"]

#: What a chunk-checking task returns: None, or the first failed chunk and why it failed.
Failure = tuple[MapEntry, str] | None


def read_and_check(reader: LeaseReader, idx: list[int],
                   items: list[tuple[memoryview, MapEntry]], check: bool = True) -> Failure:
    """Read a batch of raw chunks in place and check their CRCs (runs in the pool).

    Reading and checking in the same task lets one worker sit in ``preadv`` (no GIL) while
    another computes CRCs, so the checks hide behind the I/O. ``check`` False: read only
    (the payload MAC will vouch for these bytes; see
    :func:`~stages.checkpoint.reader.read_payload`).
    """
    reader.read_blocks_into(idx, [v for v, _ in items])
    return first_bad(items) if check else None


class MacChain:
    """The payload MAC fed by the pool tasks that read the payload, in payload order.

    Task ``n`` reads its batch, waits until tasks ``0..n-1`` have fed theirs, then feeds its
    own - on the core that just read it, while the bytes are still in its cache, and with no
    third thread competing with the two readers for two cores. Tasks are submitted in
    payload order to a FIFO pool, so the task a waiter waits for has always started: no
    deadlock. A task that fails still passes its turn on (and breaks the chain: the digest
    is then never used, the failure is raised).
    """

    def __init__(self, key: bytes, alg: int) -> None:
        self._mac = PayloadMac(key, alg)
        self._turn = 0
        self._cond = threading.Condition()
        self._broken = False

    def read_and_feed(self, n: int, reader: LeaseReader, idx: list[int],
                      items: list[tuple[memoryview, MapEntry]], region: memoryview) -> Failure:
        """Task ``n`` (runs in the pool): read the batch ``items`` in place, then, in its
        turn, feed ``region`` - the payload bytes the batch filled - to the MAC. Its CRCs
        are not checked here (only if the MAC fails: ``first_bad``)."""
        ok = False
        try:
            reader.read_blocks_into(idx, [v for v, _ in items])
            ok = True
        finally:
            with self._cond:
                while self._turn != n:
                    self._cond.wait()
            try:
                if ok and not self._broken:
                    self._mac.update_all([region])
                else:
                    self._broken = True
            finally:
                with self._cond:
                    self._turn += 1
                    self._cond.notify_all()
        return None

    def digest(self) -> bytes:
        """The MAC of every batch fed; raises if a task failed (its error is the one to
        report; a digest of part of the payload must never be compared)."""
        if self._broken:
            raise RuntimeError("a read task of the payload failed; the MAC chain is broken")
        return self._mac.digest()


def first_bad(items: list[tuple[memoryview, MapEntry]]) -> Failure:
    """The first raw chunk whose CRC-32C does not match (and why), or None."""
    for view, e in items:
        if crc32c(view) != e.crc:
            return e, "fails its CRC-32C (raw chunk)"
    return None


def check_zstd(items: list[tuple[memoryview, memoryview, MapEntry]]) -> Failure:
    """Check and decompress zstd chunks; each one's output is bounded by its raw length
    (:func:`~stages.checkpoint.compress.decompress_into`) before it is decompressed."""
    for stored, out, e in items:
        if crc32c(stored) != e.crc:
            return e, "fails its CRC-32C (zstd chunk)"
        try:
            decompress_into(stored, out)
        except ValueError as exc:
            return e, f"zstd chunk at offset {e.offset}: {exc}"
    return None
