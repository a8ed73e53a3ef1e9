"""One incarnation's hold on a durable state: the lease taken by force, restore, checkpoint.

Both kinds of stateful actor in :mod:`stages` - the pipeline's :class:`~stages.actors.actor.StageActor`
and an ordinary Ray actor under :func:`~stages.actors.checkpointed.checkpointed` - start the same
way and write the same way, so that is written once, here:

1. **Take the lease by force.** A new incarnation (a Ray restart, a re-creation on another
   node, a scheduler restore) acquires the lease named after the stage or actor with
   ``steal=True``: the store bumps the fencing epoch and refuses every later write of the
   previous incarnation, dead or a zombie on a lost node (``StaleLeaseError``, checked by
   the store atomically with the write). ``keepalive=True`` renews the TTL while this
   process lives, so an expired lease means a dead or partitioned holder.
2. **Restore on start.** The newest generation that verifies is restored (or, for a
   pipeline rollback, the newest at or before a step). No generation: the caller's initial
   state stands. Generations present, none verifying: ``CheckpointCorrupt`` - never a silent
   restart from scratch.
3. **Checkpoint, fail-closed.** :meth:`Incarnation.checkpoint` commits the current state as a
   new generation or raises ``CheckpointFailed``; :attr:`Incarnation.fenced` tells a caller
   that the failure was the store refusing a stale epoch (this incarnation was replaced and
   must stop serving), not an I/O error. :meth:`Incarnation.checkpoint_async` is the same
   with the flush in the background (``stages/checkpoint/background.py``): ``fenced`` and
   ``last_checkpoint_at`` are set when that flush ends; :meth:`Incarnation.drain` waits for
   it before the state is replaced (``bind``) or the lease given up (``release``).

When to checkpoint (policy) and what the state is (an attribute of an actor, a stage's
state object) stay with the callers; this class is not thread-safe on its own, callers
serialize ``checkpoint``/``bind`` (both of them do, with their own lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from blockstore import BlockStore, Lease, StaleLeaseError, StoreConfigError, open_store
from blockstore.logs import configure_from_env

from ..errors import CheckpointFailed, NoCheckpointError, StageError
from ..checkpoint.background import PendingCheckpoint
from ..checkpoint.observer import CheckpointFlushObserver
from ..checkpoint.state import CheckpointedStageState, CheckpointInfo, RestoreReport

if TYPE_CHECKING:
    from .hooks import StageRegistrar, StageRegistration

__all__ = ["Incarnation", "RollbackUnavailable", "is_fenced", "open_store_for", "register_quietly",
           "restore_or_initial"]

log = logging.getLogger(__name__)


class RollbackUnavailable(StageError, LookupError):
    """No checkpoint generation at or before the requested step is left on the stage's lease
    (retention dropped it, or the lease was replaced).

    Attributes:
        stage_id: the stage.
        step: the step asked for.
    """

    def __init__(self, message: str, *, stage_id: str | None = None,
                 step: int | None = None) -> None:
        super().__init__(message)
        self.stage_id = stage_id
        self.step = step


def open_store_for(url: str | BlockStore, block_size: int | None) -> BlockStore:
    """Open ``url``, creating it with ``block_size`` if needed; an existing store keeps its
    own block size (a block size is a property of the store, not of one stage). An open
    :class:`~blockstore.BlockStore` is returned as it is."""
    if isinstance(url, BlockStore):
        return url
    try:
        return open_store(url, block_size=block_size)
    except StoreConfigError:
        if block_size is None:
            raise
        return open_store(url)


def restore_or_initial(lease: Lease, initial: Callable[[], Any], *,
                       observer: CheckpointFlushObserver | None, max_step: int | None = None,
                       name: str | None = None, max_state_bytes: int | None = None,
                       **options: Any) -> CheckpointedStageState[Any]:
    """Bind a state to ``lease``: restored if a checkpoint exists, else ``initial()``.

    With ``max_step`` (pipeline rollback to its last committed step), the newest generation
    whose step is ``<= max_step`` is restored; generations after it are ignored and are the
    first to be overwritten. ``max_step=0`` means "before the first step": the initial state
    when no step-0 generation exists. ``RollbackUnavailable`` if ``max_step > 0`` and no
    generation is old enough. Never returns state from a generation that does not verify; a
    lease whose candidate generations all fail verification raises ``CheckpointCorrupt``.
    ``max_state_bytes`` bounds the state a generation may declare before it is allocated
    (``CheckpointTooLarge``; ``None``: the default bound of
    :func:`~stages.checkpoint.restore.default_max_state_bytes` for headers no key
    authenticates). ``options`` are ``CheckpointedStageState``'s (retention, codec,
    compression, level, key).
    """
    try:
        return CheckpointedStageState.restore(lease, observer=observer, lease_id=lease.lease_id,
                                              max_step=max_step,
                                              max_state_bytes=max_state_bytes, **options)
    except NoCheckpointError:
        if max_step is not None and max_step > 0:
            who = name or lease.name
            raise RollbackUnavailable(
                f"stage {who!r}: no checkpoint at or before step {max_step} on its lease",
                stage_id=who, step=max_step) from None
    return CheckpointedStageState.with_observer(initial(), lease, lease.lease_id, observer,
                                                **options)


def is_fenced(exc: BaseException) -> bool:
    """True if ``exc`` (a ``CheckpointFailed``) is the store refusing a stale epoch."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, StaleLeaseError):
            return True
        cause = cause.__cause__
    return False


