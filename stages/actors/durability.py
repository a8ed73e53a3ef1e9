"""The runtime half of ``@checkpointed``: one actor incarnation's durable attributes.

:mod:`stages.actors.checkpointed` builds the decorated class; every instance of it owns one
:class:`ActorDurability`, created right after the user's ``__init__`` ran. It holds the
:class:`~stages.actors.incarnation.Incarnation` (lease by force, restore, fenced checkpoints) and
decides *when* to checkpoint - the turn-taking part:

* **Checkpoints run in the actor's turn.** A policy checkpoint is taken by the call that
  made it due, after the user's method returned and before the reply goes out; the
  ``every_seconds`` timer thread never touches the state, it only *requests* (it submits
  ``_bp_tick`` to the actor's own handle, which Ray runs in the default concurrency group
  like any call). So no thread races the user's code on the state.
* **One lock,** :attr:`ActorDurability.lock` (an ``RLock``, the actor's
  ``checkpoint_lock``). It protects the named attributes for the whole snapshot (serialize
  and write) and the decorator's own bookkeeping. A single-threaded actor (the default
  ``max_concurrency=1``) needs nothing more; a threaded actor (``max_concurrency > 1``)
  must mutate the named attributes under ``with self.checkpoint_lock:`` so that a snapshot
  never sees half a mutation.
* **Async actors snapshot only between calls** (:mod:`stages.actors.turns`): a snapshot
  is never taken while a coroutine call is suspended half-way through its method; one that
  becomes due then waits (new calls held at the door for ``HOLD_S`` at most) and the call
  that leaves last takes it. ``actor.checkpoint()`` of an async actor is a coroutine that
  returns once such a snapshot is committed; inside a method, ``await self.checkpoint()``
  waits until this call is the only one inside.
* **Exactly-once mode** (``every_calls=1``). Every call runs holding the lock (threads) or
  a first-come turn shared by every event loop (coroutines), so calls apply one at a time, and commits a checkpoint
  *before it returns*; the checkpoint also carries the ids of the last calls applied
  (Ray's task id, which stays the same when Ray retries a task) and their results. A call
  whose id is recorded is not applied again: its recorded result is returned. So a kill
  after the commit but before the reply - which makes Ray retry the call - cannot count the
  call twice, and a kill before the commit leaves nothing of it in the restored state.
  A checkpoint that fails in this mode reloads the attributes from the lease (memory never
  runs ahead of what is durable) and the call raises ``CheckpointFailed`` - unless the
  failure left the commit's outcome unknown (``CheckpointCommitUnknown``: the store raised
  after the generation may have landed) and the reloaded state holds the call's id: then
  the call was committed, the lease is flushed once more and the call returns its
  recorded result. **A call that raises** is rolled back: memory is reloaded from the last
  committed state before the exception propagates (the lease's newest generation, or the
  constructor's state - kept pickled until the first commit - if there is none), so the
  next call's checkpoint never commits half of a failed call. Rolling back after the
  exception (not snapshotting before every call) keeps the common path free; a failed
  call costs a restore. If that reload fails, the next call reloads first, and fails
  (``CheckpointFailed``) rather than commit the half-applied state. In the other policies a
  call *with a request id* that raises is put back from an in-memory snapshot taken before
  it (``stages/actors/dispatch.py``, which states the cost).
* **Asynchronous policy checkpoints** (``async_checkpoint=True``, with ``every_calls >= 2``
  or ``every_seconds``; refused with ``every_calls=1``). The call that makes a checkpoint
  due takes the snapshot under the lock (the named attributes serialized, their numpy
  buffers copied: ``stages/checkpoint/background.py``) and returns; the flush runs in a background
  thread, and the next call may mutate the attributes in any way meanwhile. At most one
  flush is in flight: the next due checkpoint (or an explicit ``checkpoint()``, always
  synchronous) waits for it first. A background failure is never silent: the next call
  that makes a checkpoint due raises it (``CheckpointFailed``; ``ActorFenced`` from then
  on if the store refused a stale epoch), and that checkpoint is taken by the call after,
  since every call since the failed snapshot is still unsaved. A graceful exit waits for
  the flush in flight, and checkpoints again if it failed. What is kept is that of
  every_calls=N, counted from the last flush that finished (README, "What each policy keeps").

The methods that run one call under these rules (deduplication, the exactly-once commit,
the rollback) live in :mod:`stages.actors.dispatch`, a mixin of :class:`ActorDurability`.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any

from blockstore import BlockStoreError, LeaseNameError

from ..checkpoint.policy import CheckpointPolicy
from ..checkpoint.state import CheckpointInfo
from ..errors import CheckpointFailed, StageError
from .actor import StageStopped
from .dispatch import CallDispatch, in_call
from .incarnation import Incarnation
from .records import AppliedCalls
from .turns import CallTurns

if TYPE_CHECKING:
    from .config import CheckpointedConfig
    from .recipe import ActorRecipe

__all__ = ["ActorDurability", "ActorFenced", "StateAttributeError", "StoreUnavailable",
           "in_call"]

log = logging.getLogger(__name__)

_PAYLOAD_VERSION = 1


class StateAttributeError(StageError, AttributeError):
    """A state attribute named in ``@checkpointed(state=...)`` is missing after ``__init__``,
    or a restored checkpoint does not hold the named attributes.

    Attributes:
        actor: the decorated class's name.
        attribute: the missing attribute.
    """

    def __init__(self, message: str, *, actor: str | None = None,
                 attribute: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.attribute = attribute


class StoreUnavailable(StageError, ConnectionError):
    """The actor's store could not be opened or its lease not taken at start-up.

    Attributes:
        store: the store URL.
        key: the lease name.
    """

    def __init__(self, message: str, *, store: str | None = None,
                 key: str | None = None) -> None:
        super().__init__(message)
        self.store = store
        self.key = key


class ActorFenced(StageError, RuntimeError):
    """This incarnation's lease was taken by a newer one: it may no longer serve calls.

    Attributes:
        key: the lease name.
        epoch: this incarnation's (stale) epoch.
    """

    def __init__(self, message: str, *, key: str | None = None,
                 epoch: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.epoch = epoch


class ActorDurability(CallDispatch):
    """The durable attributes of one incarnation of a ``@checkpointed`` actor.

    Construction (right after the user's ``__init__``): checks the named attributes exist,
    takes the lease by force, restores the newest generation that verifies into them (the
    constructor's values stand when there is none) and calls ``obj.on_restore(report)`` if
    it restored something and the method exists. See the module docstring for the locking
    and exactly-once rules.

    Args:
        obj: the actor instance.
        config: the decorator's configuration.
        key: the lease name (explicit ``key=`` or the actor's name).
        handle: the actor's own handle (for the timer's requests), or None outside Ray.
        node_id: the node it runs on, or None.
    """

    def __init__(self, obj: Any, config: CheckpointedConfig, key: str, *, handle: Any,
                 node_id: str | None) -> None:
        self.config = config
        self.key = key
        self.lock = threading.RLock()
        self._obj = obj
        self._active = 0
        #: Coroutine calls inside the user's method (policy mode): snapshots wait for none.
        self.turns = CallTurns(self.lock)
        self._closed = False
        self._tick_pending = False
        #: The calls applied (ids, recorded results, fingerprints): ``records.py``.
        self.applied = AppliedCalls(config.dedupe_window, config.actor, config.dedupe_bytes,
                                    config.codec)
        self.calls_total = 0
        self.calls_since = 0
        self.deduplicated = 0
        self.failures = 0
        #: Checkpoints committed (or snapshotted, with async_checkpoint): a call that raised
        #: compares it to know whether it committed part of itself (``dispatch.py``).
        self.commits = 0
        #: Request keys of the policy-mode calls running now: a checkpoint taken meanwhile
        #: (inside one of them) records them as in progress (``records.py``).
        self.in_progress: set[str] = set()
        self._flush_failed = False  # set by a failed background flush (flush thread)
        self._policy = CheckpointPolicy(every_records=config.every_calls,
                                        every_seconds=config.every_seconds)
        self._since = time.monotonic()
        for name in config.attrs:
            if not hasattr(obj, name):
                raise StateAttributeError(
                    f"{config.actor}: state attribute {name!r} does not exist after __init__ "
                    f"(@checkpointed(state={config.state_arg!r}))", actor=config.actor,
                    attribute=name)
        try:
            self.inc = Incarnation(config.store, key, self._payload, node_id=node_id,
                                   lease_ttl=config.lease_ttl, block_size=config.block_size,
                                   observer=config.observer, **config.state_options())
        except LeaseNameError as exc:  # the key names no lease: the name, not the store
            raise LeaseNameError(f"{config.actor}: its lease key {key!r} (the actor's name, "
                                 f"or key=) cannot name a lease: {exc}", name=key) from exc
        except (BlockStoreError, OSError) as exc:
            raise StoreUnavailable(
                f"{config.actor} {key!r}: store {config.store!r} unavailable: "
                f"{type(exc).__name__}: {exc}", store=str(config.store), key=key) from exc
        #: Set while memory may be ahead of the lease (a rollback failed): reload first.
        self._dirty = False
        #: The constructor's state, pickled, until the first commit (exactly-once mode with
        #: nothing to restore): what a call that raises is rolled back to.
        self._initial: bytes | None = None
        if self.inc.restored is not None:
            self._adopt(self.inc.state)
            hook = getattr(obj, "on_restore", None)
            if callable(hook):
                hook(self.inc.restored)
        elif self.exact:
            try:
                self._initial = pickle.dumps(self._payload(), protocol=5)
            except Exception as exc:  # noqa: BLE001 - the first checkpoint will say it
                log.warning("%s %r: the constructor's state does not pickle (%s): a call "
                            "that raises before the first commit cannot be rolled back",
                            config.actor, key, exc)
        self._handle = handle
        #: The relaunch recipe sent with the registration (set by the decorator), or None.
        self.recipe: ActorRecipe | None = None
        #: What the actor holds, as stage resource options (registered with the scheduler).
        self.resources: dict[str, Any] = {}
        if config.every_seconds is not None and handle is not None:
            threading.Thread(target=self._timer, name=f"bp-timer-{key}", daemon=True).start()

    # -- the payload: named attributes + applied call ids --------------------------------
    def _payload(self) -> dict[str, Any]:
        return {"v": _PAYLOAD_VERSION,
                "attrs": {name: getattr(self._obj, name) for name in self.config.attrs},
                **self.applied.payload(in_progress=self.in_progress)}

    def _adopt(self, payload: Any) -> None:
        """Put a restored payload's attributes (and applied ids) into the actor."""
        attrs = payload.get("attrs") if isinstance(payload, dict) else None
        if not isinstance(attrs, dict):
            raise StateAttributeError(
                f"{self.config.actor}: lease {self.key!r} holds a checkpoint not written by "
                "@checkpointed", actor=self.config.actor)
        for name in self.config.attrs:
            if name not in attrs:
                raise StateAttributeError(
                    f"{self.config.actor}: the checkpoint on lease {self.key!r} has no "
                    f"attribute {name!r} (it holds {sorted(attrs)})", actor=self.config.actor,
                    attribute=name)
            setattr(self._obj, name, attrs[name])
        self.applied.adopt(payload)

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """Exactly-once mode: every call commits a checkpoint before it returns."""
        return self.config.every_calls == 1

    def check_serving(self) -> None:
        """Raise ``ActorFenced`` once a checkpoint was refused for a stale epoch, and
        ``StageStopped`` after :meth:`close` (the lease is given up)."""
        if self._closed:
            raise StageStopped(f"{self.config.actor} {self.key!r} was shut down",
                               stage_id=self.key)
        if self.inc.fenced:
            raise ActorFenced(f"{self.config.actor} {self.key!r}: epoch {self.inc.epoch} was "
                              "fenced by a newer incarnation", key=self.key,
                              epoch=self.inc.epoch)

    def checkpoint(self, step: int = 0, meta: dict[str, Any] | None = None) -> CheckpointInfo:
        """Snapshot the named attributes under :attr:`lock` and commit them (fail-closed:
        ``CheckpointFailed``, or ``ActorFenced`` if this incarnation was already fenced)."""
        with self.lock:
            self.check_serving()
            self.turns.taken()
            self.inc.state = self._payload()
            try:
                info = self.inc.checkpoint(step=step, meta=meta)
            except CheckpointFailed:
                self.failures += 1
                raise
            self.commits += 1
            self._flush_failed = False
            self.calls_since = 0
            self._since = time.monotonic()
            return info

    def checkpoint_inside(self, step: int = 0,
                          meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """``self.checkpoint()`` inside a call. In exactly-once mode nothing is written (the
        call commits before it returns; a commit half-way would be what its rollback
        reloads if it raised): the last committed info, with ``"coalesced": True``. In the
        other policies a commit now; it holds the running call's request id as *in progress*
        (a resend after a crash is refused, not applied on top of the half: ``records.py``),
        and if the call raises, its rollback is committed too (``dispatch.py``)."""
        if self.exact:
            last = self.inc.last_checkpoint
            return {**(last.to_dict() if last else {}), "coalesced": True}
        return self.checkpoint(step, meta).to_dict()

    def request(self, step: int = 0, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """An on-demand checkpoint from outside (``actor.checkpoint.remote()``).

        In exactly-once mode with an async call in progress (it holds no thread, so this runs
        between two of its awaits) nothing is written: that call commits before it returns,
        and a snapshot now would hold its effect without its id. The last committed info is
        returned with ``"coalesced": True``.
        """
        if self.exact and self._active:
            last = self.inc.last_checkpoint
            return {**(last.to_dict() if last else {}), "coalesced": True}
        return self.checkpoint(step, meta).to_dict()

    def checkpoint_async(self, meta: dict[str, Any] | None = None) -> None:
        """Snapshot the named attributes under :attr:`lock`; flush in the background.

        Raises ``CheckpointFailed`` for a failed snapshot or for the previous background
        flush's failure (nothing new is snapshotted then; the next due call does it)."""
        with self.lock:
            self.check_serving()
            self.turns.taken()
            self.inc.state = self._payload()
            try:
                pending = self.inc.checkpoint_async(meta=meta)
            except CheckpointFailed:
                self.failures += 1
                raise
            self._flush_failed = False
            self.commits += 1
            self.calls_since = 0
            self._since = time.monotonic()

        def settled(done: Any) -> None:  # in the flush thread: takes no lock, never raises
            if done.outcome[1] is not None:
                self._flush_failed = True
        pending.add_done_callback(settled)

    def _due_checkpoint(self) -> None:
        reason = self._policy.due(self.calls_since, time.monotonic() - self._since)
        if self._flush_failed:
            reason = reason or "retry"  # what the failed flush held is still unsaved
        if reason is not None and self.calls_since:
            if self.turns.inside:  # a coroutine call is mid-method: the last one out takes it
                self.turns.want()
                return
            if self.config.async_checkpoint:
                self.checkpoint_async(meta={"reason": reason})
            else:
                self.checkpoint(meta={"reason": reason})

    async def request_async(self, step: int = 0, meta: dict[str, Any] | None = None,
                            *, inside: bool = False) -> dict[str, Any]:
        """``await actor.checkpoint()`` of an async actor: a snapshot at a point where no
        coroutine call is mid-method (``inside``: none but the calling one), committed."""
        if self.exact and (self._active or inside):
            return self.checkpoint_inside(step, meta)  # coalesced: that call commits first
        own = 1 if inside and not self.exact else 0
        return await self.turns.when_alone(own, lambda: self.checkpoint(step, meta).to_dict())

    def tick(self) -> None:
        """The timer's request, run in the actor's turn: checkpoint if still due."""
        self._tick_pending = False
        with self.lock:
            if not self._closed and not self.inc.fenced:
                self._due_checkpoint()

    def _timer(self) -> None:
        period = float(self.config.every_seconds or 1.0)
        while not self._closed:
            time.sleep(min(period / 4, 1.0))
            if (self._closed or self._tick_pending or not self.calls_since
                    or time.monotonic() - self._since < period):
                continue
            self._tick_pending = True
            try:
                self._handle._bp_tick.remote()
            except Exception as exc:  # noqa: BLE001 - the actor is going away
                log.debug("timer of %s stops: %s", self.key, exc)
                return

    # -- inspection and the end ----------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What ``checkpoint_info()`` returns; reads only, safe during a flush."""
        last = self.inc.last_checkpoint
        return {
            "key": self.key,
            "lease_id": self.inc.lease_id,
            "epoch": self.inc.epoch,
            "node_id": self.inc.node_id,
            "pid": self.inc.pid,
            "generation": None if last is None else last.generation,
            "step": None if last is None else last.step,
            "meta": None if last is None else dict(last.meta or {}),
            "last_checkpoint_at": self.inc.last_checkpoint_at,
            "calls_total": self.calls_total,
            "calls_since_checkpoint": self.calls_since,
            "deduplicated": self.deduplicated,
            "failed_checkpoints": self.failures,
            "flushing": self.inc.flushing,
            "async_checkpoint": self.config.async_checkpoint,
            "fenced": self.inc.fenced,
            "stopped": self._closed,
            **self.inc.restored_summary(),
        }

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (the lease is given up)."""
        return self._closed

    def close(self, *, checkpoint: bool) -> CheckpointInfo | None:
        """Optionally checkpoint (if anything changed since the last one), then release the
        lease; twice is harmless. A checkpoint failure propagates after the release."""
        with self.lock:
            if self._closed:
                return None
            self._closed = True
            try:
                if self.inc.drain() is not None:  # the flush in flight failed: still unsaved
                    self._flush_failed = True
                if checkpoint and self.turns.inside:
                    log.warning("%s %r exits with %d call(s) mid-method: no exit checkpoint "
                                "(it would hold their half-applied changes); the next "
                                "incarnation restores the last one", self.config.actor,
                                self.key, self.turns.inside)
                elif (checkpoint and (self.calls_since or self._flush_failed)
                        and not self.inc.fenced):
                    self.inc.state = self._payload()
                    return self.inc.checkpoint(meta={"reason": "exit"})
                return None
            finally:
                self.inc.release()
