"""The block store interface.

A :class:`BlockStore` is a set of leases over fixed-size blocks. Backends implement a few
primitives (the ``_``-prefixed abstract methods); everything else - argument checking, the
:class:`~blockstore.lease.Lease` handle, readers, stats - is built on them here, once.

Protocol (who calls what, in which order):

1. ``acquire(name, holder, ttl)`` creates the lease (epoch 1) or takes it over (epoch + 1)
   when it is released, expired, or ``steal=True``. A held, unexpired lease is refused with
   ``LeaseHeldError``. The new epoch is durable before ``acquire`` returns.
2. The holder writes blocks (``Lease.write_blocks``) under its epoch. The store checks the
   epoch, expiry and bounds *atomically with applying the write*, so a takeover that
   completes before the write is applied makes the write fail with ``StaleLeaseError`` and
   change nothing; no interleaving lets a stale write land after a takeover's epoch bump.
3. ``flush()`` makes the holder's writes durable and visible to readers in any process.
   Before ``flush`` returns, writes may or may not be visible (object stores publish on
   flush; files publish at once).
4. ``release()`` ends the hold; blocks stay. ``delete_lease`` removes blocks and record.
5. ``Lease.discard_blocks`` (after a commit, for blocks no committed data references) makes
   blocks read as zeros and, where the backend can, frees their space; ``resize`` to fewer
   blocks drops the tail. ``gc()`` removes what interrupted operations left behind (orphan
   files), never anything a live lease uses.

Clocks: a lease's expiry is a wall-clock time written by its holder's node and compared
with the clock of the node that wants to take it over. So a takeover of an expired lease
that is not stolen waits ``clock_margin`` seconds beyond the expiry (default
:data:`DEFAULT_CLOCK_MARGIN`, or ``$BLOCKPOINT_CLOCK_MARGIN``): a holder whose clock is up
to that much behind is not taken over while it still believes it holds the lease. Fencing
never depends on clocks; the margin only avoids needless takeovers. A backend with a clock
of its own (an object store's ``Last-Modified``/``Date``) should override :meth:`now` to
use it, so that every node compares against one clock.

What holds after a failure at any step:

* crash during ``acquire``: the lease record is either the old one or the new one (records
  are replaced atomically); never a torn record.
* crash during ``write_blocks``: any subset of that call's blocks may be written, each one
  either old or new or (in the middle of a block on a file store) partly new. Layers above
  must checksum and commit by a separate, later write - the stage checkpoint format does.
* crash before ``flush``: written blocks may be lost; nothing else is affected.
* a refused call (bad index, block too large, a name with control characters, stale epoch,
  expired, closed, a lock wait past the backend's timeout): nothing changed.

Reads of blocks never written return zeros. Reads need no epoch.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .checks import (
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    check_block_size,
    check_holder,
    check_name,
    check_num_blocks,
    check_ttl,
    is_int,
    new_names_only,
)
from .errors import (
    BlockIndexError,
    BlockSizeError,
    LeaseMismatchError,
    LeaseNotFoundError,
    StoreClosedError,
    StoreConfigError,
    StoreCorruptError,
)
from .redact import redact_url
from .lease import Buffer, Lease, LeaseInfo, LeaseReader, ReadSnapshot

__all__ = [
    "MAX_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "DEFAULT_CLOCK_MARGIN",
    "BlockStore",
    "GcItem",
    "GcReport",
    "LeaseScan",
    "StoreCapabilities",
    "StoreStats",
    "default_holder",
    "new_lease_id",
]

DEFAULT_BLOCK_SIZE = 1024 * 1024
DEFAULT_TTL = 30.0
#: Seconds beyond a lease's expiry before another holder may take it over without
#: ``steal`` (see "Clocks" in the module docstring and docs/OPERATIONS.md).
DEFAULT_CLOCK_MARGIN = 2.0
CLOCK_MARGIN_ENV = "BLOCKPOINT_CLOCK_MARGIN"


def resolve_clock_margin(margin: float | None) -> float:
    """``margin`` if given, else ``$BLOCKPOINT_CLOCK_MARGIN``, else the default (seconds)."""
    if margin is None:
        env = os.environ.get(CLOCK_MARGIN_ENV)
        if not env:
            return DEFAULT_CLOCK_MARGIN
        try:
            margin = float(env)
        except ValueError:
            raise ValueError(f"${CLOCK_MARGIN_ENV}={env!r} is not a number of seconds") from None
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
            or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"clock_margin must be a finite number of seconds >= 0, got {margin!r}")
    return float(margin)


def new_lease_id() -> str:
    """A fresh 128-bit lease id (32 hex characters)."""
    return uuid.uuid4().hex


def default_holder() -> str:
    """``host:pid:random`` - unique per call, so two handles never share a holder by accident."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """What a backend guarantees, declared rather than discovered.

    Attributes:
        cross_process: leases and fencing hold across processes (and nodes sharing it).
        durable: ``flush`` survives a machine crash.
        conditional_write: lease records are updated by compare-and-swap on the backend
            (object stores), rather than under a lock.
        publish_on_flush: other store objects (processes) see writes only after ``flush``
            (or ``release``); unflushed writes are lost at a takeover. False: writes are
            visible at once.
        shared: the store is reachable by other machines or users (an object store, a
            store created ``shared=True`` on a shared filesystem), so its bytes cannot be
            trusted: ``stages.CheckpointedStageState`` then refuses to write pickle
            checkpoints without a key unless told otherwise.
    """

    cross_process: bool
    durable: bool
    conditional_write: bool
    publish_on_flush: bool = False
    shared: bool = False


@dataclass(frozen=True, slots=True)
class GcItem:
    """One thing :meth:`BlockStore.gc` removed (or would remove, on a dry run).

    Attributes:
        path: where it was (a file path, an object key).
        kind: ``"orphan data"``, ``"orphan lock"``, ``"temporary"`` (file store);
            ``"block"`` (an object no reader can see), ``"lease record"`` (of a deleted
            lease), ``"id pointer"`` (object store).
        bytes: its size when found.
        lease_id: the lease it belonged to, when its name says so.
    """

    path: str
    kind: str
    bytes: int
    lease_id: str | None = None


@dataclass(frozen=True, slots=True)
class GcReport:
    """What :meth:`BlockStore.gc` found: the removed items and the live leases it kept."""

    url: str
    removed: tuple[GcItem, ...]
    live_leases: int
    dry_run: bool = False
    #: Items left on purpose although unreferenced (an object store's unflushed writes of a
    #: current holder, which a flush may still publish).
    kept: int = 0

    @property
    def bytes_freed(self) -> int:
        return sum(i.bytes for i in self.removed)


@dataclass(frozen=True, slots=True)
class LeaseScan:
    """What :meth:`BlockStore.scan_leases` found: readable leases and unreadable records."""

    leases: tuple[LeaseInfo, ...]
    unreadable: tuple[StoreCorruptError, ...]


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Totals over a store. ``bytes_allocated`` counts whole blocks of every lease."""

    url: str
    block_size: int
    leases: int
    held: int
    blocks: int
    bytes_allocated: int


