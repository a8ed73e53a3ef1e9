"""``@checkpointed``: make an ordinary Ray actor's state survive restarts and node loss.

Ray restarts an actor (``max_restarts``) by running its constructor again: its state is
gone. Placed under ``@ray.remote``, this decorator makes named attributes durable::

    @ray.remote(max_restarts=-1, max_task_retries=-1, concurrency_groups=checkpointed.GROUPS)
    @checkpointed(store="/mnt/shared/bp", state="state", every_calls=100, retention=3)
    class Counter:
        def __init__(self):
            self.state = {"n": 0}          # initial; replaced by the restored state
        def add(self, k):
            self.state["n"] += k
            return self.state["n"]

Why it looks like this:

* **A class, not a mixin**, returned by the decorator: a subclass of the user's class whose
  ``__init__`` runs the user's, then starts the incarnation (:mod:`stages.actors.durability`):
  lease by force (the old incarnation is fenced), restore of the newest generation that
  verifies into the named attributes, ``on_restore(report)`` if defined. No checkpoint yet:
  the constructor's values stand. Public methods are wrapped to count calls and checkpoint
  by policy; ``@checkpointed.readonly`` methods, private (``_x``) ones and generators are
  not (they neither count nor checkpoint: a generator's effects are saved by the next
  checkpoint of a counted call, or an explicit ``self.checkpoint()``).
* **Concurrency groups are declared by the user**, ``concurrency_groups=checkpointed.GROUPS``
  in ``ray.remote``: Ray takes them only there, and a decorator under ``@ray.remote`` runs
  before it. The control methods ``checkpoint_info`` and ``restored_from`` run in that
  group, so they answer while a flush runs; ``checkpoint`` runs in the default group, in
  the actor's turn like every call (a checkpoint requested after a call includes it, and it
  never snapshots the state while a call mutates it). Without ``GROUPS`` Ray refuses calls
  to the control methods. In an **async actor** (any ``async def`` method) ``checkpoint``
  is a coroutine: policy and requested snapshots are taken only when no call is suspended
  half-way through its method (:mod:`stages.actors.durability`); inside a method,
  ``await self.checkpoint()``.
* **Key**: ``key=`` or the actor's name (``.options(name=...)``); neither is an error when
  the actor starts. One lease per key in the store.

Semantics:

* **What each policy keeps** (the table is in ``README.md``, "What each policy keeps").
  A call is *acknowledged* once its caller got the reply, *in flight* if the actor died
  before replying; Ray *retries* an in-flight call under the same task id only on an actor
  it restarts (``max_task_retries``), else the caller may *resend* it. ``every_calls=1`` is
  *exactly-once* for acknowledged calls and Ray's retries: each call commits before it
  returns, and records its task id and result in the same checkpoint, so a retried call
  that had committed returns its recorded result without being applied again
  (:mod:`stages.actors.durability` says why this is exact), and one that had not is
  applied once. ``every_calls=N`` (N >= 2), ``every_seconds=T`` and manual checkpoints
  (``checkpoint()`` only) are *at-most-once for acknowledged calls* - a crash loses those
  since the last committed checkpoint (up to N-1, about T seconds' worth, or all since the
  last ``checkpoint()``; a graceful exit saves them) - and *at-least-once for retried or
  resent calls*, which are applied again on the restored state, twice if that checkpoint
  already held them. A resend under the same ``request_id=`` (:mod:`stages.actors.calls`,
  :func:`~stages.actors.calls.call_once`) is exactly-once in every policy: the id is
  recorded with the call's result and checkpointed with its effect. An id names one call
  (``stages/actors/records.py``): reused by another method or other arguments it is
  refused with ``RequestIdConflict``. The last
  ``dedupe_window`` ids (task ids and request ids together) are kept, and their results
  within ``dedupe_bytes`` (oldest dropped first): a resend among those ids is answered from
  the record, or refused with ``ResultNotKept`` once its result was dropped - never applied
  again. A call with a request id that raises leaves nothing in every policy (memory is put
  back, and the lease too if the call checkpointed half-way; ``stages/actors/dispatch.py``
  states the cost: one in-memory pickle of the whole state before each such call outside
  ``every_calls=1``, and the exceptions: a call that another ran beside, or that died after
  a checkpoint inside it, is not undone and its resend is refused). A result that does not
  pickle is refused (``CheckpointEncodeError``, the call undone). In an async actor a
  synchronous method called while a call that runs alone is mid-method is refused
  (``SyncCallRefused``, nothing applied): it cannot wait on the event loop.
* **Calls in flight** when the actor dies fail with ``RayActorError`` unless Ray retries
  them (``max_task_retries``); retried calls run on the restored state, and Ray may run
  them after calls submitted later (its ordering is per attempt, not across retries).
* **Killed mid-flush**: the checkpoint is crash-atomic, so the next incarnation restores the
  previous committed generation (or the new one if its header had been committed) - never a
  mix. The call that was flushing had not returned, so in exactly-once mode it is retried.
* **Graceful exit** (``ray.actor.exit_actor()``, ``actor.__ray_terminate__.remote()``,
  handles going out of scope): Ray calls ``__ray_shutdown__``; the decorator calls the
  user's one first, then checkpoints if anything changed, then releases the lease.
  ``ray.kill`` and crashes skip this: the next incarnation restores the last checkpoint.
* **Fail-closed**: a checkpoint that cannot be written raises ``CheckpointFailed`` from the
  call that triggered it; an unpicklable state fails the first checkpoint that way. An
  incarnation whose checkpoint was refused for a stale epoch (a zombie) raises
  ``ActorFenced`` for every later call.
* **Scheduler integration** (``registrar=``): every incarnation registers like a stage, and
  the actor answers the stage control calls the scheduler makes (``info``, ``ping``,
  ``registration`` in the control group, ``shutdown``), so preemption waits for its flushes
  (pass the scheduler's flush observer as ``observer=``) and preemption by resources counts
  what the actor holds. The registration carries a relaunch recipe
  (:class:`~stages.actors.recipe.ActorRecipe`: the class, the constructor's arguments, name,
  resources, concurrency), persisted with the scheduler's registry, so **the scheduler
  re-creates a lost actor** on another live node through the placement path stages use;
  the new incarnation takes the lease by force (the old one is fenced) and restores.
  Who re-creates it: an actor with ``max_restarts=0`` (Ray's default) is re-created by the
  scheduler when Ray records it dead from a failure (its node or its worker process died);
  one with ``max_restarts != 0`` is left to Ray (the scheduler never starts a second
  incarnation of an actor Ray may restart), and one that ended on purpose (``ray.kill``,
  its owner exited, out of scope, a graceful exit - which also unregisters it) is not
  re-created. A named actor keeps its name; callers holding the old handle get
  ``RayActorError`` and look it up again (``ray.get_actor(name)``). Declare your own
  concurrency groups to the decorator as well (``concurrency_groups=``) so that a
  re-created actor has them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import ray

from blockstore import BlockStore, parse_store_url

from .actor import CONTROL_GROUP, CONTROL_CONCURRENCY, ray_context
from .actor import resources_held
from .calls import REQUEST_ID, check_request_id, takes_request_id, with_request_id
from .config import CheckpointedConfig
from .durability import ActorDurability
from ..checkpoint.incremental import DEFAULT_FULL_EVERY
from ..errors import StageError
from ..checkpoint.format import CODECS
from .hooks import StageRegistrar, StageRegistration
from .incarnation import register_quietly
from ..checkpoint.observer import CheckpointFlushObserver
from .recipe import recipe_for
from .records import DEFAULT_RESULT_BYTES

__all__ = ["CheckpointedConfig", "CheckpointedConfigError", "checkpointed"]

C = TypeVar("C", bound=type)

log = logging.getLogger(__name__)

_ALWAYS = ("checkpoint", "checkpoint_info", "restored_from", "checkpoint_lock", "_bp_tick",
           "_bp_durable")
#: Seconds a graceful exit waits for the scheduler to forget the actor.
_UNREGISTER_TIMEOUT_S = 5.0
_STAGE_CONTROL = ("info", "ping", "registration", "shutdown")


class CheckpointedConfigError(StageError, ValueError):
    """``@checkpointed`` was misused: bad arguments, a name clash with the generated methods,
    a state attribute naming a method, or no key (neither ``key=`` nor an actor name).

    Attributes:
        actor: the decorated class's name.
    """

    def __init__(self, message: str, *, actor: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor


def _fail(cls: type, message: str) -> CheckpointedConfigError:
    return CheckpointedConfigError(f"@checkpointed on {cls.__name__}: {message}",
                                   actor=cls.__name__)


def _attr_names(cls: type, state: str | tuple[str, ...]) -> tuple[str, ...]:
    names = (state,) if isinstance(state, str) else tuple(state)
    if not names or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise _fail(cls, f"state must be an attribute name or a tuple of them, got {state!r}")
    for n in names:
        raw = inspect.getattr_static(cls, n, None)
        if inspect.isfunction(raw) or isinstance(raw, (property, staticmethod, classmethod)):
            raise _fail(cls, f"state attribute {n!r} names a method or property of the class")
        if n.startswith("__") or n in _ALWAYS:
            raise _fail(cls, f"state attribute {n!r} is reserved")
    if len(set(names)) != len(names):
        raise _fail(cls, f"state names an attribute twice: {names!r}")
    return names


def _check_numbers(cls: type, every_calls: int | None, every_seconds: float | None,
                   retention: int, codec: str, dedupe_window: int) -> None:
    if every_calls is not None and (not isinstance(every_calls, int) or every_calls < 1):
        raise _fail(cls, f"every_calls must be an int >= 1 or None, got {every_calls!r}")
    if every_seconds is not None and not every_seconds > 0:
        raise _fail(cls, f"every_seconds must be > 0 or None, got {every_seconds!r}")
    if not isinstance(retention, int) or retention < 2:
        raise _fail(cls, f"retention must be an int >= 2, got {retention!r}")
    if codec not in CODECS:
        raise _fail(cls, f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    if not isinstance(dedupe_window, int) or dedupe_window < 1:
        raise _fail(cls, f"dedupe_window must be an int >= 1, got {dedupe_window!r}")


def _check_groups(cls: type, groups: Mapping[str, int] | None,
                  registrar: StageRegistrar | None) -> dict[str, int]:
    """The user's concurrency groups, checked; with a registrar every group a method names
    must be declared (a re-created actor would refuse calls to it otherwise)."""
    out = dict(groups or {})
    for name, size in out.items():
        if not isinstance(name, str) or not isinstance(size, int) or size < 1:
            raise _fail(cls, f"concurrency_groups must map names to ints >= 1, got {groups!r}")
    if CONTROL_GROUP in out:
        raise _fail(cls, f"concurrency group {CONTROL_GROUP!r} is the decorator's own")
    if registrar is not None:
        for attr in dir(cls):
            group = getattr(inspect.getattr_static(cls, attr, None),
                            "__ray_concurrency_group__", None)
            if group is not None and group != CONTROL_GROUP and group not in out:
                raise _fail(cls, f"method {attr!r} runs in concurrency group {group!r}: "
                                 "declare it in concurrency_groups= too, so that an actor "
                                 "the scheduler re-creates has it")
    return out
def _check_async(cls: type, async_checkpoint: bool, every_calls: int | None,
                 every_seconds: float | None) -> None:
    if not isinstance(async_checkpoint, bool):
        raise _fail(cls, f"async_checkpoint must be a bool, got {async_checkpoint!r}")
    if not async_checkpoint:
        return
    if every_calls == 1:
        raise _fail(cls, "async_checkpoint=True cannot be combined with every_calls=1: "
                         "exactly-once mode commits each call's checkpoint before the call "
                         "returns, which a background flush does not; use every_calls >= 2 "
                         "or every_seconds for asynchronous checkpoints")
    if every_calls is None and every_seconds is None:
        raise _fail(cls, "async_checkpoint=True applies to policy checkpoints: set "
                         "every_calls (>= 2) or every_seconds (an on-demand checkpoint() is "
                         "always synchronous)")


def _durability(obj: Any) -> ActorDurability:
    d = getattr(obj, "_bp_durable", None)
    if d is None:
        raise StageError(f"{type(obj).__name__}: not started yet (checkpoint control used "
                         "inside __init__)")
    return d


def _request_id(self: Any, kwargs: dict[str, Any]) -> str | None:
    """Pop the caller's ``request_id=`` (``stages/actors/calls.py``), checked."""
    rid = kwargs.pop(REQUEST_ID, None)
    return None if rid is None else check_request_id(rid, type(self).__name__)


