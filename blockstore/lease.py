"""Leases: who may write a run of blocks, until when, and under which fencing epoch.

A lease is the unit of ownership in a store: a run of fixed-size blocks with a 128-bit id, a
human name (the stage id), a holder, an expiry and a **fencing epoch**. Every acquisition
bumps the epoch; every write carries the epoch its holder was given, and the *store* refuses
a write whose epoch is not current (:class:`~blockstore.errors.StaleLeaseError`). So a zombie
holder on a lost node, still running with its old handle, can never overwrite blocks of the
holder that replaced it, however late its writes arrive.

:class:`LeaseInfo` is the frozen record the store keeps; :class:`LeaseReader` reads a lease
without holding it (restore, verify, inspect); :class:`Lease` is the holder's handle and a
context manager whose exit releases it (data stays; release only gives up the right to write).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .checks import check_num_blocks, check_ttl
from .errors import LeaseError, LeaseReleasedError, StoreClosedError

__all__ = ["Lease", "LeaseBackend", "LeaseInfo", "LeaseReader", "ReadSnapshot"]

Buffer = bytes | bytearray | memoryview
log = logging.getLogger(__name__)


class ReadSnapshot(Protocol):
    """Reads of one lease that follow one view of its record (a backend's, for
    :meth:`LeaseReader.snapshot`)."""

    def info(self) -> LeaseInfo: ...

    def read(self, indices: Sequence[int], buffers: Sequence[memoryview]) -> None: ...


class LeaseBackend(Protocol):
    """What the handles call on their store: the checked primitives of ``BlockStore``.

    :class:`~blockstore.base.BlockStore` satisfies it; naming it here is what lets this
    module know nothing of ``base.py`` (which builds the handles). Each call validates or
    fences as the store's module docstring states and changes nothing when it raises.
    """

    block_size: int
    #: The store's ``blockstore.base.StoreCapabilities`` (named loosely: this module does not
    #: import ``base.py``).
    capabilities: Any

    @property
    def url(self) -> str: ...

    def _check_open(self) -> None: ...

    def lease_info(self, name_or_id: str) -> LeaseInfo: ...

    def lease_info_by_id(self, lease_id: str) -> LeaseInfo: ...

    def _renew(self, lease_id: str, holder: str, epoch: int, ttl: float) -> LeaseInfo: ...

    def _release(self, lease_id: str, holder: str, epoch: int) -> None: ...

    def _resize(self, lease_id: str, epoch: int, num_blocks: int) -> LeaseInfo: ...

    def _flush(self, lease_id: str, epoch: int) -> None: ...

    def _discard(self, lease_id: str, epoch: int, indices: Sequence[int],
                 keep_space: bool = False) -> None: ...

    def _checked_write(self, lease_id: str, epoch: int,
                       pairs: Sequence[tuple[int, Buffer]], flush: bool = False,
                       pad: bool = True) -> None: ...

    def _checked_read(self, lease_id: str, indices: Sequence[int],
                      buffers: Sequence[memoryview],
                      snapshot: ReadSnapshot | None = None) -> None: ...

    #: Bytes one read call should ask for to keep the store busy (0: no preference).
    read_batch_bytes: int
    #: Bytes one write call should carry to keep the store busy (0: no preference).
    write_batch_bytes: int

    def _open_snapshot(self, lease_id: str) -> ReadSnapshot | None: ...

    def _check_index(self, lease_id: str, index: object) -> int: ...


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """The store's record of one lease.

    Attributes:
        lease_id: 128-bit id as 32 lowercase hex characters; never reused.
        name: human name, unique in the store (e.g. the stage id).
        holder: who holds it, or ``None`` once released.
        epoch: fencing epoch; bumped by every acquisition (first holder gets 1).
        expires_at: wall-clock time (``time.time()``) the hold ends; 0.0 when released.
        num_blocks: current length of the lease in blocks.
        block_size: bytes per block (the store's).
        created_at: wall-clock creation time.
    """

    lease_id: str
    name: str
    holder: str | None
    epoch: int
    expires_at: float
    num_blocks: int
    block_size: int
    created_at: float

    def is_held(self, now: float | None = None) -> bool:
        """True if a holder has it and its TTL has not run out at ``now``."""
        now = time.time() if now is None else now
        return self.holder is not None and self.expires_at > now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LeaseInfo:
        """A record from its JSON form, checked field by field (records are stored bytes:
        a damaged or forged one must not parse into a record that means something else).

        Raises:
            KeyError: a field is missing.
            TypeError: a field has the wrong JSON type (``true`` is not an epoch).
            ValueError: a value is out of range (epoch < 1, negative blocks, not finite).
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"a lease record is a JSON object, not {type(d).__name__}")
        holder = d["holder"]
        if holder is not None and not isinstance(holder, str):
            raise TypeError(f"holder is {holder!r}, not a string or null")
        return cls(
            lease_id=_field(d, "lease_id", str),
            name=_field(d, "name", str),
            holder=holder,
            epoch=_field(d, "epoch", int, minimum=1),
            expires_at=float(_field(d, "expires_at", float)),
            num_blocks=_field(d, "num_blocks", int, minimum=0),
            block_size=_field(d, "block_size", int, minimum=1),
            created_at=float(_field(d, "created_at", float)),
        )


