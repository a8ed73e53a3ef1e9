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
  a structural canonical form of the bound arguments, the same in every process for a true
  resend (``stages/actors/fingerprints.py``); arguments that cannot be compared are not (the
  method's name still is, and a warning says so). Ray's task ids (the keys of calls
  without a request id) need no fingerprint: Ray retries a task with the arguments it was sent with.
* **The recorded result is a copy** taken when the call returned (a pickle round trip): a
  result that aliases the state (a method returning a list it keeps) would otherwise
  change with later calls - and keep changing in a new incarnation, since pickle keeps the
  sharing - and a resend would be answered with today's value, not the first attempt's.
* **Bounded, in count and in bytes**: the last ``window`` keys are kept
  (``dedupe_window``); older ones are forgotten, their calls then indistinguishable from new
  ones. Every checkpoint carries the recorded results, so they are also bounded in bytes
  (``dedupe_bytes``, default :data:`DEFAULT_RESULT_BYTES`, measured as their pickled
  size): past the budget the oldest *results* are dropped first, their keys (and
  fingerprints) kept. The guarantee: a resend of a call among the last ``dedupe_window``
  is never applied again - it is answered from the record while its result is kept, and
  refused with :class:`ResultNotKept` once the result was dropped. The newest result is
  always kept, whatever its size (exactly-once mode commits it with its call). Before the
  budget a method returning 32 KiB made every checkpoint of a one-int state carry 1024 x
  32 KiB (12.8 MB after 400 calls, 44 ms a call); with the default 1 MiB it carries 32 of
  them (the commit that added the budget has the figures).

The payload keeps the results as ``"applied": [[key, result], ...]`` (as before; ``None``
for a dropped result), the fingerprints beside them as ``"fingerprints": [[key,
fingerprint], ...]``, the keys whose result was dropped as ``"dropped": [key, ...]`` and the
kept results' pickled sizes as ``"sizes": [[key, bytes], ...]`` and the keys of calls that
raised without being rolled back as ``"unrolled": [key, ...]``; a payload without
fingerprints (an older version's) restores with none, its ids unchecked, one without sizes
has them measured when it is restored.
"""

from __future__ import annotations

import logging
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..checkpoint.codec import msgpack_copy
from ..errors import CodecError, StageError
from .fingerprints import fingerprint, same_call

__all__ = ["DEFAULT_RESULT_BYTES", "AppliedCalls", "RequestIdConflict", "RequestIdError",
           "ResultNotKept", "UnrecordableResult", "fingerprint"]

log = logging.getLogger(__name__)

#: Key prefix of calls sent with a caller's request id (``durability._call_key``).
REQUEST_PREFIX = "req:"
#: Bytes of recorded results kept by default (``dedupe_bytes``), their pickled size.
DEFAULT_RESULT_BYTES = 1 << 20


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


class ResultNotKept(StageError, LookupError):
    """A resend of a call that *was* applied, whose recorded result is no longer kept (the
    results past ``dedupe_bytes`` are dropped, oldest first): refused, not applied again.

    Attributes:
        actor: the actor class's name.
        request_id: the request id (or, for a call without one, Ray's task id).
    """

    def __init__(self, message: str, *, actor: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.request_id = request_id


class UnrecordableResult(Exception):
    """A result that does not pickle: no checkpoint could carry it (``__cause__`` says why).
    The dispatcher turns it into ``CheckpointEncodeError`` after putting the state back."""


def _snapshot(result: Any, codec: str = "pickle") -> tuple[Any, int]:
    """A copy of ``result`` that later calls cannot change, and its pickled size - what it
    adds to every checkpoint, counted for every type (a ``str`` by its encoded bytes, an
    ``int`` by its digits, not a flat figure). A pickle round trip makes the copy and
    measures it at once; immutable scalars and strings are kept as they are (nothing can
    change them). :class:`UnrecordableResult` if it does not pickle: recorded anyway, it
    would make every later checkpoint fail until ``dedupe_window`` calls pushed it out.
    With ``codec="msgpack"`` the copy is a msgpack round trip (what a restored record
    answers: a tuple comes back a list), refused if msgpack cannot encode it."""
    if codec == "msgpack":
        try:
            return msgpack_copy(result)
        except CodecError as exc:
            raise UnrecordableResult(f"{type(result).__qualname__}: {exc}") from exc
    try:
        blob = pickle.dumps(result, protocol=5)
    except Exception as exc:  # whatever a __reduce__ raises
        raise UnrecordableResult(f"{type(result).__qualname__}: {exc}") from exc
    if result is None or isinstance(result, (bool, int, float, complex, str, bytes)):
        return result, len(blob)
    return pickle.loads(blob), len(blob)


def _size(result: Any, codec: str = "pickle") -> int:
    """What ``result`` adds to a checkpoint in ``codec`` (0 if the codec cannot encode it)."""
    try:
        return _snapshot(result, codec)[1]
    except UnrecordableResult:
        return 0


class AppliedCalls:
    """The last ``window`` applied calls: key -> recorded result (and request fingerprint),
    the results within ``max_bytes``.

    Args:
        window: keys kept (``dedupe_window``).
        actor: the actor class's name, for errors.
        max_bytes: bytes of results kept (``dedupe_bytes``); the newest is always kept.
        codec: the checkpoint codec that carries the results (``pickle``, ``msgpack``).
    """

    def __init__(self, window: int, actor: str, max_bytes: int = DEFAULT_RESULT_BYTES,
                 codec: str = "pickle") -> None:
        self.codec = codec
        self.window = window
        self.actor = actor
        self.max_bytes = max_bytes
        self.results: OrderedDict[str, Any] = OrderedDict()
        self._prints: dict[str, str] = {}
        #: Keys whose result is kept, oldest first, with its size.
        self._kept: OrderedDict[str, int] = OrderedDict()
        self.kept_bytes = 0
        #: Keys of calls that raised and could not be rolled back (:meth:`record_unrolled`).
        self._unrolled: set[str] = set()

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
            ResultNotKept: ``key`` was applied but its result was dropped (``max_bytes``).
        """
        if key is None or key not in self.results:
            return False, None
        recorded = self._prints.get(key)
        rid = key.removeprefix(REQUEST_PREFIX)
        if fp is not None and recorded is not None and not same_call(recorded, fp):
            rec_method, method = recorded.partition("|")[0], fp.partition("|")[0]
            what = (f"{method}() with other arguments" if rec_method == method
                    else f"{method}()")
            raise RequestIdConflict(
                f"{self.actor}: request_id {rid!r} was used by an earlier call of "
                f"{rec_method}(); this call of {what} reuses it and is refused (nothing "
                "applied). A request id names one call: resend that call with it, give "
                "this one its own", actor=self.actor, request_id=rid, recorded=rec_method,
                method=method)
        if key in self._unrolled:
            raise ResultNotKept(
                f"{self.actor}: the call {rid!r} did not end cleanly - it raised after another "
                "call had run beside it, so it could not be rolled back, or the actor stopped "
                "after a checkpoint inside it had committed part of it - and what it changed "
                "stays: its resend is refused, not applied a second time. Give a new call its "
                "own id",
                actor=self.actor, request_id=rid)
        if key not in self._kept:
            raise ResultNotKept(
                f"{self.actor}: the call {rid!r} was applied already, but its recorded result "
                f"is no longer kept (results past dedupe_bytes={self.max_bytes} are dropped, "
                f"oldest first; the ids of the last dedupe_window={self.window} calls are "
                "kept): refused, not applied again", actor=self.actor, request_id=rid)
        return True, self.results[key]

    def record(self, key: str, result: Any, fp: str | None = None) -> None:
        copied, size = _snapshot(result, self.codec)
        self._drop_result(key)
        self.results[key] = copied
        self.results.move_to_end(key)
        self._kept[key] = size
        self.kept_bytes += size
        if fp is not None:
            self._prints[key] = fp
        self._bound()

    def record_unrolled(self, key: str, fp: str | None = None) -> None:
        """The call under ``key`` raised and was not rolled back (another call ran beside it,
        ``stages/actors/dispatch.py``): a resend is refused with :class:`ResultNotKept`
        rather than applied on top of what the first attempt left."""
        self._drop_result(key)
        self.results[key] = None
        self.results.move_to_end(key)
        self._unrolled.add(key)
        if fp is not None:
            self._prints[key] = fp
        self._bound()

    def _drop_result(self, key: str) -> None:
        size = self._kept.pop(key, None)
        if size is not None:
            self.kept_bytes -= size
            self.results[key] = None

    def _bound(self) -> None:
        while len(self.results) > self.window:
            old, _ = self.results.popitem(last=False)
            self._prints.pop(old, None)
            self._unrolled.discard(old)
            size = self._kept.pop(old, None)
            if size is not None:
                self.kept_bytes -= size
        while self.kept_bytes > self.max_bytes and len(self._kept) > 1:
            self._drop_result(next(iter(self._kept)))

    def payload(self, in_progress: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """The checkpointed part (the ``applied``, ``fingerprints``, ``dropped``, ``sizes``
        and ``unrolled`` payload fields). ``in_progress``: keys of calls running while this
        checkpoint is taken (one called ``self.checkpoint()``): written as not rolled back,
        so that if the actor dies before the call ends, a resend is refused instead of
        applied on top of the part of it this checkpoint holds."""
        running = [k for k in sorted(in_progress) if k not in self.results]
        return {"applied": [[k, v] for k, v in self.results.items()] + [[k, None] for k in running],
                "fingerprints": [[k, v] for k, v in self._prints.items()],
                "dropped": [k for k in self.results if k not in self._kept] + running,
                "sizes": [[k, n] for k, n in self._kept.items()],
                "unrolled": sorted(self._unrolled | set(running))}

    def adopt(self, payload: Mapping[str, Any]) -> None:
        """Replace the table by a restored payload's (fields as :meth:`payload` writes)."""
        self.results = OrderedDict((k, v) for k, v in payload.get("applied", []))
        self._prints = {k: v for k, v in payload.get("fingerprints", [])
                        if k in self.results and isinstance(v, str)}
        dropped = set(payload.get("dropped", []))
        self._unrolled = {k for k in payload.get("unrolled", []) if k in self.results}
        dropped |= self._unrolled
        sizes = {k: n for k, n in payload.get("sizes", []) if isinstance(n, int)}
        self._kept = OrderedDict(
            (k, sizes[k] if k in sizes else _size(v, self.codec))
            for k, v in self.results.items() if k not in dropped)
        self.kept_bytes = sum(self._kept.values())
        self._bound()  # a smaller budget (or window) than the one that wrote it
