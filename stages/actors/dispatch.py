"""How one call of a ``@checkpointed`` actor runs: deduplicated by its key, and in
exactly-once mode (``every_calls=1``) committed before it returns or rolled back if it raises.

Split out of :mod:`stages.actors.durability` (whose module docstring states the rules these
methods keep: one call at a time in exactly-once mode, rollback after a call that raises, a
commit of unknown outcome recognised by the call's recorded key).

**A call with a request id that raises leaves nothing, in every policy.** In exactly-once
mode the rollback reloads the lease (memory equals the last commit there; a
``self.checkpoint()`` inside the call is coalesced, so the lease never holds half of it).
In the other policies memory is ahead of the lease - the calls since the last checkpoint
exist only in memory - so a reload would lose them; instead the named attributes are
pickled in memory *before* such a call runs, and put back if it raises
(:meth:`CallDispatch._snapshot_attrs`); if the call committed a checkpoint half-way, the
rolled-back state is committed too (:meth:`CallDispatch._roll_back`), and that half-way
checkpoint held the call's id as *in progress*, so that if the actor dies before the call
ends the resend is refused (``ResultNotKept``) rather than applied on top of the half.

**The cost**, paid only by calls that carry a ``request_id`` outside ``every_calls=1``: one
pickle of the whole named state before the method, and that much memory more while it runs
(measured, review 19 R10: a 200 MiB numpy state, 133 ms a call with an id against 0.17 ms
without, +300 MiB peak), and one unpickle when it raises. A cheaper rollback is not safe in
general (the method may change anything in place); ``README.md`` says what to do with a
large state. Calls without a request id are not resent under an id, so they pay nothing and
are not rolled back.

**Who may run beside it.** A synchronous call holds the lock for its whole run (threads
mutate the state under it). A coroutine call runs alone
(:meth:`~stages.actors.turns.CallTurns.enter_alone`); if the hold gave way to another
coroutine call meanwhile (it ran more than ``HOLD_S`` beside arriving calls), the snapshot
is not put back over that call's change: the raise is not rolled back, the log says so, and
its id is recorded as such, a resend refused (``ResultNotKept``). A *synchronous* method of
an async actor runs on the event loop and cannot wait: called while a call that runs alone
is mid-method (this one, or any coroutine call in exactly-once mode, whose commit would
otherwise carry that call's half), it is refused with :class:`SyncCallRefused`, nothing
applied.

**Results are recorded or the call is refused.** A result that does not pickle could be in
no checkpoint (each carries the recorded results): the call is undone and raises
``CheckpointEncodeError`` at once, in every policy.

:class:`CallDispatch` is a mixin of :class:`~stages.actors.durability.ActorDurability`: it
holds no state of its own and works on the runtime's lock, applied-call record, incarnation
and checkpoints.
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

from ..errors import (
    CheckpointCommitUnknown,
    CheckpointEncodeError,
    CheckpointFailed,
    StageError,
)
from .records import REQUEST_PREFIX, AppliedCalls, UnrecordableResult, fingerprint

if TYPE_CHECKING:
    from .config import CheckpointedConfig
    from .incarnation import Incarnation
    from .turns import CallTurns

__all__ = ["CallDispatch", "SyncCallRefused", "in_call"]

log = logging.getLogger(__name__)


#: Set while a wrapped call runs, so that a method calling another one of the same actor
#: counts (and is deduplicated) once, as the outer call.
in_call: contextvars.ContextVar[bool] = contextvars.ContextVar("bp_in_call", default=False)


class SyncCallRefused(StageError, RuntimeError):
    """A synchronous method of an async ``@checkpointed`` actor was called while a call that
    must run alone was mid-method (a coroutine call with a request id outside
    ``every_calls=1``, any coroutine call in it): refused, nothing applied. A synchronous
    method runs on the event loop and cannot wait; run beside, its change would be undone
    by that call's rollback (or committed with its half). Resend it (``call_once`` does),
    or make the method ``async def`` so that it waits its turn.

    Attributes:
        actor: the actor class's name.
        method: the method refused.
    """

    def __init__(self, message: str, *, actor: str | None = None,
                 method: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.method = method

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refused, (str(self), self.actor, self.method))


def _refused(message: str, actor: str | None, method: str | None) -> SyncCallRefused:
    return SyncCallRefused(message, actor=actor, method=method)


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
    _flush_failed: bool
    _initial: bytes | None
    commits: int
    in_progress: set[str]


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
        """Count the call and record its result (``UnrecordableResult`` if it does not
        pickle: then nothing is counted or recorded)."""
        if call_id is not None:
            self.applied.record(call_id, result, fp)
        self.calls_total += 1
        self.calls_since += 1

    def _unrecordable(self, result: Any, what: str) -> CheckpointEncodeError:
        return CheckpointEncodeError(
            f"{self.config.actor} {self.key!r}: the call's result cannot be recorded (every "
            f"checkpoint keeps the answers of the calls it holds): "
            f"{type(result).__qualname__} objects cannot be encoded by the "
            f"{self.config.codec} codec; return plain data. "
            f"{what}", lease_id=self.inc.lease_id)

    def _roll_back(self, before: bytes | None, commits: int) -> None:
        """Policy mode: put back the state a call with a request id found (it raised, or
        its result cannot be recorded). If the call committed a checkpoint half-way
        (``self.checkpoint()`` inside it), the rolled-back state is committed too, so that
        the lease does not keep the half without the call's id (a resend after a crash
        would apply it again); if that commit fails, the next call checkpoints first."""
        self._restore_attrs(before)
        if before is None or self.commits == commits:
            return
        try:
            self.checkpoint(meta={"reason": "rollback"})
        except Exception as exc:  # noqa: BLE001 - the call's own exception propagates
            self._flush_failed = True
            log.warning("%s %r: a call that committed a checkpoint half-way raised; the "
                        "rolled-back state could not be committed (the next call does it "
                        "first): %s: %s", self.config.actor, self.key, type(exc).__name__, exc)

    def _refuse_sync_beside(self, fn: Callable[..., Any]) -> None:
        """A synchronous call of an async actor, while a call that must run alone is
        mid-method: :class:`SyncCallRefused` (see there)."""
        if self.turns.alone or self._active:
            raise SyncCallRefused(
                f"{self.config.actor} {self.key!r}: {fn.__name__}() is synchronous and was "
                "called while a coroutine call that runs alone (a request id, or "
                "every_calls=1) is mid-method; it cannot wait on the event loop, and run "
                "beside that call it would be undone by its rollback. Refused, nothing "
                "applied: resend it, or make it async def", actor=self.config.actor,
                method=fn.__name__)

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
        try:
            self._record(key, result, fp)
        except UnrecordableResult as exc:
            self._exact_raised()
            raise self._unrecordable(result, "Nothing was committed") from exc
        try:
            self.checkpoint(meta={"reason": "call"})
        except CheckpointFailed as exc:
            if self.inc.fenced:
                raise
            try:
                self._reload()
            except Exception as reload_exc:  # noqa: BLE001 - report the commit's failure
                raise exc from reload_exc
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
             kwargs: dict[str, Any], request_id: str | None = None, *,
             method: str | None = None) -> Any:
        """Run one synchronous call of ``method`` (default ``fn.__name__``) under the policy
        (see the module docstring)."""
        self.check_serving()
        fp = None if request_id is None else fingerprint(method or fn.__name__, args, kwargs, fn)
        if not self.exact:
            key = None if request_id is None else _call_key(request_id)
            with self.lock:
                self._refuse_sync_beside(fn)
                done, recorded = self._recorded(key, fp)
                if done:
                    return recorded
                if key is not None:  # one at a time per id: a resend waits for the first
                    before = self._snapshot_attrs()
                    commits = self.commits
                    self.in_progress.add(key)
                    try:
                        result = fn(obj, *args, **kwargs)
                    except BaseException:
                        self.in_progress.discard(key)
                        self._roll_back(before, commits)  # a resend finds the state unchanged
                        raise
                    self.in_progress.discard(key)
                    try:
                        self._record(key, result, fp)
                    except UnrecordableResult as exc:
                        self._roll_back(before, commits)
                        raise self._unrecordable(result, "The call was undone") from exc
                    self._due_checkpoint()
                    return result
            result = fn(obj, *args, **kwargs)
            with self.lock:
                self._record(None, result)
                self._due_checkpoint()
            return result
        key = _call_key(request_id)
        with self.lock:
            self._refuse_sync_beside(fn)
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
                         request_id: str | None = None, *, method: str | None = None) -> Any:
        """Run one coroutine call of ``method`` (default ``fn.__name__``) under the policy
        (see the module docstring)."""
        self.check_serving()
        fp = None if request_id is None else fingerprint(method or fn.__name__, args, kwargs, fn)
        if not self.exact:
            key = None if request_id is None else _call_key(request_id)
            done, recorded = await self.turns.claim(key, lambda k: self._recorded(k, fp))
            if done:
                return recorded
            try:
                if key is not None:
                    return await self._alone(fn, obj, args, kwargs, key, fp)
                await self.turns.enter(self._due_checkpoint)
                try:
                    result = await fn(obj, *args, **kwargs)
                finally:
                    self.turns.leave()
                with self.lock:
                    self._record(None, result)
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
                     args: tuple[Any, ...], kwargs: dict[str, Any], key: str,
                     fp: str | None) -> Any:
        """A coroutine call with a request id in policy mode: alone, recorded, rolled back
        if it raises (unless another call came in beside it: then its id is recorded as
        not rolled back, and a resend is refused - see the module docstring)."""
        entered = await self.turns.enter_alone(self._due_checkpoint)
        try:
            with self.lock:
                before = self._snapshot_attrs()
                commits = self.commits
                self.in_progress.add(key)
            try:
                result = await fn(obj, *args, **kwargs)
            except BaseException:
                with self.lock:
                    self.in_progress.discard(key)
                    self._undo_alone(entered, before, commits, key, fp)
                raise
            with self.lock:
                self.in_progress.discard(key)
                try:
                    self._record(key, result, fp)
                except UnrecordableResult as exc:
                    undone = self._undo_alone(entered, before, commits, key, fp)
                    raise self._unrecordable(
                        result, "The call was undone" if undone else
                        "It was not undone (another call ran beside it); a resend is "
                        "refused") from exc
        finally:
            self.turns.leave_alone()
        with self.lock:
            self._due_checkpoint()
        return result

    def _undo_alone(self, entered: int, before: bytes | None, commits: int, key: str,
                    fp: str | None) -> bool:
        """Roll back a call that ran alone (True), or - another call ran beside it, whose
        change the snapshot would undo - record its id as not rolled back (False)."""
        if self.turns.entries == entered:
            self._roll_back(before, commits)
            return True
        self.applied.record_unrolled(key, fp)
        self.calls_since += 1  # the id is state to checkpoint
        log.warning("%s %r: a call with a request id raised after other calls ran beside "
                    "it (it ran longer than the hold): not rolled back; a resend under its "
                    "id is refused (ResultNotKept)", self.config.actor, self.key)
        return False

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

