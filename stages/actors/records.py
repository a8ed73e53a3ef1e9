"""The calls a ``@checkpointed`` actor applied: ids, recorded results, request fingerprints.

:mod:`stages.actors.durability` keeps one :class:`AppliedCalls` per incarnation and
checkpoints it beside the state, so that a call whose id is recorded is answered from the
record instead of being applied again (``stages/actors/calls.py``). Three rules make the
answer the right one:

* **A request id names one call.** With the result, a request id's record keeps the
  call's *fingerprint*: the method's name and a digest of its arguments. A call under a
  recorded id with another method or other arguments is not the resend of that call but a
  new call that reuses its id (an id computed from too little: ``f"user-{uid}"``); it is
  refused with :class:`RequestIdConflict` instead of being answered with the other call's
  result while its own effect is silently dropped. Arguments are compared by a digest of
  their pickle, with the sets and dicts among them (in lists, tuples, sets, dicts) taken in
  sorted order (a set of strings iterates in another order in another process); arguments
  that do not pickle are not compared (the method's name still is). Ray's task ids (the keys of calls without a request id)
  need no fingerprint: Ray retries a task with the arguments it was sent with.
* **The recorded result is a copy** taken when the call returned (``copy.deepcopy``): a
  result that aliases the state (a method returning a list it keeps) would otherwise
  change with later calls - and keep changing in a new incarnation, since pickle keeps the
  sharing - and a resend would be answered with today's value, not the first attempt's.
* **Bounded**: the last ``window`` keys are kept (``dedupe_window``); older ones are
  forgotten, their calls then indistinguishable from new ones.

The payload keeps the results as ``"applied": [[key, result], ...]`` (as before) and the
fingerprints beside them as ``"fingerprints": [[key, fingerprint], ...]``; a payload
without fingerprints (an older version's) restores with none, its ids unchecked.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import ray
import ray.actor

from ..errors import StageError

__all__ = ["AppliedCalls", "RequestIdConflict", "RequestIdError", "fingerprint"]

log = logging.getLogger(__name__)

#: Key prefix of calls sent with a caller's request id (``durability._call_key``).
REQUEST_PREFIX = "req:"


class RequestIdError(StageError, ValueError):
    """A ``request_id=`` that is not a non-empty ``str`` of at most ``MAX_REQUEST_ID``
    characters.

    Attributes:
        actor: the actor class's name.
    """

    def __init__(self, message: str, *, actor: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor


class RequestIdConflict(RequestIdError):
    """A call under a request id that an earlier, *different* call was recorded under
    (another method, or other arguments): refused, nothing applied.

    Attributes:
        actor: the actor class's name.
        request_id: the id reused.
        recorded: the method the id was recorded for.
        method: the method of the refused call.
    """

    def __init__(self, message: str, *, actor: str | None = None,
                 request_id: str | None = None, recorded: str | None = None,
                 method: str | None = None) -> None:
        super().__init__(message, actor=actor)
        self.request_id = request_id
        self.recorded = recorded
        self.method = method


class _Digest(io.RawIOBase):
    """A write-only file that hashes what is written (the pickle is never kept whole)."""

    def __init__(self) -> None:
        self.hash = hashlib.blake2b(digest_size=16)

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.hash.update(b)
        return len(b)


#: How deep :func:`_canonical` goes into nested containers (deeper: not compared).
_MAX_DEPTH = 32


class _Uncomparable(Exception):
    pass


def _pickled(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def _canonical(value: Any, depth: int = 0) -> Any:
    """``value`` with every set and dict (inside lists, tuples, sets and dicts) replaced by
    a list in sorted order: a set of strings iterates in another order in another process
    (hash randomisation), and equal dicts built in another order pickle differently. Other
    objects are left as they are (what is inside them is not reordered)."""
    if depth > _MAX_DEPTH:
        raise _Uncomparable
    kind = type(value)
    if kind is dict:
        items = [(_canonical(k, depth + 1), _canonical(v, depth + 1)) for k, v in value.items()]
        return ("\0dict", sorted(items, key=lambda kv: _pickled(kv[0])))
    if kind is set or kind is frozenset:
        return ("\0" + kind.__name__,
                sorted((_canonical(v, depth + 1) for v in value), key=_pickled))
    if kind is list or kind is tuple:
        return ("\0" + kind.__name__, [_canonical(v, depth + 1) for v in value])
    return value


class _ArgsPickler(pickle.Pickler):
    """Pickles arguments for their digest; Ray's object refs and actor handles stand by
    their ids (pickling them would tell Ray they escaped, and pin their objects)."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=5)

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, ray.ObjectRef):
            return ("ref", obj.hex())
        if isinstance(obj, ray.actor.ActorHandle):
            return ("actor", obj._actor_id.hex())
        return None