def _wrap(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """The call wrapper of the public method ``name`` (sync or async); it takes
    ``request_id=``. A request id is recorded for ``name``, the method as called, not
    ``fn.__name__`` (a factory's or an undecorated wrapper's functions share theirs)."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
            rid = _request_id(self, kwargs)
            d = getattr(self, "_bp_durable", None)
            if d is None:
                return await fn(self, *args, **kwargs)
            with d.outer_call() as outer:
                if not outer:
                    return await fn(self, *args, **kwargs)
                return await d.call_async(fn, self, args, kwargs, rid, method=name)
        with_request_id(fn, acall)
        return acall

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        rid = _request_id(self, kwargs)
        d = getattr(self, "_bp_durable", None)
        if d is None:
            return fn(self, *args, **kwargs)
        with d.outer_call() as outer:
            if not outer:
                return fn(self, *args, **kwargs)
            return d.call(fn, self, args, kwargs, rid, method=name)
    with_request_id(fn, call)
    return call


def _wrapped_methods(cls: type) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if not inspect.isfunction(raw) or getattr(raw, "__bp_readonly__", False):
            continue
        if inspect.isgeneratorfunction(raw) or inspect.isasyncgenfunction(raw):
            continue  # generators stream after returning: no point to count or commit at
        if takes_request_id(raw):
            raise _fail(cls, f"method {name!r} has a parameter {REQUEST_ID!r}, the keyword "
                             "@checkpointed reserves for idempotency keys (rename it)")
        out[name] = _wrap(raw, name)
    return out


def _start(obj: Any, config: CheckpointedConfig, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> ActorDurability:
    """Start the incarnation of ``obj`` (after its ``__init__``); register if asked, with
    the recipe to re-create it from (``args``/``kwargs``: its constructor's arguments)."""
    node_id, handle = ray_context()
    key = config.key
    if key is None and handle is not None:
        key = ray.get_runtime_context().get_actor_name() or None
    if not key:
        raise CheckpointedConfigError(
            f"@checkpointed on {config.actor}: no lease key - pass key=... or create the "
            "actor with .options(name=...)", actor=config.actor)
    d = ActorDurability(obj, config, key, handle=handle, node_id=node_id)
    if config.registrar is not None:
        if handle is not None:
            d.resources = resources_held(ray.get_runtime_context().get_assigned_resources())
            d.recipe = recipe_for(obj, config, key, args, kwargs)
        register_quietly(config.registrar, _registration(d, handle), key)
    return d


def _registration(d: ActorDurability, handle: Any) -> StageRegistration:
    last = d.inc.last_checkpoint
    recipe = d.recipe
    return StageRegistration(
        stage_id=d.key, actor=handle, node_id=d.inc.node_id, priority=d.config.priority,
        lease_id=d.inc.lease_id, epoch=d.inc.epoch, resources=d.resources,
        generation=None if last is None else last.generation,
        step=None if last is None else last.step, pid=d.inc.pid, spec=recipe)


def _is_async(cls: type) -> bool:
    """Ray's test for an async actor: any method is a coroutine (or async generator)."""
    return any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m)
               for _, m in inspect.getmembers(cls, inspect.isfunction))