def _field(d: Mapping[str, Any], name: str, kind: type, minimum: int | None = None) -> Any:
    """``d[name]`` if it is of JSON type ``kind`` (float accepts ints), finite, >= minimum."""
    value = d[name]
    ok = (isinstance(value, str) if kind is str else
          not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float)))
    if not ok:
        raise TypeError(f"{name} is {value!r}, not a JSON {kind.__name__}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{name} is {value!r}, not a finite number")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} is {value!r}, less than {minimum}")
    return value


class LeaseReader:
    """Read access to one lease's blocks, without holding it.

    Reads never need the epoch: a restoring stage, ``blockpoint verify`` and ``inspect`` read
    while someone else may hold the lease. Blocks never written read as zeros. What a reader
    sees of a block being written concurrently is unspecified; readers of checkpoints rely on
    checksums and on the commit protocol of the layer above, never on read isolation.
    """

    def __init__(self, store: LeaseBackend, lease_id: str, name: str) -> None:
        self._store = store
        self.lease_id = lease_id
        self.name = name
        self._snapshot: ReadSnapshot | None = None

    @property
    def store(self) -> LeaseBackend:
        return self._store

    @property
    def block_size(self) -> int:
        return self._store.block_size

    @property
    def num_blocks(self) -> int:
        """Current length in blocks (asks the store)."""
        return self.info().num_blocks

    def info(self) -> LeaseInfo:
        """The store's current record of this lease (inside :meth:`snapshot`: the
        snapshot's)."""
        snap = self._snapshot
        if snap is not None:
            self._store._check_open()
            return snap.info()
        return self._store.lease_info_by_id(self.lease_id)  # by id: a name could be alike

    @contextmanager
    def snapshot(self) -> Iterator[LeaseReader]:
        """Let every read through this handle follow the lease's record as it is now.

        For a reader about to read much of one lease in many calls (a restore, a verify):
        a store whose reads look the record up (an object store) does so once here instead
        of once per call. Reads inside see every flush that returned before the snapshot
        opened; flushes landing while it is open may or may not be seen (blocks that a
        newer commit replaced and removed are fetched by the newer record, as by any read).
        Within this store object, its own unflushed writes and commits are seen as usual.
        A backend without record lookups reads as usual; a nested snapshot is the open one.
        Yields this handle.
        """
        if self._snapshot is not None:
            yield self
            return
        self._store._check_open()
        snap = self._store._open_snapshot(self.lease_id)
        self._snapshot = snap
        try:
            yield self
        finally:
            self._snapshot = None

    def read_block(self, index: int) -> bytes:
        """One block, exactly ``block_size`` bytes."""
        return self.read_blocks([index])[0]

    def read_blocks(self, indices: Sequence[int]) -> list[bytes]:
        """Several blocks in one call, in the order asked."""
        bs = self.block_size
        out = bytearray(bs * len(indices))
        mv = memoryview(out)
        self.read_blocks_into(indices, [mv[i * bs:(i + 1) * bs] for i in range(len(indices))])
        return [bytes(mv[i * bs:(i + 1) * bs]) for i in range(len(indices))]

    def read_blocks_into(self, indices: Sequence[int], buffers: Sequence[memoryview]) -> None:
        """Read ``indices[i]`` into ``buffers[i]`` (each at most ``block_size`` bytes, writable).

        A buffer shorter than a block receives the block's first ``len(buffer)`` bytes; this
        is how the layer above reads into a preallocated array without a copy.
        """
        self._store._checked_read(self.lease_id, indices, buffers, self._snapshot)

    def read_run_into(self, first: int, out: memoryview) -> None:
        """Read consecutive blocks starting at ``first`` into ``out`` (any length).

        ``out`` is any writable contiguous buffer (memoryview, bytearray, numpy array); it is
        filled in place.
        """
        out = memoryview(out)
        if out.format != "B" or out.ndim != 1:
            out = out.cast("B")
        bs = self.block_size
        n = (len(out) + bs - 1) // bs
        self.read_blocks_into(range(first, first + n),
                              [out[i * bs:(i + 1) * bs] for i in range(n)])