def check_min_age(min_age: object) -> float:
    """``min_age`` of a gc as seconds: a real number (int or float, not a bool or a
    string), finite and >= 0 - a nan or a negative age would make just-written objects
    look old enough to remove. Anything else is :class:`StoreConfigError`."""
    if isinstance(min_age, bool) or not isinstance(min_age, (int, float)):
        raise StoreConfigError(f"gc min_age must be a number of seconds, not "
                               f"{type(min_age).__name__} {min_age!r}")
    try:
        age = float(min_age)
    except OverflowError:
        age = math.inf
    if not math.isfinite(age) or age < 0:
        raise StoreConfigError(f"gc min_age must be a finite number of seconds >= 0, "
                               f"not {age:g}")
    return age


class BlockStore(ABC):
    """A set of leases over fixed-size blocks. See the module docstring for the protocol.

    Stores are context managers; ``close()`` twice is harmless; any use after close raises
    :class:`StoreClosedError`. Handles of a closed store fail the same way.
    """

    capabilities: StoreCapabilities

    def __init__(self, block_size: int, *, clock_margin: float | None = None) -> None:
        self.block_size = check_block_size(block_size)
        self.clock_margin = resolve_clock_margin(clock_margin)
        self._closed = False

    # -- primitives (backends implement these) -------------------------------------------
    @abstractmethod
    def _acquire(self, name: str, holder: str, ttl: float, num_blocks: int,
                 steal: bool) -> LeaseInfo:
        """Create or take over ``name``; return the new record (epoch bumped on takeover)."""

    @abstractmethod
    def _renew(self, lease_id: str, holder: str, epoch: int, ttl: float) -> LeaseInfo:
        """Extend the hold of ``epoch``; raise ``StaleLeaseError`` if it is not current."""

    @abstractmethod
    def _release(self, lease_id: str, holder: str, epoch: int) -> None:
        """End the hold of ``epoch``; raise ``StaleLeaseError`` if it is not current."""

    @abstractmethod
    def _resize(self, lease_id: str, epoch: int, num_blocks: int) -> LeaseInfo:
        """Set the lease's length under ``epoch``."""

    @abstractmethod
    def _write(self, lease_id: str, epoch: int, indices: Sequence[int],
               datas: Sequence[memoryview]) -> None:
        """Write ``datas[i]`` (already size-checked) to ``indices[i]`` if ``epoch`` is current,
        unexpired and every index is within the lease - checked atomically with the write."""

    @abstractmethod
    def _read(self, lease_id: str, indices: Sequence[int], buffers: Sequence[memoryview]) -> None:
        """Fill ``buffers[i]`` from the start of block ``indices[i]`` (zeros if never written);
        raise ``BlockIndexError`` for an index beyond the lease."""

    @abstractmethod
    def _flush(self, lease_id: str, epoch: int) -> None:
        """Make writes under ``epoch`` durable and visible."""

    def _write_flush(self, lease_id: str, epoch: int, indices: Sequence[int],
                     datas: Sequence[memoryview]) -> None:
        """``_write`` then ``_flush`` (``Lease.write_blocks(flush=True)``); a backend may do
        both under one check of the epoch."""
        self._write(lease_id, epoch, indices, datas)
        self._flush(lease_id, epoch)

    def _write_unpadded(self, lease_id: str, epoch: int, indices: Sequence[int],
                        datas: Sequence[memoryview], flush: bool) -> None:
        """``_write`` (then ``_flush`` with ``flush``) where a short buffer may leave the rest
        of its block as it was (``Lease.write_blocks(pad=False)``). By default the block is
        zero-padded as by every write; a backend that can write part of a block overrides."""
        if flush:
            self._write_flush(lease_id, epoch, indices, datas)
        else:
            self._write(lease_id, epoch, indices, datas)

    @abstractmethod
    def _info(self, lease_id: str) -> LeaseInfo:
        """The record of ``lease_id``; ``LeaseNotFoundError`` if absent."""

    @abstractmethod
    def _list(self) -> list[LeaseInfo]:
        """Every lease record."""

    @abstractmethod
    def _delete(self, lease_id: str, holder: str | None, epoch: int | None) -> None:
        """Remove the lease and its blocks; refused while another holder holds it."""

    @abstractmethod
    def _close(self) -> None:
        """Release backend resources (files, connections)."""

    @property
    @abstractmethod
    def url(self) -> str:
        """A string that ``blockstore.open_store`` turns back into this store."""

    # -- conveniences backends may override ------------------------------------------------
    def now(self) -> float:
        """The clock lease expiries are compared with (Unix seconds).

        The local wall clock here; a backend with a clock of its own (an object store)
        overrides this to use the store's, so that all nodes compare against one clock.
        """
        return time.time()

    def _discard(self, lease_id: str, epoch: int, indices: Sequence[int],
                 keep_space: bool = False) -> None:
        """Make blocks read as zeros under ``epoch`` (checked like a write); ``keep_space``:
        they are written again soon, their space need not be freed.

        This default writes zero blocks through :meth:`_write`; backends that can free the
        space (a file's holes, deleting objects) override it.
        """
        zero = memoryview(bytes(self.block_size))
        self._write(lease_id, epoch, list(indices), [zero] * len(indices))

    #: Bytes one read call should ask for to keep this store busy; readers that read much
    #: (a restore) batch at least this. 0: no preference (local stores).
    read_batch_bytes: int = 0
    #: Bytes one write call should carry to keep this store busy; writers that write much
    #: (a checkpoint) batch at least this. 0: no preference (local stores).
    write_batch_bytes: int = 0

    def _open_snapshot(self, lease_id: str) -> ReadSnapshot | None:
        """A view for :meth:`LeaseReader.snapshot`: reads of one lease that follow its record
        as it is now, without asking for it again per read; ``None`` (this default) when
        reads cost no record lookup, and the handle then reads as usual."""
        return None

    def _gc(self, dry_run: bool, min_age: float) -> tuple[list[GcItem], int]:
        """Find (and unless ``dry_run`` remove) orphans older than ``min_age`` seconds;
        return them and the number of live leases. The default has nothing to collect."""
        return [], len(self._list())

    # -- public API ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {self.url} is closed")

    def acquire(self, name: str, *, holder: str | None = None, ttl: float = DEFAULT_TTL,
                num_blocks: int = 0, steal: bool = False, keepalive: bool = False) -> Lease:
        """Hold lease ``name`` (created with ``num_blocks`` blocks if new).

        Every successful acquisition gets a new epoch, so every earlier handle on the lease
        is fenced. Raises ``LeaseHeldError`` if another holder holds it unexpired and
        ``steal`` is false.
        """
        self._check_open()
        name = check_name(name, new=False)
        if new_names_only(name) and self.find(name) is None:
            check_name(name)  # raises: a new lease may not be named like an id, nor hold Cf
        holder = check_holder(holder)
        ttl = check_ttl(ttl)
        num_blocks = check_num_blocks(num_blocks, f"create lease {name!r}")
        info = self._acquire(name, holder or default_holder(), ttl, num_blocks, bool(steal))
        return Lease(self, info, ttl, keepalive)

    def find(self, name: str) -> LeaseInfo | None:
        """The record of the lease named exactly ``name``, or ``None``.

        One unreadable record (``StoreCorruptError``) does not hide the others: a lease
        whose record reads is found. Only when no readable record has the name and some
        record cannot be read does this raise (the first such error, naming its file): the
        unreadable one may be this lease, and ``None`` would let a caller start it afresh.
        """
        self._check_open()
        infos, errors = self._scan()
        for info in infos:
            if info.name == name:
                return info
        if errors:
            raise errors[0]
        return None

    def lease_info(self, name_or_id: str) -> LeaseInfo:
        """The record of a lease given its id or its exact name; ``LeaseNotFoundError`` if
        neither names one.

        A key with an id's length is looked up as an id first, then as a name. New leases
        cannot be named like an id (:func:`~blockstore.checks.check_name`), so the two
        never meet in a store made under this rule. In an older store a lease may be named
        like an id: it is found by that name unless another lease HAS that id (only a
        deliberate collision: ids are random), and then by :meth:`find`, :meth:`acquire` and
        :meth:`list_leases` still; a name can never redirect a lookup by id
        (``docs/FORMAT.md``, lease names).
        """
        self._check_open()
        if len(name_or_id) == 32:
            try:
                return self._info(name_or_id)
            except LeaseNotFoundError:
                pass
        info = self.find(name_or_id)
        if info is None:
            raise LeaseNotFoundError(f"no lease {name_or_id!r} in {self.url}", name=name_or_id)
        return info

    def lease_info_by_id(self, lease_id: str) -> LeaseInfo:
        """The record of lease ``lease_id`` (an id, never a name); ``LeaseNotFoundError``."""
        self._check_open()
        return self._info(lease_id)

    def open_reader(self, name_or_id: str) -> LeaseReader:
        """Read access to a lease without holding it."""
        info = self.lease_info(name_or_id)
        return LeaseReader(self, info.lease_id, info.name)

    def list_leases(self) -> list[LeaseInfo]:
        """Every lease, sorted by name. Fails closed: an unreadable record raises."""
        self._check_open()
        return sorted(self._list(), key=lambda i: i.name)

    def scan_leases(self) -> LeaseScan:
        """Every readable lease, and an error for each record that cannot be read.

        For diagnosis (``blockpoint inspect``): one damaged record does not hide the others.
        Operations that act on leases keep failing closed (``list_leases``, ``acquire``).
        """
        self._check_open()
        infos, errors = self._scan()
        return LeaseScan(tuple(sorted(infos, key=lambda i: i.name)), tuple(errors))

    def _scan(self) -> tuple[list[LeaseInfo], list[StoreCorruptError]]:
        """Backends whose records can be damaged one by one override this; the default has
        nothing to isolate."""
        return self._list(), []

    def delete_lease(self, name_or_id: str, *, lease: Lease | None = None) -> None:
        """Remove a lease and its blocks.

        Allowed when the lease is released or expired, or when ``lease`` is the current
        holder's handle; otherwise ``LeaseHeldError``.
        """
        info = self.lease_info(name_or_id)
        if lease is not None and lease.lease_id != info.lease_id:
            raise LeaseMismatchError(
                f"handle {lease!r} is not a handle on lease {name_or_id!r} ({info.lease_id}): "
                "its lease was deleted (and the name re-created) or it is another lease's; "
                "nothing deleted", lease_id=info.lease_id, name=info.name,
                handle_lease_id=lease.lease_id)
        if lease is not None and not lease.released:
            self._delete(info.lease_id, lease.holder, lease.epoch)
            lease._released = True
            lease._stop.set()
        else:  # a released handle gives no right: the lease must be released or expired
            self._delete(info.lease_id, None, None)

    def gc(self, *, dry_run: bool = False, min_age: float = 60.0) -> GcReport:
        """Remove what interrupted operations left behind; never anything a live lease uses.

        Orphans are the data and lock files of a lease whose record is gone (a crash inside
        ``delete_lease``) and temporary files of record writes older than ``min_age``
        seconds (younger ones may belong to a write in progress). Safe to run at any time,
        from any process, while stages run. ``min_age`` must be finite and >= 0
        (``StoreConfigError``): ``nan`` compares false with every age and would count a
        write in progress as old.
        """
        self._check_open()
        items, live = self._gc(bool(dry_run), check_min_age(min_age))
        return GcReport(self.url, tuple(items), live, bool(dry_run))

    def stats(self) -> StoreStats:
        infos = self.list_leases()
        blocks = sum(i.num_blocks for i in infos)
        return StoreStats(url=self.url, block_size=self.block_size, leases=len(infos),
                          held=sum(1 for i in infos if i.is_held()), blocks=blocks,
                          bytes_allocated=blocks * self.block_size)

    def close(self) -> None:
        """Close the store; closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> BlockStore:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r}, block_size={self.block_size})"

    # -- checked paths used by the handles -----------------------------------------------
    def _check_index(self, lease_id: str, index: object) -> int:
        if not is_int(index) or index < 0:  # type: ignore[operator]
            raise BlockIndexError(f"block index must be a non-negative int, got {index!r}",
                                  lease_id=lease_id, index=int(index) if is_int(index) else None)
        return int(index)  # type: ignore[call-overload]

    def _checked_write(self, lease_id: str, epoch: int,
                       pairs: Sequence[tuple[int, Buffer]], flush: bool = False,
                       pad: bool = True) -> None:
        self._check_open()
        indices: list[int] = []
        datas: list[memoryview] = []
        for index, data in pairs:
            indices.append(self._check_index(lease_id, index))
            mv = memoryview(data)
            if not mv.c_contiguous:
                raise BlockSizeError(f"block {index} data is not contiguous", lease_id=lease_id,
                                     index=index)
            mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
            if mv.nbytes > self.block_size:
                raise BlockSizeError(
                    f"block {index} of lease {lease_id}: {mv.nbytes} bytes exceed the block "
                    f"size {self.block_size}", lease_id=lease_id, index=index)
            datas.append(mv)
        if len(set(indices)) != len(indices):
            raise BlockIndexError(f"block indices repeat in one write to lease {lease_id}",
                                  lease_id=lease_id)
        if indices and not pad:
            self._write_unpadded(lease_id, epoch, indices, datas, flush)
        elif indices and flush:
            self._write_flush(lease_id, epoch, indices, datas)
        elif indices:
            self._write(lease_id, epoch, indices, datas)
        elif flush:
            self._flush(lease_id, epoch)

    def _checked_read(self, lease_id: str, indices: Sequence[int],
                      buffers: Sequence[memoryview],
                      snapshot: ReadSnapshot | None = None) -> None:
        self._check_open()
        if len(indices) != len(buffers):
            raise ValueError("read_blocks_into needs one buffer per index")
        idx = [self._check_index(lease_id, i) for i in indices]
        bufs: list[memoryview] = []
        for i, b in zip(idx, buffers):
            mv = memoryview(b)
            if mv.readonly:
                raise ValueError(f"buffer for block {i} is read-only")
            mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
            if mv.nbytes > self.block_size:
                raise BlockSizeError(f"buffer for block {i} is larger than a block",
                                     lease_id=lease_id, index=i)
            bufs.append(mv)
        if idx and snapshot is not None:
            snapshot.read(idx, bufs)
        elif idx:
            self._read(lease_id, idx, bufs)


def bounds_error(lease_id: str, name: str, index: int, num_blocks: int) -> BlockIndexError:
    """The error for an index at or beyond ``num_blocks`` (shared by the backends)."""
    return BlockIndexError(
        f"block {index} is beyond lease {name!r} ({lease_id}) of {num_blocks} blocks",
        lease_id=lease_id, index=index)
