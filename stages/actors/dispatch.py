"""How one call of a ``@checkpointed`` actor runs: deduplicated by its key, and in
exactly-once mode (``every_calls=1``) committed before it returns or rolled back if it raises.

Split out of :mod:`stages.actors.durability` (whose module docstring states the rules these
methods keep: one call at a time in exactly-once mode, rollback after a call that raises, a
commit of unknown outcome recognised by the call's recorded key).

**A call with a request id that raises leaves nothing, in every policy.** In exactly-once
mode the rollback reloads the lease (memory equals the last commit there). In the other
policies memory is ahead of the lease - the calls since the last checkpoint exist only in
memory - so a reload would lose them; instead the named attributes are pickled in memory
*before* such a call runs, and put back if it raises (:meth:`CallDispatch._snapshot_attrs`).
The cost, paid only by calls that carry a ``request_id`` in those policies: one pickle of
the state before the method and, when it raises, one unpickle - about the time a checkpoint
spends serializing (no I/O, no compression). Calls without a request id are not resent under
an id, so they pay nothing and are not rolled back. A synchronous call holds the lock for its
whole run (threads mutate the state under it); a coroutine call runs alone
(:meth:`~stages.actors.turns.CallTurns.enter_alone`), and if the hold gave way to another
call meanwhile (it ran more than ``HOLD_S`` beside arriving calls) the snapshot is not put
back over that call's change: the raise is then not rolled back, and says so in the log. :class:`CallDispatch` is a
mixin of :class:`~stages.actors.durability.ActorDurability`: it holds no state of its own and
works on the runtime's lock, applied-call record, incarnation and checkpoints.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import pickle
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import ray

from ..errors import CheckpointCommitUnknown, CheckpointEncodeError, CheckpointFailed
from .records import REQUEST_PREFIX, AppliedCalls, fingerprint

if TYPE_CHECKING:
    from .config import CheckpointedConfig
    from .incarnation import Incarnation
    from .turns import CallTurns

__all__ = ["CallDispatch", "in_call"]

log = logging.getLogger(__name__)


#: Set while a wrapped call runs, so that a method calling another one of the same actor
#: counts (and is deduplicated) once, as the outer call.
in_call: contextvars.ContextVar[bool] = contextvars.ContextVar("bp_in_call", default=False)


def _task_id() -> str | None:
    """Ray's id of the running task (the same across Ray's retries of it), else None."""
    if not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_task_id()
    except Exception:  # noqa: BLE001 - not inside a Ray worker (plain use)
        return None


def _call_key(request_id: str | None = None) -> str:
    """The key a call is recorded under: the caller's request id (``stages/actors/calls.py``),
    else Ray's task id, else (plain use, no task) a fresh one, so that a commit of unknown
    outcome can still be recognised. Prefixes keep the three apart."""
    if request_id is not None:
        return f"{REQUEST_PREFIX}{request_id}"
    return _task_id() or f"local:{uuid.uuid4().hex}"


class CallDispatch:
    """The calls of one ``@checkpointed`` incarnation (a mixin of ``ActorDurability``, which
    defines the attributes below and ``check_serving``, ``checkpoint``, ``_due_checkpoint``,
    ``_adopt`` and ``exact``)."""

    config: CheckpointedConfig
    key: str
    lock: threading.RLock
    inc: Incarnation
    turns: CallTurns
    applied: AppliedCalls
    calls_total: int
    calls_since: int
    deduplicated: int
    _active: int
    _dirty: bool
    _initial: bytes | None


    _obj: Any

    # -- calls ---------------------------------------------------------------------------
    def _snapshot_attrs(self) -> bytes | None:
        """The named attributes, pickled (policy mode, before a call with a request id), or
        ``None`` if they do not pickle (the call then runs without a rollback; the next
        checkpoint reports the state that does not pickle)."""
        try:
            return pickle.dumps({n: getattr(self._obj, n) for n in self.config.attrs},
                                protocol=5)
        except Exception as exc:  # noqa: BLE001 - whatever a __reduce__ raises
            log.warning("%s %r: the state does not pickle (%s): a call that raises cannot "
                        "be rolled back", self.config.actor, self.key, exc)
            return None

    def _restore_attrs(self, snapshot: bytes | None) -> None:
        """Put back what :meth:`_snapshot_attrs` took (nothing if it took nothing)."""
        if snapshot is None:
            return
        for name, value in pickle.loads(snapshot).items():
            setattr(self._obj, name, value)

    def _record(self, call_id: str | None, result: Any, fp: str | None = None) -> None:
        self.calls_total += 1
        self.calls_since += 1
        if call_id is not None:
            self.applied.record(call_id, result, fp)

    # -- exactly-once calls (every_calls=1) ----------------------------------------------
    def _exact_begin(self, key: str, fp: str | None) -> tuple[bool, Any]:
        """Before the user's method, holding the call's turn: ``(True, recorded result)``
        for a call already applied, else ``(False, None)``. Memory left ahead of the lease
        by a failed rollback is reloaded first (``CheckpointFailed`` if it cannot be).
        ``RequestIdConflict`` if the key was recorded for another call than ``fp``."""
        self.check_serving()
        if self._dirty:
            self._reload()
        done, result = self.applied.lookup(key, fp)
        if done:
            self.deduplicated += 1
        return done, result

    def _exact_raised(self) -> None:
        """The user's method raised: put memory back to the last committed state, so that
        the next call's checkpoint cannot commit half of this one. A reload that fails is
        logged and retried before the next call (which fails if it fails again)."""
        try:
            self._reload()
        except Exception as exc:  # noqa: BLE001 - the user's exception is what propagates
            log.warning("%s %r: could not roll back after a call raised (retried before "
                        "the next call): %s: %s", self.config.actor, self.key,
                        type(exc).__name__, exc)

    def _exact_commit(self, key: str, result: Any, fp: str | None) -> Any:
        """Record the call and commit it before it returns; the value to return.

        A failed commit reloads memory from the lease (it never runs ahead of what is
        durable). If the outcome was unknown (``CheckpointCommitUnknown``: the store raised
        after the generation may have landed) and the reloaded state holds this call's key,
        the call *was* committed: the lease is flushed once more and the recorded result
        returned instead of an error (a resend would get it anyway)."""
        self._record(key, result, fp)
        try:
            self.checkpoint(meta={"reason": "call"})
        except CheckpointFailed as exc:
            if self.inc.fenced:
                raise
            try:
                self._reload()
            except Exception as reload_exc:  # noqa: BLE001 - report the commit's failure
                raise exc from reload_exc
            if isinstance(exc, CheckpointEncodeError) and not _picklable(result):
                raise CheckpointEncodeError(
                    f"{self.config.actor} {self.key!r}: the call's result cannot be recorded "
                    f"(every checkpoint keeps the answers of the calls it holds): "
                    f"{type(result).__qualname__} objects cannot be pickled; return plain "
                    f"data. Nothing was committed", lease_id=exc.lease_id) from exc
            if not (isinstance(exc, CheckpointCommitUnknown) and key in self.applied):
                raise
            try:
                self.inc.lease.flush()
            except Exception as flush_exc:  # noqa: BLE001 - still unknown
                raise exc from flush_exc
            log.info("%s %r: the commit reported unknown had landed; call answered",
                     self.config.actor, self.key)
            self.calls_since = 0
            self._initial = None
            return self.applied.result(key)
        self._initial = None  # the lease holds a generation now: the rollback target
        return result

    def _reload(self) -> None:
        """Memory := the last committed state: the lease's newest generation that verifies,
        or the constructor's state (kept pickled until the first commit) if there is none.
        Raises what the restore raises; memory is then marked to be reloaded again."""
        self._dirty = True
        try:
            css = self.inc.bind()
        except CheckpointFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - StoreError, corrupt lease: fail-closed
            raise CheckpointFailed(
                f"{self.config.actor} {self.key!r}: memory could not be reloaded from the "
                f"lease: {type(exc).__name__}: {exc}", lease_id=self.inc.lease_id) from exc
        if css.restored is None and self._initial is not None:
            css.state = pickle.loads(self._initial)
        self._adopt(css.state)
        self._dirty = False

    def _recorded(self, key: str | None, fp: str | None) -> tuple[bool, Any]:
        """Policy mode, under :attr:`lock`: ``(True, result)`` if a call with this request
        key was applied (in memory, or restored from a checkpoint that held it);
        ``RequestIdConflict`` if it was recorded for another call than ``fp``."""
        done, result = self.applied.lookup(key, fp)
        if done:
            self.deduplicated += 1
        return done, result

    def call(self, fn: Callable[..., Any], obj: Any, args: tuple[Any, ...],
             kwargs: dict[str, Any], request_id: str | None = None) -> Any:
        """Run one synchronous call under the policy (see the module docstring)."""
        self.check_serving()
        fp = None if request_id is None else fingerprint(fn.__name__, args, kwargs)
        if not self.exact:
            key = None if request_id is None else _call_key(request_id)
            with self.lock:
                done, recorded = self._recorded(key, fp)
                if done:
                    return recorded
                if key is not None:  # one at a time per id: a resend waits for the first
                    before = self._snapshot_attrs()
                    try:
                        result = fn(obj, *args, **kwargs)
                    except BaseException:
                        self._restore_attrs(before)  # a resend finds the state unchanged
                        raise
                    self._record(key, result, fp)
                    self._due_checkpoint()
                    return result
            result = fn(obj, *args, **kwargs)
            with self.lock:
                self._record(None, result)
                self._due_checkpoint()
            return result
        key = _call_key(request_id)
        with self.lock:
            done, recorded = self._exact_begin(key, fp)
            if done:
                return recorded
            try:
                result = fn(obj, *args, **kwargs)
            except BaseException:
                self._exact_raised()
                raise
            return self._exact_commit(key, result, fp)

    async def call_async(self, fn: Callable[..., Awaitable[Any]], obj: Any,
                         args: tuple[Any, ...], kwargs: dict[str, Any],
                         request_id: str | None = None) -> Any:
        """Run one coroutine call under the policy (see the module docstring)."""
        self.check_serving()
        fp = None if request_id is None else fingerprint(fn.__name__, args, kwargs)
        if not self.exact:
            key = None if request_id is None else _call_key(request_id)
            done, recorded = await self.turns.claim(key, lambda k: self._recorded(k, fp))
            if done:
                return recorded
            try:
                if key is None:
                    await self.turns.enter(self._due_checkpoint)
                    try:
                        result = await fn(obj, *args, **kwargs)
                    finally:
                        self.turns.leave()
                else:
                    result = await self._alone(fn, obj, args, kwargs)
                with self.lock:
                    self._record(key, result, fp)
                    self._due_checkpoint()
                return result
            finally:
                self.turns.release(key)
        key = _call_key(request_id)
        async with self._one_at_a_time():
            with self.lock:
                done, recorded = self._exact_begin(key, fp)
            if done:
                return recorded
            try:
                result = await fn(obj, *args, **kwargs)
            except BaseException:
                with self.lock:
                    self._exact_raised()
                raise
            with self.lock:
                return self._exact_commit(key, result, fp)

    async def _alone(self, fn: Callable[..., Awaitable[Any]], obj: Any,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A coroutine call with a request id in policy mode: alone, rolled back if it
        raises (unless another call came in beside it: see the module docstring)."""
        entered = await self.turns.enter_alone(self._due_checkpoint)
        try:
            with self.lock:
                before = self._snapshot_attrs()
            try:
                return await fn(obj, *args, **kwargs)
            except BaseException:
                with self.lock:
                    if self.turns.entries == entered:
                        self._restore_attrs(before)
                    else:
                        log.warning("%s %r: a call with a request id raised after other "
                                    "calls ran beside it (it ran longer than the hold): "
                                    "not rolled back", self.config.actor, self.key)
                raise
        finally:
            self.turns.leave_alone()

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self) -> AsyncIterator[None]:
        """Exactly-once coroutine calls, one at a time and in arrival order, whichever
        event loop runs them (each concurrency group has its own: one ``asyncio.Lock``
        cannot serve two - it raises 'bound to a different event loop')."""
        async with self.turns.one_at_a_time():
            self._active += 1
            try:
                yield
            finally:
                self._active -= 1

    @staticmethod
    def inside_call() -> bool:
        """True inside a wrapped call of this task (a method calling ``self.checkpoint()``)."""
        return in_call.get()

    @contextlib.contextmanager
    def outer_call(self) -> Iterator[bool]:
        """Yield True for the outermost wrapped call of a task (nested ones are plain)."""
        if in_call.get():
            yield False
            return
        token = in_call.set(True)
        try:
            yield True
        finally:
            in_call.reset(token)


def _picklable(value: Any) -> bool:
    """``value`` pickles (as a checkpoint records it)."""
    try:
        pickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001 - whatever its __reduce__ raises
        return False
    return True