class Lease(LeaseReader):
    """A holder's handle: read and write under one fencing epoch.

    Guarantees: every write is checked by the store against the current epoch, expiry and
    bounds *at the time it is applied*; a refused write changes nothing. ``flush()`` makes all
    writes of this handle durable and visible to readers in other processes. Leaving the
    ``with`` block (normally or by an exception) releases the lease; data stays.

    If ``keepalive`` was set at acquisition, a daemon thread renews the TTL every third of it
    until release. A renewal that fails for a transient reason (``StorageIOError``, a lock
    timeout, any error that is not about the lease) is retried with a growing pause, never
    longer than that third, so a short outage does not let the lease expire under a live
    holder. Only a lease error (fenced, deleted) or a closed store stops the thread; the
    next write then reports it by failing.
    """

    def __init__(self, store: LeaseBackend, info: LeaseInfo, ttl: float, keepalive: bool) -> None:
        super().__init__(store, info.lease_id, info.name)
        self.holder: str = info.holder or ""
        self.epoch: int = info.epoch
        self.ttl = ttl
        self.acquired_info = info
        self._released = False
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        if keepalive:
            self._keeper = threading.Thread(
                target=self._keep_alive, name=f"lease-keepalive-{info.name}", daemon=True)
            self._keeper.start()

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def released(self) -> bool:
        return self._released

    def _check(self) -> None:
        self._store._check_open()
        if self._released:
            raise LeaseReleasedError(f"lease {self.name!r} ({self.lease_id}) was released",
                                     lease_id=self.lease_id, name=self.name, epoch=self.epoch)

    def renew(self, ttl: float | None = None) -> LeaseInfo:
        """Extend the hold by ``ttl`` seconds from now. Raises if fenced or released."""
        self._check()
        new_ttl = self.ttl if ttl is None else check_ttl(ttl)
        info = self._store._renew(self.lease_id, self.holder, self.epoch, new_ttl)
        self.ttl = new_ttl
        return info

    def release(self) -> None:
        """Give up the hold (data stays). Releasing twice, or after being fenced, is harmless.

        On a closed store this only marks the handle released; the record keeps its holder
        until the TTL runs out (a closed store touches no storage).
        """
        if self._released:
            return
        self._released = True
        self._stop.set()
        try:
            self._store._check_open()
            self._store._release(self.lease_id, self.holder, self.epoch)
        except (LeaseError, StoreClosedError):
            pass  # fenced, deleted or closed: there is nothing left to give up

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _keep_alive(self) -> None:
        failures = 0
        while True:
            interval = max(self.ttl / 3.0, 0.05)
            pause = interval if not failures else min(0.02 * 2 ** failures, interval)
            if self._stop.wait(pause):
                return
            try:
                self._store._check_open()  # a closed store touches no storage
                self._store._renew(self.lease_id, self.holder, self.epoch, self.ttl)
            except (LeaseError, StoreClosedError):
                return  # fenced, released, deleted or closed: writes will report it
            except Exception as exc:  # transient (I/O, lock timeout): try again soon
                failures += 1
                if failures == 1:
                    log.warning("lease %r: renewal failed (%s); retrying", self.name, exc)
                continue
            if failures:
                log.info("lease %r: renewal succeeded after %d failures", self.name, failures)
            failures = 0

    # -- writes --------------------------------------------------------------------------
    def write_block(self, index: int, data: Buffer) -> None:
        """Write one block (at most ``block_size`` bytes; shorter data is zero-padded)."""
        self.write_blocks([(index, data)])

    def write_blocks(self, items: Mapping[int, Buffer] | Iterable[tuple[int, Buffer]], *,
                     flush: bool = False, pad: bool = True) -> None:
        """Write several blocks in one call: checked once against the epoch, then applied.

        Either every block is validated (indices, sizes) before anything is written, or the
        call raises and writes nothing. Once writing starts, a crash may leave any subset of
        the blocks written: atomicity across blocks is the job of the layer above.

        With ``flush``, the call also makes every write of this handle durable, as
        :meth:`flush` right after it would (the file store checks the epoch once for both:
        a one-flush commit pays one fencing check).

        With ``pad=False`` a buffer shorter than the block may leave the block's later bytes
        as they were instead of zeroing them (the file store then writes only the buffer;
        other backends zero them as always): for formats that never read past what they
        wrote, such as a document log's records (``docs/FORMAT.md`` 5.4). Fencing and
        checks are the same.
        """
        self._check()
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        self._store._checked_write(self.lease_id, self.epoch, pairs, flush, pad)

    def discard_blocks(self, indices: Iterable[int], *, reuse: bool = False) -> None:
        """Make blocks read as zeros, freeing their space where the backend can.

        For blocks that no committed data references any more (a dropped generation), so
        that dropped state is no longer readable. ``reuse``: the blocks are about to be
        written again (a checkpoint's free blocks), so a backend may keep their space and
        only zero them (the file store: in place, cheaper now and for the write that reuses
        them). Checked like a write (epoch, bounds); a refused call discards nothing. Not
        atomic across blocks, durable after ``flush``.
        """
        self._check()
        idx = sorted({self._store._check_index(self.lease_id, i) for i in indices})
        if idx:
            self._store._discard(self.lease_id, self.epoch, idx, reuse)

    def resize(self, num_blocks: int) -> LeaseInfo:
        """Grow or shrink the lease to ``num_blocks``. New blocks read as zeros."""
        self._check()
        n = check_num_blocks(num_blocks, f"resize lease {self.name!r}")
        return self._store._resize(self.lease_id, self.epoch, n)

    def grow(self, num_blocks: int) -> LeaseInfo:
        """Ensure the lease has at least ``num_blocks`` blocks (never shrinks)."""
        self._check()
        num_blocks = check_num_blocks(num_blocks, f"grow lease {self.name!r}")
        info = self.info()
        if info.num_blocks >= num_blocks:
            return info
        return self.resize(num_blocks)

    def flush(self) -> None:
        """Make every write of this handle durable (fsync or the backend's equivalent)."""
        self._check()
        self._store._flush(self.lease_id, self.epoch)

    def __repr__(self) -> str:
        return (f"Lease(name={self.name!r}, id={self.lease_id}, holder={self.holder!r}, "
                f"epoch={self.epoch}, released={self._released})")
