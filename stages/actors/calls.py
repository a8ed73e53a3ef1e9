"""Idempotent calls to a ``@checkpointed`` actor: request ids, and resending until answered.

Why: in exactly-once mode (``every_calls=1``) a call commits its effect and its Ray task id
before it returns, so *Ray's* retries of it are applied once. But Ray does not retry a call
on an actor the scheduler re-created (a new actor, same name) or one it gave up on: the
caller gets ``ActorDiedError`` without knowing whether the call committed, and a resend is a
new task with a new id - applied twice if the first had committed. The caller's own key
closes that gap:

* **A request id** is a keyword every wrapped method of a ``@checkpointed`` actor accepts,
  ``actor.add.remote(5, request_id="order-17")``, stripped by the decorator before the
  user's method runs (so no method may have a parameter of that name). The call is recorded
  under it, with its result, beside the state, and committed with the checkpoint that holds
  its effect; a call whose id is recorded is not applied again - its recorded result is
  returned, from any incarnation that restored that checkpoint. An id names one call: a
  call of another method or with other arguments under a recorded id is refused
  (:class:`~stages.actors.records.RequestIdConflict`), not answered with the other call's
  result (``stages/actors/records.py``). The last ``dedupe_window`` ids (task ids and
  request ids together) are kept, their results within ``dedupe_bytes`` (a resend whose
  result was dropped is refused with ``ResultNotKept``, never applied again); an id must be a non-empty ``str`` of at most
  :data:`MAX_REQUEST_ID` characters.
* **call_once** sends a call with a request id and resends it, with the same id, after any
  failure that says the incarnation could not answer (it died, is unavailable, was fenced
  by a newer one, was stopped, its reply was lost with its node, refused a synchronous call beside one that runs alone:
  ``SyncCallRefused``) or that the call's commit is of unknown outcome
  (``CheckpointCommitUnknown``), re-resolving a named actor with ``ray.get_actor`` (the old
  handle may be dead for good), until it answers or the deadline passes
  (:class:`CallNotAnswered`). The application's own errors are answers: they propagate.

What it guarantees depends on the policy (``README.md`` has the table): with
``every_calls=1`` a call sent through ``call_once`` is applied exactly once, whatever
fails between; with a policy of every N calls or T seconds a resent call that a checkpoint
held is answered from the record, one that no checkpoint held is applied again (its first
effect was lost with the incarnation).
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray

from ..errors import CheckpointCommitUnknown, StageError
from .actor import StageStopped
from .dispatch import SyncCallRefused
from .durability import ActorFenced
from .records import RequestIdConflict, RequestIdError

__all__ = ["MAX_REQUEST_ID", "REQUEST_ID", "CallNotAnswered", "RequestIdConflict",
           "RequestIdError", "call_once", "check_request_id"]

#: The keyword a wrapped method takes its request id by.
REQUEST_ID = "request_id"
#: The longest request id accepted (ids are kept in every checkpoint).
MAX_REQUEST_ID = 256
_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class CallNotAnswered(StageError, TimeoutError):
    """:func:`call_once` got no answer before its deadline; the call may or may not have
    been applied - resend it with the same ``request_id`` to find out.

    Attributes:
        actor: the actor's name (or the handle's repr).
        method: the method called.
        request_id: the id the call was sent with.
        attempts: how many times it was sent.
    """

    def __init__(self, message: str, *, actor: str, method: str, request_id: str,
                 attempts: int) -> None:
        super().__init__(message)
        self.actor = actor
        self.method = method
        self.request_id = request_id
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (str(self), self.actor, self.method, self.request_id,
                           self.attempts))


def _rebuild(message: str, actor: str, method: str, request_id: str,
             attempts: int) -> CallNotAnswered:
    return CallNotAnswered(message, actor=actor, method=method, request_id=request_id,
                           attempts=attempts)


def check_request_id(value: Any, actor: str) -> str:
    """``value`` if it is a valid request id, else :class:`RequestIdError`."""
    if not isinstance(value, str) or not value or len(value) > MAX_REQUEST_ID:
        shown = f"a str of {len(value)} characters" if isinstance(value, str) else \
            type(value).__name__
        raise RequestIdError(f"{actor}: request_id must be a non-empty str of at most "
                             f"{MAX_REQUEST_ID} characters, got {shown}", actor=actor)
    return value


def with_request_id(fn: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
    """Give ``wrapper`` (the call wrapper of ``fn``) ``fn``'s signature plus a keyword-only
    ``request_id=None``: Ray checks a call's arguments against the signature it reads, after
    ``inspect.unwrap`` - so ``__wrapped__`` (set by ``functools.wraps``) is removed."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    extra = inspect.Parameter(REQUEST_ID, inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
              len(params))
    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=params[:at] + [extra] + params[at:])
    wrapper.__dict__.pop("__wrapped__", None)


