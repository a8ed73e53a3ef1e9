"""The checks a restore's pool tasks run on a payload's chunks, beside the reads.

:func:`~stages.checkpoint.reader.read_payload` reads a generation's payload into one buffer
in batches, each batch one task of the shared worker pool; a task reads its blocks in place
and checks them while they are in that core's cache:

* :func:`read_and_check`: raw chunks, their CRC-32C (skipped with a key: the payload MAC
  proves those bytes, and the CRCs are checked only if it fails);
* :func:`check_zstd`: zstd chunks, CRC-32C of the stored bytes, then decompression into
  place, bounded by the raw length;
* :class:`MacChain`: with a key and only raw chunks (the usual numpy state), the read tasks
  feed the payload MAC themselves, in payload order, right after reading - the MAC reads
  bytes still in cache, no third thread competes with the two readers for two cores, and
  no task waits for another's turn (``bench/notes/restore.md``). Otherwise the reader feeds
  the MAC on the calling thread as tasks finish (``reader._mac_in_order``).

Every task returns ``None`` or the first failed chunk and why (:data:`Failure`); CRC-32C and
zstd and the MACs release the GIL.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

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

    Task ``n`` reads its batch and offers it. No task waits for its turn: if batch ``n``
    is the next one the MAC needs and no task is feeding, this task feeds it and then every
    later batch already offered, in order; otherwise it leaves its batch to the task that
    is feeding (or to the one whose batch the MAC needs next) and returns, so its worker
    goes on to the next read. Both cores stay busy with reads and the one sequential MAC
    (``bench/notes/restore.md``: a task that waited for its turn left a core idle). The one
    wait: a reader more than :attr:`AHEAD` batches ahead of the MAC waits until the feeding
    task catches up or ends; that task never waits, so tasks may run in any order on any
    pool. A task whose read fails offers nothing usable: the chain is broken, later batches
    are not hashed, and :meth:`digest` refuses.
    """

    #: Batches read and not yet fed past which a reader waits for the feeding task (or for
    #: it to finish) before it returns to the next read.
    AHEAD = 2

    def __init__(self, key: bytes, alg: int, verifying: bytes | None = None) -> None:
        # verifying: the stored payload MAC (AES-GMAC's salt is in it; a reader passes it)
        self._mac = PayloadMac(key, alg, verifying)
        self._next = 0  # the batch the MAC needs next
        # read (or encoded), not yet fed (None: failed)
        self._offered: dict[int, list[memoryview] | None] = {}
        self._feeding = False  # a task is feeding the MAC (only one at a time)
        self._cond = threading.Condition()
        self._broken = False

    def read_and_feed(self, n: int, reader: LeaseReader, idx: list[int],
                      items: list[tuple[memoryview, MapEntry]], region: memoryview) -> Failure:
        """Task ``n`` (runs in the pool): read the batch ``items`` in place and offer
        ``region`` - the payload bytes the batch filled - to the MAC (fed by this task or
        a later one, in payload order). Its CRCs are not checked here (only if the MAC
        fails: ``first_bad``)."""
        ok = False
        try:
            reader.read_blocks_into(idx, [v for v, _ in items])
            ok = True
        finally:
            self.offer(n, [region] if ok else None)
        return None

    def offer(self, n: int, parts: Sequence[memoryview] | None) -> None:
        """Offer batch ``n`` - the payload bytes it covers, as views in order (``None``:
        the task that made it failed) - to be fed in its turn: a read task once its batch
        landed, an encode task of the write path right after encoding its batch (the bytes
        still in cache)."""
        region = None if parts is None else list(parts)
        with self._cond:
            if n in self._offered or n < self._next:
                self._broken = True  # offered twice: never a digest of a guessed order
            self._offered[n] = region
            # Readers far ahead of the MAC: wait while the feeding task catches up, so the
            # batches it hashes are still in cache. It never waits itself, so it ends.
            while self._feeding and len(self._offered) > self.AHEAD:
                self._cond.wait()
            if self._feeding:
                return  # the feeding task takes it in its turn
            self._feeding = True
        try:
            while True:
                with self._cond:
                    if self._next not in self._offered:
                        self._feeding = False  # under the lock: no offer is missed
                        self._cond.notify_all()
                        return
                    part = self._offered.pop(self._next)
                    self._next += 1
                    self._cond.notify_all()
                    if part is None:
                        self._broken = True
                    broken = self._broken
                if not broken:
                    assert part is not None
                    self._mac.update_all(part)
        except BaseException:
            with self._cond:
                self._broken = True
                self._feeding = False
                self._cond.notify_all()
            raise

    def digest(self, tasks: int) -> bytes:
        """The MAC of batches ``0 .. tasks - 1``, every one fed; raises if a task failed or
        any batch is missing (its error is the one to report; a digest of part of the
        payload must never be compared)."""
        with self._cond:
            whole = not self._broken and self._next == tasks and not self._offered
        if not whole:
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