def _check_sync_groups(cls: type) -> None:
    """An async actor's synchronous methods must share the one concurrency group of its
    coroutines: Ray runs each group on its own thread, and a sync method on another thread
    would run outside the runtime's turns (a rollback or a snapshot beside it would undo it
    or commit it half-run; see README "Exactly-once calls")."""
    if not _is_async(cls):
        return
    coro: set[str | None] = set()
    sync: list[tuple[str, str | None]] = []
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("__") or isinstance(inspect.getattr_static(cls, name, None),
                                               (staticmethod, classmethod)):
            continue
        group = getattr(fn, "__ray_concurrency_group__", None)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            coro.add(group)
        else:
            sync.append((name, group))
    for name, group in sync:
        if coro - {group}:
            where = "the default group" if group is None else f"concurrency group {group!r}"
            theirs = ", ".join("the default group" if g is None else repr(g)
                               for g in sorted(coro, key=str))
            raise _fail(cls, f"synchronous method {name!r} runs in {where} but the actor's "
                             f"coroutines run in {theirs}: Ray runs it on another thread, "
                             "outside the calls' turns, so a rollback or a snapshot could "
                             f"undo it or save it half-run. Make {name!r} `async def`, or "
                             "put it in the same concurrency group as the coroutines")


def _control(fn: Callable[..., Any]) -> Callable[..., Any]:
    return ray.method(concurrency_group=CONTROL_GROUP)(fn)