def takes_request_id(fn: Callable[..., Any]) -> bool:
    """True if ``fn`` names a parameter ``request_id`` itself (a clash with the keyword)."""
    try:
        return REQUEST_ID in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


#: Ray's failures of a reply lost on its way back (the reply's object lost with the actor's
#: node or its owner; subclasses: ``OwnerDiedError``, ``ObjectReconstructionFailedError``),
#: or of the actor's node dying: the call may or may not have been applied.
_LOST_REPLY: tuple[type[BaseException], ...] = tuple(
    kind for kind in (getattr(ray.exceptions, name, None)
                      for name in ("ObjectLostError", "NodeDiedError"))
    if isinstance(kind, type))


def _retryable(exc: BaseException) -> bool:
    """True for a failure that says the incarnation could not answer (resend it: a
    ``SyncCallRefused`` call applied nothing, it may run once the call it met is done), that
    its reply was lost (``ObjectLostError`` and its subclasses, ``NodeDiedError``), or that
    the call's outcome is unknown (its commit may or may not have landed: the resend is
    answered from the record if it did, applied if it did not)."""
    return isinstance(exc, (ray.exceptions.RayActorError, ActorFenced, StageStopped,
                            CheckpointCommitUnknown, SyncCallRefused, *_LOST_REPLY))


def call_once(actor: Any, method: str, *args: Any, request_id: str | None = None,
              name: str | None = None, namespace: str | None = None,
              timeout: float = 120.0, **kwargs: Any) -> Any:
    """Call ``actor.<method>(*args, **kwargs)`` under a request id until it answers.

    Args:
        actor: the actor's name (looked up with ``ray.get_actor``, again after every failure)
            or a handle (retried as is - right for an actor Ray restarts - unless ``name``
            is given too, which is then used to look it up again after a failure).
        method: the method's name.
        request_id: the call's idempotency key (:class:`RequestIdError` if it is not a
            non-empty ``str``); a fresh random one if None. Pass your
            own (an order number, a message id) to make a resend from another process, or
            after this one crashed, find the first attempt's record.
        name, namespace: how to look the actor up again.
        timeout: seconds, in all, before :class:`CallNotAnswered`.

    Returns:
        The method's result (the recorded one if an earlier attempt had committed).

    Raises:
        CallNotAnswered: no answer before the deadline.
        Exception: what the method raised (an answer, not resent).
    """
    rid = check_request_id(uuid.uuid4().hex if request_id is None else request_id, method)
    lookup = actor if isinstance(actor, str) else name
    who = lookup or repr(actor)
    deadline = time.monotonic() + timeout
    handle = None if isinstance(actor, str) else actor
    attempts = 0
    last: BaseException | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CallNotAnswered(
                f"{who}.{method} (request_id {rid!r}) not answered within {timeout:g} s after "
                f"{attempts} attempt(s); last error: {type(last).__name__}: {last}",
                actor=who, method=method, request_id=rid, attempts=attempts) from last
        try:
            if handle is None:
                handle = ray.get_actor(lookup, namespace=namespace)
            attempts += 1
            ref = getattr(handle, method).remote(*args, request_id=rid, **kwargs)
            return ray.get(ref, timeout=left)
        except ray.exceptions.GetTimeoutError as exc:
            last = exc
        except ValueError as exc:  # ray.get_actor: not (yet again) registered under the name
            if handle is not None:
                raise
            last = exc
        except Exception as exc:
            if not _retryable(exc):
                raise
            last = exc
            if lookup is not None:
                handle = None
        time.sleep(min(_BACKOFF_S[min(attempts, len(_BACKOFF_S) - 1)],
                       max(0.0, deadline - time.monotonic())))