class Incarnation:
    """The lease (taken by force), the restored state and the checkpoints of one incarnation.

    Construction opens the store, acquires the lease named ``name`` with ``steal=True`` and
    ``keepalive=True`` (epoch bump: every earlier incarnation is fenced) and restores
    (:func:`restore_or_initial`). Errors of either step propagate: an unreachable store
    (``BlockStoreError``/``OSError``), a corrupt lease (``CheckpointCorrupt``).

    Args:
        store: a store URL/path or an open store.
        name: the lease name (a stage id, an actor's key).
        initial: returns the state used when the lease holds no checkpoint.
        holder: the holder recorded on the lease (default: ``name@node:pid``).
        node_id: the Ray node this runs on (for the holder string and ``info``), or None.
        lease_ttl: TTL of the lease; the keepalive renews it every third.
        block_size: block size if the store must be created.
        observer: flush observer handed to ``CheckpointedStageState``.
        max_step: restore the newest generation at or before this step (rollback).
        options: ``CheckpointedStageState`` options (retention, codec, compression, level,
            key) and ``max_state_bytes``, the restore's bound (:func:`restore_or_initial`).
    """

    def __init__(self, store: str | BlockStore, name: str, initial: Callable[[], Any], *,
                 holder: str | None = None, node_id: str | None = None, lease_ttl: float = 10.0,
                 block_size: int | None = None, observer: CheckpointFlushObserver | None = None,
                 max_step: int | None = None, **options: Any) -> None:
        configure_from_env()  # $BLOCKPOINT_LOG_FORMAT in this worker (docs/OPERATIONS.md)
        self.name = name
        self.node_id = node_id
        self.pid = os.getpid()
        self._initial = initial
        self._observer = observer
        self._options = options
        self._store = open_store_for(store, block_size)
        holder = holder or f"{name}@{(node_id or 'local')[:12]}:{self.pid}"
        self.lease: Lease = self._store.acquire(name, holder=holder, ttl=lease_ttl, steal=True,
                                                keepalive=True)
        self.fenced = False
        self.released = False
        self.last_checkpoint_at: float | None = None
        self.css: CheckpointedStageState[Any] = self.bind(max_step)

    # -- restore -------------------------------------------------------------------------
    def bind(self, max_step: int | None = None) -> CheckpointedStageState[Any]:
        """(Re)load the state from the lease (see :func:`restore_or_initial`); keeps the lease
        and epoch. Sets :attr:`restored` and returns the new ``CheckpointedStageState``.
        A background flush of the old state is waited for first (:meth:`drain`)."""
        if getattr(self, "css", None) is not None:
            self.drain()
        css = restore_or_initial(self.lease, self._initial, observer=self._observer,
                                 max_step=max_step, name=self.name, **self._options)
        self.restored: RestoreReport | None = css.restored
        if self.restored is not None and self.restored.skipped:
            log.warning("%s restored generation %s, skipping %s", self.name,
                        self.restored.generation, self.restored.skipped)
        self.css = css
        return css

    def restored_summary(self) -> dict[str, Any]:
        """``restored_from`` / ``restored_step`` / ``restored_meta`` / ``restored_skipped``
        (``[(generation, reason)]``) of the last restore; ``None``/empty when it found no
        checkpoint."""
        r = self.restored
        return {
            "restored_from": None if r is None else r.generation,
            "restored_step": None if r is None else r.step,
            "restored_meta": None if r is None else dict(r.meta or {}),
            "restored_skipped": [] if r is None else [(g, why[:200]) for g, why in r.skipped],
        }

    # -- checkpoint ----------------------------------------------------------------------
    @property
    def state(self) -> Any:
        """The live state object (what the next checkpoint writes)."""
        return self.css.state

    @state.setter
    def state(self, value: Any) -> None:
        self.css.state = value

    def checkpoint(self, step: int = 0, meta: Mapping[str, Any] | None = None) -> CheckpointInfo:
        """Commit the current state as a new generation (durable on return).

        Raises ``CheckpointFailed`` (fail-closed: the state is NOT saved); when the store
        refused this incarnation's epoch, :attr:`fenced` becomes True first.
        """
        with self._noting_fence():
            info = self.css.checkpoint(step=step, meta=meta)
        self.last_checkpoint_at = time.time()
        return info

    def checkpoint_async(self, step: int = 0,
                         meta: Mapping[str, Any] | None = None) -> PendingCheckpoint:
        """Snapshot the state now, commit it in the background (see
        :meth:`CheckpointedStageState.checkpoint_async`); waits first for a flush in flight.

        Raises ``CheckpointFailed`` for a failed snapshot or an earlier background failure
        nobody saw. When the flush ends, :attr:`last_checkpoint_at` (success) or
        :attr:`fenced` (refused for a stale epoch) is set - before ``wait()`` on the result
        returns.
        """
        with self._noting_fence():
            pending = self.css.checkpoint_async(step=step, meta=meta)

        def settled(done: PendingCheckpoint) -> None:  # in the flush thread; must not raise
            _, exc = done.outcome
            if exc is None:
                self.last_checkpoint_at = time.time()
            elif is_fenced(exc):
                self.fenced = True
        pending.add_done_callback(settled)
        return pending

    @contextlib.contextmanager
    def _noting_fence(self) -> Iterator[None]:
        """Re-raise a ``CheckpointFailed``, first setting :attr:`fenced` if the store refused
        this incarnation's epoch."""
        try:
            yield
        except CheckpointFailed as exc:
            if is_fenced(exc):
                self.fenced = True
            raise

    def drain(self) -> BaseException | None:
        """Wait for the background flush in flight, if any; return its failure (logged, not
        raised: whoever waits on its ``PendingCheckpoint`` is told) or None."""
        try:
            self.css.wait()
        except CheckpointFailed as exc:
            log.warning("%s: background checkpoint failed: %s", self.name, exc)
            return exc
        return None

    @property
    def last_checkpoint(self) -> CheckpointInfo | None:
        """The newest generation written or restored by this incarnation, else None."""
        return self.css.last_checkpoint

    @property
    def flushing(self) -> bool:
        """True while a checkpoint is being written (safe to read from another thread)."""
        return self.css.flushing

    @property
    def epoch(self) -> int:
        return self.lease.epoch

    @property
    def lease_id(self) -> str:
        return self.lease.lease_id

    def release(self) -> None:
        """Give the lease up (a graceful end), after the flush in flight; twice is harmless."""
        if not self.released:
            self.drain()
            self.released = True
            self.lease.release()


def register_quietly(registrar: StageRegistrar, registration: StageRegistration,
                     who: str) -> Any:
    """Hand ``registration`` to ``registrar`` without waiting (see ``stages/actors/hooks.py``); a
    missing manager is logged, never fatal. Returns the registrar's reply reference."""
    try:
        return registrar.register(registration)
    except Exception as exc:  # noqa: BLE001 - a missing scheduler must not stop the actor
        log.warning("%s could not register with %r: %s", who, registrar, exc)
        return None