def _generated(cls: type, config: CheckpointedConfig) -> dict[str, Any]:
    """The methods the decorator adds (see the module docstring)."""
    user_init = cls.__init__
    user_shutdown = getattr(cls, "__ray_shutdown__", None)

    @functools.wraps(user_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        user_init(self, *args, **kwargs)
        self._bp_durable = _start(self, config, args, kwargs)

    def checkpoint(self: Any, step: int = 0, meta: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
        """Checkpoint now (inside a method, or ``actor.checkpoint.remote()``); returns the
        ``CheckpointInfo`` as a dict. Raises ``CheckpointFailed`` if not saved."""
        d = _durability(self)
        if d.inside_call():
            return d.checkpoint_inside(step, meta)
        return d.request(step, meta)

    async def checkpoint_async_actor(self: Any, step: int = 0,
                                     meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Checkpoint at a point where no other call is mid-method (an async actor: see
        :mod:`stages.actors.durability`); returns the ``CheckpointInfo`` as a dict. Raises
        ``CheckpointFailed`` if not saved. Inside a method: ``await self.checkpoint()``."""
        d = _durability(self)
        return await d.request_async(step, meta, inside=d.inside_call())
    checkpoint_async_actor.__name__ = checkpoint_async_actor.__qualname__ = "checkpoint"

    def checkpoint_info(self: Any) -> dict[str, Any]:
        """Epoch, last generation, counters, restore report; answers during a flush."""
        return _durability(self).info()

    def restored_from(self: Any) -> int | None:
        """The generation this incarnation restored, None if it started from __init__."""
        return _durability(self).info()["restored_from"]

    def _bp_tick(self: Any) -> None:
        _durability(self).tick()

    def __ray_shutdown__(self: Any) -> None:
        if user_shutdown is not None:
            user_shutdown(self)
        d = getattr(self, "_bp_durable", None)
        if d is None or d.closed:
            return
        try:
            d.close(checkpoint=config.checkpoint_on_exit)
        finally:
            if config.registrar is not None:  # ended on purpose: not to be re-created
                try:
                    config.registrar.unregister(d.key, timeout=_UNREGISTER_TIMEOUT_S)
                except Exception as exc:  # noqa: BLE001 - a missing scheduler is not fatal
                    log.warning("%s could not unregister: %s", d.key, exc)

    def checkpoint_lock(self: Any) -> Any:
        """The lock the snapshot is taken under; a threaded actor mutates its state
        attributes holding it (see :mod:`stages.actors.durability`)."""
        return _durability(self).lock

    ns: dict[str, Any] = {
        "__init__": __init__,
        "checkpoint": checkpoint_async_actor if _is_async(cls) else checkpoint,
        "checkpoint_info": _control(checkpoint_info),
        "restored_from": _control(restored_from), "_bp_tick": _bp_tick,
        "__ray_shutdown__": __ray_shutdown__, "checkpoint_lock": property(checkpoint_lock),
    }
    if config.registrar is not None:
        ns.update(_stage_control())
    return ns


def _stage_control() -> dict[str, Any]:
    """The calls a scheduler makes on a registered stage (``scheduler/`` calls them by these
    names on every registered actor), answered from the actor's durability."""

    def info(self: Any) -> dict[str, Any]:
        d = _durability(self).info()
        return {**d, "stage_id": d["key"], "records_since_checkpoint": d["calls_since_checkpoint"],
                "records_total": d["calls_total"], "aligned": False}

    def ping(self: Any) -> str:
        return _durability(self).key

    def registration(self: Any) -> StageRegistration:
        d = _durability(self)
        return _registration(d, ray_context()[1])

    def shutdown(self: Any, checkpoint: bool = False, step: int = 0,
                 meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
        info = _durability(self).close(checkpoint=checkpoint)
        return None if info is None else info.to_dict()

    return {"info": _control(info), "ping": _control(ping),
            "registration": _control(registration), "shutdown": shutdown}


class _Checkpointed:
    """The ``checkpointed`` decorator (an object, to carry ``GROUPS`` and ``readonly``)."""

    #: Pass to ``ray.remote(concurrency_groups=...)`` (merge with your own groups).
    GROUPS: Mapping[str, int] = {CONTROL_GROUP: CONTROL_CONCURRENCY}
    CONTROL_GROUP = CONTROL_GROUP

    @staticmethod
    def readonly(fn: Callable[..., Any]) -> Callable[..., Any]:
        """Mark a method that does not change the state: it neither counts as a call nor
        triggers a checkpoint (nor is it deduplicated in exactly-once mode)."""
        fn.__bp_readonly__ = True  # type: ignore[attr-defined]
        return fn

    def __call__(self, *, store: str | os.PathLike[str], state: str | tuple[str, ...] = "state",
                 key: str | None = None, every_calls: int | None = None,
                 every_seconds: float | None = None, retention: int = 2,
                 codec: str = "pickle", compression: str = "auto", level: int = 3,
                 mac_key: bytes | str | None = None, registrar: StageRegistrar | None = None,
                 observer: CheckpointFlushObserver | None = None, lease_ttl: float = 10.0,
                 block_size: int | None = None, priority: int = 0, dedupe_window: int = 1024,
                 checkpoint_on_exit: bool = True,
                 concurrency_groups: Mapping[str, int] | None = None,
                 async_checkpoint: bool = False, incremental: bool = False,
                 full_every: int = DEFAULT_FULL_EVERY,
                 dedupe_bytes: int = DEFAULT_RESULT_BYTES,
                 max_state_bytes: int | None = None) -> Callable[[C], C]:
        """Make the attributes ``state`` of the decorated actor class durable.

        Args:
            store: store URL or path every node reaches (``file://``, a shared path).
            state: the attribute name, or a tuple of names, to checkpoint and restore.
            key: lease name; default the actor's name (an error at start if neither).
            every_calls: checkpoint after every N calls; 1 is exactly-once mode (every
                acknowledged call kept); N >= 2 loses the acknowledged calls since the last
                checkpoint on a crash (see "What each policy keeps" above).
            every_seconds: checkpoint when this much time passed since the last one (in the
                actor's turn: at the next call, or by the timer's request when idle).
            retention, codec, compression, level, mac_key: as ``CheckpointedStageState``
                takes them (``mac_key`` is its ``key``). ``mac_key`` never leaves this
                process's incarnations: the relaunch recipe a registrar persists carries no
                key, so an incarnation the scheduler re-creates reads
                ``$BLOCKPOINT_CHECKPOINT_KEY`` from its environment (``recipe.py``); prefer
                the environment variable with ``registrar=``.
            registrar: register every incarnation (e.g. ``scheduler.SchedulerRegistrar``),
                with the recipe the scheduler re-creates a lost actor from.
            observer: flush observer (e.g. the scheduler's), told of every flush; an
                incarnation the scheduler re-creates uses it too.
            lease_ttl, block_size: the lease's TTL; the block size if the store is created.
            priority: the priority registered with the scheduler.
            dedupe_window: call ids remembered (task ids and request ids together).
            dedupe_bytes: bytes of recorded results kept within those (their pickled size;
                default 1 MiB), oldest dropped first, the newest always kept: every
                checkpoint carries them. A resend of a call whose result was dropped is
                refused with ``ResultNotKept``, never applied again.
            checkpoint_on_exit: checkpoint on a graceful exit if anything changed.
            concurrency_groups: your own groups, as given to ``ray.remote`` besides
                ``GROUPS`` (the scheduler declares them when it re-creates the actor).
            async_checkpoint: policy checkpoints (``every_calls`` >= 2, ``every_seconds``)
                take a snapshot in the call's turn and flush in the background, so the call
                returns without waiting for the disk (see :mod:`stages.actors.durability`). Refused
                with ``every_calls=1`` (exactly-once needs the commit before the return).
            incremental, full_every: rewrite only the chunks that changed since the last
                generation this incarnation wrote or restored; every ``full_every``-th
                checkpoint is full (``stages/checkpoint/incremental.py``).
            max_state_bytes: the restore's bound on the state a generation may declare
                (``CheckpointTooLarge``; ``None``: the default, ``docs/FORMAT.md`` 2.7).

        Raises:
            CheckpointedConfigError: at decoration, for bad arguments or name clashes.
            StoreURLError: at decoration, for a malformed ``store`` URL (one carrying
                credentials included; the error masks them).
        """
        def decorate(cls: C) -> C:
            if not inspect.isclass(cls) or hasattr(cls, "remote"):
                raise CheckpointedConfigError(
                    "@checkpointed decorates a plain class; put it *under* @ray.remote")
            if isinstance(store, BlockStore) or not os.fspath(store):
                raise _fail(cls, f"store must be a non-empty URL or path, got {store!r}")
            parse_store_url(store)  # StoreURLError (secrets masked) before the URL is kept
            attrs = _attr_names(cls, state)
            _check_numbers(cls, every_calls, every_seconds, retention, codec, dedupe_window)
            groups = _check_groups(cls, concurrency_groups, registrar)
            _check_sync_groups(cls)
            _check_async(cls, async_checkpoint, every_calls, every_seconds)
            if not isinstance(full_every, int) or isinstance(full_every, bool) or full_every < 1:
                raise _fail(cls, f"full_every must be an int >= 1, got {full_every!r}")
            if (not isinstance(dedupe_bytes, int) or isinstance(dedupe_bytes, bool)
                    or dedupe_bytes < 0):
                raise _fail(cls, f"dedupe_bytes must be an int >= 0, got {dedupe_bytes!r}")
            taken = _ALWAYS + (_STAGE_CONTROL if registrar is not None else ())
            clash = [n for n in taken if inspect.getattr_static(cls, n, None) is not None]
            if clash:
                raise _fail(cls, f"the class defines {clash}, which the decorator adds")
            config = CheckpointedConfig(
                actor=cls.__name__, store=os.fspath(store), attrs=attrs, state_arg=state,
                key=key, every_calls=every_calls, every_seconds=every_seconds,
                retention=retention, codec=codec, compression=compression, level=level,
                mac_key=mac_key, registrar=registrar, observer=observer, lease_ttl=lease_ttl,
                block_size=block_size, priority=priority, dedupe_window=dedupe_window,
                checkpoint_on_exit=checkpoint_on_exit, concurrency_groups=groups,
                async_checkpoint=async_checkpoint, incremental=bool(incremental),
                full_every=full_every, dedupe_bytes=dedupe_bytes,
                max_state_bytes=max_state_bytes)
            ns = {**_wrapped_methods(cls), **_generated(cls, config)}
            ns.update(__module__=cls.__module__, __qualname__=cls.__qualname__,
                      __doc__=cls.__doc__, __bp_config__=config)
            return type(cls.__name__, (cls,), ns)  # type: ignore[return-value]
        return decorate


#: The decorator; see the module docstring. ``checkpointed.GROUPS`` and
#: ``checkpointed.readonly`` go with it.
checkpointed = _Checkpointed()