def fingerprint(method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """``method`` and a digest of the arguments (``method`` alone, ``"name|"``, if they do
    not pickle: then only the method is compared)."""
    digest = _Digest()
    try:
        _ArgsPickler(digest).dump(_canonical((tuple(args), dict(kwargs))))
    except Exception:  # noqa: BLE001 - unpicklable arguments: compare the method only
        return f"{method}|"
    return f"{method}|{digest.hash.hexdigest()}"


def _same_call(recorded: str, attempt: str) -> bool:
    rec_method, _, rec_args = recorded.partition("|")
    method, _, args = attempt.partition("|")
    return rec_method == method and (not rec_args or not args or rec_args == args)


def _snapshot(result: Any) -> Any:
    """A copy of ``result`` that later calls cannot change (the object itself if it does
    not copy: then it is recorded as it is, and may alias the state)."""
    if result is None or isinstance(result, (bool, int, float, complex, str, bytes)):
        return result
    try:
        return copy.deepcopy(result)
    except Exception as exc:  # noqa: BLE001 - recorded uncopied rather than not at all
        log.debug("recording a result that does not deepcopy as is: %s", exc)
        return result


class AppliedCalls:
    """The last ``window`` applied calls: key -> recorded result (and request fingerprint).

    Args:
        window: keys kept (``dedupe_window``).
        actor: the actor class's name, for errors.
    """

    def __init__(self, window: int, actor: str) -> None:
        self.window = window
        self.actor = actor
        self.results: OrderedDict[str, Any] = OrderedDict()
        self._prints: dict[str, str] = {}

    def __contains__(self, key: object) -> bool:
        return key in self.results

    def __len__(self) -> int:
        return len(self.results)

    def result(self, key: str) -> Any:
        return self.results[key]

    def lookup(self, key: str | None, fp: str | None) -> tuple[bool, Any]:
        """``(True, recorded result)`` if ``key`` was applied, else ``(False, None)``.

        Raises:
            RequestIdConflict: ``key`` was recorded for another call than ``fp`` says.
        """
        if key is None or key not in self.results:
            return False, None
        recorded = self._prints.get(key)
        if fp is not None and recorded is not None and not _same_call(recorded, fp):
            rid = key.removeprefix(REQUEST_PREFIX)
            rec_method, method = recorded.partition("|")[0], fp.partition("|")[0]
            what = (f"{method}() with other arguments" if rec_method == method
                    else f"{method}()")
            raise RequestIdConflict(
                f"{self.actor}: request_id {rid!r} was used by an earlier call of "
                f"{rec_method}(); this call of {what} reuses it and is refused (nothing "
                "applied). A request id names one call: resend that call with it, give "
                "this one its own", actor=self.actor, request_id=rid, recorded=rec_method,
                method=method)
        return True, self.results[key]

    def record(self, key: str, result: Any, fp: str | None = None) -> None:
        self.results[key] = _snapshot(result)
        self.results.move_to_end(key)
        if fp is not None:
            self._prints[key] = fp
        while len(self.results) > self.window:
            old, _ = self.results.popitem(last=False)
            self._prints.pop(old, None)

    def payload(self) -> dict[str, Any]:
        """The checkpointed part (the ``applied`` and ``fingerprints`` payload fields)."""
        return {"applied": [[k, v] for k, v in self.results.items()],
                "fingerprints": [[k, v] for k, v in self._prints.items()]}

    def adopt(self, payload: Mapping[str, Any]) -> None:
        """Replace the table by a restored payload's (fields as :meth:`payload` writes)."""
        self.results = OrderedDict((k, v) for k, v in payload.get("applied", []))
        self._prints = {k: v for k, v in payload.get("fingerprints", [])
                        if k in self.results and isinstance(v, str)}
