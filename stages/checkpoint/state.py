"""CheckpointedStageState: a stage's state with crash-atomic, verified checkpoints on a lease.

The commit protocol (one mechanism, ``docs/FORMAT.md`` has the bytes):

1. Choose the target header slot: an empty or invalid slot, else the slot of the *oldest*
   committed generation. The newest K-1 committed generations are never touched.
2. Serialize (pickle protocol 5 with out-of-band buffers, or msgpack) into segments; chunk
   them into block-size chunks without joining (only chunks straddling a segment boundary
   are copied); checksum and maybe compress chunks in a thread pool while earlier chunks are
   written.
3. Write data (and spilled map) blocks only to blocks no other retained generation
   references (lowest first), growing the lease once, up front, to fit the uncompressed
   worst case. If those blocks include blocks of the target slot's old generation - or a
   slot holds something that is not a committed generation (a failed or torn header) - that
   slot is first erased (zero block), so no header keeps describing blocks being
   overwritten. With K slots the lease never exceeds K + K x (largest generation) blocks.
4. ``flush`` (data and erasures durable), then write the header into the target slot, then
   ``flush``: two fsyncs per checkpoint.
5. After the commit, give storage back (:mod:`stages.checkpoint.compaction`): shrink the lease's tail
   past what the retained generations use, and discard the dropped generation's blocks so
   its state is no longer readable. A failure here is logged, never raised: the generation
   is committed, and the next commit retries.

Steps 3 to 5 run in :func:`stages.checkpoint.commit.commit_generation`.

Security defaults: on a store that declares itself shared (``capabilities.shared``) a
pickle checkpoint without a key is refused (:class:`~stages.errors.CheckpointKeyRequired`)
unless ``allow_unauthenticated=True``; a pickle restore without a key warns once per process
(:class:`~stages.errors.UnauthenticatedRestoreWarning`). Keys are resolved when they are
used - at every checkpoint and restore, not when the object is built - by
:func:`blockstore.keys.resolve_keys` (current key to write, old keys to verify), so a key
set in the environment later is the one the next checkpoint is written with.

Speed (`BENCHMARKS.md`): the payload is never joined into one buffer - chunks are memoryview
slices of pickle's out-of-band buffers (numpy arrays), written with ``pwritev`` while a small
pool computes CRC-32C (and zstd, only where a cheap probe says it pays) for the next chunks
(:mod:`stages.checkpoint.writer` does the writing). Restore reads straight into one preallocated buffer and checks each chunk while it is still
in cache (:mod:`stages.checkpoint.reader`). ``bench/bench_checkpoint.py`` measures both against raw I/O.

Incremental checkpoints (``incremental=True``, :mod:`stages.checkpoint.incremental` says why they are
safe): unchanged chunks - same 128-bit content hash as the newest generation this object
wrote or restored - are not rewritten; the new map points at the stored ones, which the
allocator then protects like any referenced block. A full one is written every
``full_every`` generations.

So a crash at any point leaves the previous committed generations complete, and ``restore``
sees either the old set or the new one. ``restore`` takes the newest generation whose header,
map, chunks (and MAC) verify, and reports the ones it skipped (the search is
:mod:`stages.checkpoint.restore`).

``checkpoint()`` runs inside :func:`~stages.checkpoint.observer.flush_guard`: the observer hears
``on_flush_start`` once before anything is serialized or written and ``on_flush_complete``
once on every exit path. Every error while checkpointing surfaces as
:class:`~stages.errors.CheckpointFailed` (fail-closed); ``KeyboardInterrupt`` and other
``BaseException``\\ s propagate unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from blockstore import Lease, LeaseReader

from ..errors import (
    CheckpointCommitUnknown,
    CheckpointEncodeError,
    CheckpointFailed,
    CheckpointKeyRequired,
    CodecError,
)
from . import codec as codecs
from . import format as fmt
from .background import PendingCheckpoint, SnapshotBuffers
from .codec import Payload
from .commit import Commit, Encoding, commit_generation
from .compress import ChunkCoder
from .format import Header, MapEntry
from .incremental import DEFAULT_FULL_EVERY, Base, reusable_base
from .mac import KeyRing, KeySetting, checkpoint_mac, resolve_keys
from .metering import note_checkpoint, note_failure, note_restore, note_stall
from .observer import CheckpointFlushObserver, flush_guard
from .reader import scan_slots
from .reports import CheckpointInfo, RestoreReport
from .restore import newest_valid
from .writer import SlotState, learn_slots, refuse_newer_format, target_slot

__all__ = ["CheckpointInfo", "CheckpointedStageState", "RestoreReport"]

log = logging.getLogger(__name__)

T = TypeVar("T")

class CheckpointedStageState(Generic[T]):
    """A stage's state bound to a lease; ``checkpoint()`` commits it crash-atomically.

    Nothing is written (or read) until the first ``checkpoint()``. Not thread-safe: one
    stage, one writer. See the module docstring for the protocol and guarantees.

    Args:
        state: the state object (any picklable value; plain data for ``codec="msgpack"``).
        lease: a held :class:`~blockstore.Lease` (or a reader: then ``checkpoint`` fails).
        retention: K committed generations kept (>= 2; 1 would overwrite the only copy).
            A lease that already holds checkpoints keeps the K it was first written with.
        codec: "pickle" (default, zero-copy numpy) or "msgpack" (data only, never runs code).
        compression: "auto" (zstd where a probe shows it pays), "zstd" or "none".
        level: zstd level.
        key: MAC key, a key ring or keys (the first is current); default: the configured
            keys (``$BLOCKPOINT_CHECKPOINT_KEY``, ``$BLOCKPOINT_CHECKPOINT_OLD_KEYS``),
            read from the environment at each checkpoint (not here). When
            set, checkpoints carry a MAC under the current key and restores refuse
            generations without a MAC valid under one of the keys.
        mac: the MAC algorithm of new generations: "aes-gmac" (faster than the CRCs;
            format version 5), "blake3" (keyed BLAKE3, the default until 2026-12-07) or
            "hmac-sha256" (what versions before format 4 wrote); None (default):
            ``$BLOCKPOINT_CHECKPOINT_MAC``, else "aes-gmac". Restores read any: the header
            names its algorithm (``docs/FORMAT.md`` 2.5).
        allow_unauthenticated: write pickle checkpoints without a key even on a shared
            store (``capabilities.shared``), where they are refused by default.
        observer: told of every flush (see :mod:`stages.checkpoint.observer`).
        lease_id: the id given to the observer (default: the lease's id).
        incremental: reuse the stored chunks whose content did not change since the newest
            generation this object wrote or restored (:mod:`stages.checkpoint.incremental`); every
            generation then carries content hashes. Off by default: hashing costs ~10 ms
            per 256 MiB, a loss when most of the state changes between checkpoints.
        full_every: with ``incremental``, write a full checkpoint whenever the base is
            ``full_every - 1`` incrementals past the last full one (1: always full), so a
            block is shared by at most ``full_every`` generations.
    """

    def __init__(self, state: T, lease: Lease | LeaseReader, *, retention: int = 2,
                 codec: str = "pickle", compression: str = "auto", level: int = 3,
                 key: KeySetting = None, observer: CheckpointFlushObserver | None = None,
                 lease_id: str | None = None, allow_unauthenticated: bool = False,
                 incremental: bool = False, full_every: int = DEFAULT_FULL_EVERY,
                 mac: str | None = None) -> None:
        if not isinstance(retention, int) or retention < 2:
            raise ValueError(f"retention must be an int >= 2 (a commit must never overwrite the "
                             f"only good copy), got {retention!r}")
        if retention > fmt.MAX_SLOTS:
            raise ValueError(f"retention must be <= {fmt.MAX_SLOTS}, got {retention}")
        if not isinstance(full_every, int) or isinstance(full_every, bool) or full_every < 1:
            raise ValueError(f"full_every must be an int >= 1, got {full_every!r}")
        if full_every > fmt.MAX_DEPTH + 1:
            raise ValueError(f"full_every must be <= {fmt.MAX_DEPTH + 1} (the header's depth "
                             f"is a u16), got {full_every}")
        mac_alg = checkpoint_mac(mac)
        if codec not in fmt.CODECS:
            raise ValueError(f"codec must be one of {sorted(fmt.CODECS)}, got {codec!r}")
        self._coder = ChunkCoder(compression, level)
        self._state = state
        self._lease: Lease | LeaseReader | None = lease
        self._retention = retention
        self._codec = codec
        self._compression = compression
        self._level = level
        # An explicit key is checked now; None means the environment, read at each use
        # (docs/OPERATIONS.md: keys are read when they are used).
        self._key_setting: KeySetting = key
        if key is not None:
            self._key_setting = resolve_keys(key)
        self._mac_alg = mac_alg
        self._allow_unauthenticated = bool(allow_unauthenticated)
        self._observer = observer
        self._lease_id = lease_id or lease.lease_id
        self._slots: list[SlotState] | None = None
        self._dropped: set[int] | None = None  # may hold dropped data; None: unknown
        self._max_gen = 0
        self._last: CheckpointInfo | None = None
        self._lease_blocks: int | None = None  # the lease's size after the last commit
        self._flushes = 0
        self._pending: PendingCheckpoint | None = None
        self._snapshots = SnapshotBuffers()
        self._incremental = bool(incremental)
        self._full_every = full_every
        self._base: Base | None = None  # what an incremental commit may reuse
        self._encoding = Encoding(codec, compression, level, self._mac_alg, self._incremental)
        self.restored: RestoreReport | None = None

    @classmethod
    def with_observer(cls, state: T, lease: Lease | LeaseReader, lease_id: str,
                      observer: CheckpointFlushObserver | None,
                      **options: Any) -> CheckpointedStageState[T]:
        """Like the constructor, with a flush observer notified under ``lease_id``."""
        return cls(state, lease, observer=observer, lease_id=lease_id, **options)

    def _keys(self) -> KeyRing | None:
        """The key ring for this use: the explicit key, else the environment read now."""
        return resolve_keys(self._key_setting)

    # -- state ---------------------------------------------------------------------------
    @property
    def state(self) -> T:
        """The live state; assigning replaces it (nothing is written until ``checkpoint``)."""
        return self._state

    @state.setter
    def state(self, value: T) -> None:
        self._state = value

    @property
    def lease(self) -> Lease | LeaseReader:
        if self._lease is None:
            raise CheckpointFailed("the lease was handed over by into_block_lease()",
                                   lease_id=self._lease_id)
        return self._lease

    @property
    def retention(self) -> int:
        return self._retention

    def into_block_lease(self) -> Lease | LeaseReader:
        """Give up the wrapper and return the lease; this object can no longer checkpoint."""
        lease = self.lease
        self._lease = None
        return lease

    # -- generations ---------------------------------------------------------------------
    def _ensure_layout(self) -> list[SlotState]:
        """Learn the slots (read headers and maps) once, before the first write."""
        if self._slots is not None:
            return self._slots
        lease = self.lease
        k, scans = scan_slots(lease)
        if k is not None and k != self._retention:
            log.warning("lease %r was first checkpointed with retention %d; keeping %d "
                        "(asked %d)", lease.name, k, k, self._retention)
            self._retention = k
        self._slots, max_gen = learn_slots(lease, self._retention, scans, key=self._keys())
        self._max_gen = max(self._max_gen, max_gen)
        return self._slots

    def generations(self) -> list[CheckpointInfo]:
        """Committed generations on the lease as this object knows them, newest first.

        Headers and maps are checked; data chunks are verified by ``restore``/``verify``.
        """
        if self._pending is not None:
            self._pending.failure()          # a flush in flight changes the slots
        slots = self._ensure_layout()
        lease = self.lease
        infos = [CheckpointInfo.from_header(s.header, lease.lease_id, lease.name, len(s.blocks))
                 for s in slots if s.committed and s.header is not None]
        return sorted(infos, key=lambda i: -i.generation)

    @property
    def last_checkpoint(self) -> CheckpointInfo | None:
        """The newest generation committed or restored by this object, else None."""
        return self._last

    @property
    def flushing(self) -> bool:
        """``True`` while a :meth:`checkpoint` of this object is running (for control
        methods that answer mid-flush, e.g. a restarted scheduler asking)."""
        return self._flushes > 0

    @contextlib.contextmanager
    def _flush_in_progress(self) -> Iterator[None]:
        self._flushes += 1
        try:
            yield
        finally:
            self._flushes -= 1

    # -- checkpoint ----------------------------------------------------------------------
    def checkpoint_async(self, *, step: int = 0, meta: Mapping[str, Any] | None = None,
                         copy: bool = True) -> PendingCheckpoint:
        """Snapshot the state now and commit it as a new generation in the background.

        Stalls only for the snapshot (serialization, and a copy of every numpy buffer into
        buffers reused across snapshots); afterwards the caller may change the state in any
        way, arrays in place included. The commit is the same as :meth:`checkpoint`'s, inside
        the flush observer's guard. At most one flush is in flight: a request made while one
        runs first waits for it. ``.wait()`` on the result returns the ``CheckpointInfo``
        once durable, or raises the ``CheckpointFailed``; a failure nobody waited for is
        raised by this object's next ``checkpoint``/``checkpoint_async``/``wait`` (see
        ``stages/checkpoint/background.py``).

        ``copy=False`` (no-copy mode) skips the copy of the out-of-band buffers: the stall is
        serialization alone, and the flush reads the live arrays' memory. The caller then
        promises not to mutate those buffers in place until ``wait()`` returned (replacing
        an array by a new one is fine: the flush keeps the old one alive). A mutation
        breaks the snapshot: the generation may mix bytes from before and after it (or fail
        verification, if it lands between a chunk's CRC and its write).
        """
        self._settle()
        t0 = time.perf_counter()
        self._flushes += 1
        try:
            payload = codecs.encode(self._state, self._codec)
            if copy:
                payload = self._snapshots.copy(payload)
        except BaseException as exc:
            self._flushes -= 1
            if isinstance(exc, CodecError):
                raise CheckpointEncodeError(f"checkpoint of {self._what} failed: {exc}",
                                            lease_id=self._lease_id) from exc.__cause__ or exc
            if isinstance(exc, Exception):
                raise CheckpointFailed(
                    f"checkpoint of {self._what} failed: {type(exc).__name__}: {exc}",
                    lease_id=self._lease_id) from exc
            raise

        def flush() -> CheckpointInfo:
            try:
                return self._guarded_checkpoint(step, meta, payload)
            finally:
                self._flushes -= 1

        pending = PendingCheckpoint(step)
        stall = time.perf_counter() - t0
        note_stall(self.lease.name, stall)
        pending.start(flush, stall)
        self._pending = pending
        return pending

    def wait(self, timeout: float | None = None) -> CheckpointInfo | None:
        """Wait for the background flush in flight, if any; return its ``CheckpointInfo``.

        ``None`` when no asynchronous checkpoint was requested since the last wait. Raises the
        flush's ``CheckpointFailed`` (fail-closed).
        """
        pending = self._pending
        if pending is None:
            return None
        try:
            return pending.wait(timeout)
        finally:
            if pending.done():
                self._pending = None

    def _settle(self) -> None:
        """Let the flush in flight end; raise its failure if no caller has seen it yet."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        exc = pending.failure()
        if exc is not None and not pending.reported:
            pending.reported = True
            raise exc

    def checkpoint(self, *, step: int = 0,
                   meta: Mapping[str, Any] | None = None) -> CheckpointInfo:
        """Commit the current state as a new generation; return its description.

        On return the generation is durable (data and header flushed). Raises
        :class:`CheckpointFailed` on any error (serialization, I/O, fencing, not held); the
        previous generations are then intact and the state is NOT saved. When the failure
        came after the header write began (I/O error at the header write or its flush), the
        subclass :class:`CheckpointCommitUnknown` says so: the new generation may have been
        committed, and a later ``restore`` may return it. Either way the caller must not
        go on as if the state were saved; a pipeline rolls back to its last committed step
        (the run record, not the lease, decides what is committed).

        An asynchronous checkpoint still in flight is waited for first (and its failure, if
        nobody waited for it, is raised here).
        """
        self._settle()
        with self._flush_in_progress():
            return self._guarded_checkpoint(step, meta, None)

    def checkpoint_payload(self, payload: Payload, *, step: int = 0,
                           meta: Mapping[str, Any] | None = None) -> CheckpointInfo:
        """Commit an already encoded ``payload`` (not ``state``) as a new generation.

        For writers that build their own payload (keyed state, ``stages/checkpoint/keyed.py``):
        the commit, its guarantees and its errors are :meth:`checkpoint`'s. ``payload.reuse``
        entries are taken only when this object's incremental base is
        ``payload.reuse_generation`` (see :meth:`committed_map`).
        """
        self._settle()
        with self._flush_in_progress():
            return self._guarded_checkpoint(step, meta, payload)

    def committed_map(self) -> tuple[int, Sequence[MapEntry]] | None:
        """The generation a next incremental commit may reuse chunks of, and its block map
        (``None``: none is trusted; the next commit writes everything)."""
        if self._base is None:
            return None
        return self._base.generation, self._base.entries

    @property
    def _what(self) -> str:
        """``'agg' (lease 3f2a...)``: the lease's name - the stage id, the actor's key - first,
        since that is what the user named; the id to find it in the store."""
        return f"{self.lease.name!r} (lease {self._lease_id})"

    def check_authenticated(self, ring: KeyRing | None | bool = False) -> None:
        """Raise :class:`CheckpointKeyRequired` if every checkpoint of this state would be
        refused: pickle, no key, a shared store, no ``allow_unauthenticated``. A setting, not
        an accident of one write - callers that start many checkpoints (a stage actor) ask
        once at start-up, so the mistake is reported before any work is done. ``ring``: the
        keys already resolved for this use (default: read them now)."""
        lease = self.lease
        if ring is False:
            ring = self._keys()
        if (ring is None and self._codec == "pickle" and not self._allow_unauthenticated
                and lease.store.capabilities.shared):
            raise CheckpointKeyRequired(
                f"lease {lease.name!r} is on a shared store ({lease.store.url}): a pickle "
                "checkpoint without a key could be replaced by anyone who can write the store, "
                "and restoring it runs their code. Give a key - BLOCKPOINT_CHECKPOINT_KEY_FILE "
                "naming a 0600 key file (on a cluster: on every node, never in a runtime "
                "env), BLOCKPOINT_CHECKPOINT_KEY, or key= - use codec='msgpack', or pass "
                "allow_unauthenticated=True",
                lease_id=self._lease_id)

    def _guarded_checkpoint(self, step: int, meta: Mapping[str, Any] | None,
                            payload: Payload | None) -> CheckpointInfo:
        """The commit inside the flush observer's guard, errors mapped (fail-closed).

        The committed generation's figures are recorded after the guard, once the mark is
        released: what metrics do (``blockstore/metrics.py``) never holds the mark nor
        changes the outcome of a commit that happened.
        """
        with flush_guard(self._observer, self._lease_id):
            try:
                info = self._checkpoint(step, meta, payload)
            except CheckpointCommitUnknown as exc:
                # The target slot may hold a committed generation now: forget what this
                # writer believed and read the slots again before the next write, so that
                # generation is protected like any other (never erased as "uncommitted").
                self._slots = None
                self._dropped = None
                self._base = None
                note_failure(self.lease.name, exc)
                raise
            except CheckpointFailed as exc:
                self._dropped = None  # the attempt may have written blocks nothing references
                note_failure(self.lease.name, exc)
                raise
            except CodecError as exc:  # before anything was written
                note_failure(self.lease.name, exc)
                raise CheckpointEncodeError(f"checkpoint of {self._what} failed: {exc}",
                                            lease_id=self._lease_id) from exc.__cause__ or exc
            except Exception as exc:
                self._dropped = None
                note_failure(self.lease.name, exc)
                raise CheckpointFailed(
                    f"checkpoint of {self._what} failed: {type(exc).__name__}: {exc}",
                    lease_id=self._lease_id, generation=self._max_gen or None) from exc
        note_checkpoint(info, self.lease, self._slots, self._lease_blocks)
        return info

    def _checkpoint(self, step: int, meta: Mapping[str, Any] | None,
                    payload: Payload | None = None) -> CheckpointInfo:
        t0 = time.perf_counter()
        created = time.time()
        lease = self.lease
        if not isinstance(lease, Lease):
            raise CheckpointFailed(f"lease {lease.name!r} is open for reading only (restored "
                                   "from a LeaseReader); acquire it to checkpoint",
                                   lease_id=self._lease_id)
        ring = self._keys()
        self.check_authenticated(ring)
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        meta_bytes = fmt.encode_meta(meta)
        bs = lease.block_size
        if len(meta_bytes) > fmt.max_meta(bs):
            raise ValueError(f"meta of {len(meta_bytes)} bytes does not fit a header block "
                             f"(at most {fmt.max_meta(bs)} bytes of JSON)")
        slots = self._ensure_layout()
        refuse_newer_format(slots, lease)
        gen = self._max_gen + 1
        self._max_gen = gen
        target = target_slot(slots)
        if payload is None:
            payload = codecs.encode(self._state, self._codec)
        base = None
        if self._incremental and self._base is not None:
            bslot = slots[self._base.slot]
            base = reusable_base(self._base, target=target, full_every=self._full_every,
                                 committed_generation=bslot.header.generation
                                 if bslot.committed and bslot.header else None)
        done = commit_generation(
            lease, slots, target, payload,
            Commit(gen, step, meta_bytes, created, t0, self._what, self._lease_id),
            self._encoding, coder=self._coder, ring=ring, base=base,
            dropped_before=self._dropped)
        if self._incremental:
            self._base = Base(gen, target, done.depth, done.entries)
        else:
            self._base = None
        info = CheckpointInfo.from_header(done.header, lease.lease_id, lease.name,
                                          len(done.blocks), done.stats)
        self._last = info
        self._dropped = done.dropped
        self._lease_blocks = done.lease_blocks
        return info

    # -- restore -------------------------------------------------------------------------
    @classmethod
    def restore(cls, lease_or_reader: Lease | LeaseReader, *, key: bytes | str | None = None,
                observer: CheckpointFlushObserver | None = None, lease_id: str | None = None,
                max_step: int | None = None, max_state_bytes: int | None = None,
                **options: Any) -> CheckpointedStageState[Any]:
        """Restore the newest generation that verifies; bind the result to the lease.

        ``max_step`` (pipeline rollback): only generations whose step is ``<= max_step`` are
        candidates; newer ones are ignored (not reported as skipped) and, once a checkpoint is
        written from the result, overwritten first. ``NoCheckpointError`` if none qualifies.

        Every chunk CRC (and the MAC when a key is configured) is verified before anything is
        decoded (:mod:`stages.checkpoint.restore` has the search). Newer generations that fail are skipped, logged and listed in
        ``css.restored.skipped``. Restored numpy arrays are backed by the one buffer the
        payload was read into (no extra copy).

        ``max_state_bytes``: the largest state a generation may declare before its buffer is
        allocated (None: bounded only for headers not authenticated by a key, by
        :func:`~stages.checkpoint.restore.default_max_state_bytes`; ``docs/FORMAT.md`` 2.7).

        Raises:
            NoCheckpointError: the lease holds no checkpoint (never written, or empty).
            CheckpointTooLarge: the newest candidate declares more than ``max_state_bytes``.
            CheckpointCorrupt: no generation verifies (a subclass names the cause of the
                newest one: bad magic, newer version, truncated lease, MAC); ``.skipped``
                lists them all.
        """
        t0 = time.perf_counter()
        found = newest_valid(lease_or_reader, log=log, key=key, max_step=max_step,
                             max_state_bytes=max_state_bytes)
        opts = {"retention": max(found.slots, 2), **options}
        css: CheckpointedStageState[Any] = cls(found.state, lease_or_reader, key=key,
                                               observer=observer, lease_id=lease_id, **opts)
        h, report = found.header, found.report
        css.restored = report
        css._last = report.info
        css._adopt(found.slots, found.scans, h, found.blocks)
        if h.hashed:  # every chunk of it was just verified: a trusted incremental base
            css._base = Base(h.generation, h.slot, h.depth, found.entries)
        if report.skipped:
            log.warning("restore of lease %r (%s): restored generation %d after skipping %s",
                        lease_or_reader.name, lease_or_reader.lease_id, h.generation,
                        [g for g, _ in report.skipped])
        note_restore(report, time.perf_counter() - t0, lease_or_reader, found.fell_back)
        return css

    def _adopt(self, k: int, scans: list[Any], restored: Header, blocks: frozenset[int]) -> None:
        """Writer knowledge after a restore: generations newer than the restored one failed."""
        self._retention = k
        self._slots, max_gen = learn_slots(self.lease, k, scans, restored=restored,
                                           restored_blocks=blocks)
        self._max_gen = max(self._max_gen, max_gen)

