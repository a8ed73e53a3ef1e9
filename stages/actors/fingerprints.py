"""Request fingerprints: which call a request id was recorded for (``records.py`` keeps them).

A fingerprint is ``"<method>|v2:<digest>"``: the method's name and a blake2b digest of a
*structural* canonical form of the call's bound arguments, so that a true resend - from
another process, another incarnation, another client - has the same fingerprint, and a
call with other arguments another one:

* **Bound, not spelled**: the arguments are bound to the method's signature with the
  defaults applied (``deposit(5)``, ``deposit(amount=5)`` and ``deposit(5, note=None)`` are
  one call); the signature is computed once per method. A method without a signature (a
  builtin) is fingerprinted by its arguments as sent; so is a call that does not bind (it
  fails in the method anyway).
* **Structural**: ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str`` and
  ``bytes`` stand as themselves; lists, tuples, dicts, sets and frozensets (and their
  subclasses - a namedtuple, a ``Counter``, an ``OrderedDict`` - tagged with the class's
  module and qualname, a ``defaultdict`` with its factory) by their items, the items of
  sets and dicts sorted by their canonical form (a set of strings iterates in another
  order under another hash seed); any other
  object (a dataclass, an enum, a numpy array) by its ``__reduce_ex__(5)``: the callable
  named by module and qualname, its arguments and state canonicalised in turn. Classes and
  functions stand by their module and qualname. Nothing depends on hash order or on the
  argument's class being importable where the actor runs (a class of the driver's script,
  which Ray's cloudpickle sends by value). Ray object refs and actor handles stand by their
  ids.
* **Uncomparable arguments**: an argument nested deeper than :data:`MAX_DEPTH` or one that
  does not reduce (``__reduce_ex__`` raises: a lock, a generator) makes the fingerprint
  ``"<method>|"`` - then only the method is compared - and logs a warning, once per method
  and type, naming both.
* **Versions**: a recorded fingerprint whose digest lacks the ``v2:`` tag was written by an
  older version (a digest of the arguments' pickle: docs/FORMAT.md); it is compared by
  method only, as an uncomparable one is.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import logging
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import ray
import ray.actor

__all__ = ["MAX_DEPTH", "VERSION", "fingerprint", "same_call"]

log = logging.getLogger(__name__)

#: The tag of this version's digests (a recorded digest without it: an older version's).
VERSION = "v2:"
#: How deep the canonical form goes into nested values (deeper: uncomparable).
MAX_DEPTH = 32
_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_warned: set[tuple[str, str]] = set()


class _Irreducible(Exception):
    def __init__(self, kind: type) -> None:
        super().__init__(kind)
        self.kind = kind


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', None)}"


def _key(canonical: Any) -> str:
    return repr(canonical)


def _canonical(value: Any, depth: int = 0) -> Any:
    """A tree of tuples, strs and numbers standing for ``value`` (module docstring); its
    ``repr`` is the same in every process for equal values."""
    if depth > MAX_DEPTH:
        raise _Irreducible(type(value))
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, ray.ObjectRef):
        return ("\0ref", value.hex())
    if isinstance(value, ray.actor.ActorHandle):
        return ("\0actor", value._actor_id.hex())
    if isinstance(value, (pickle.PickleBuffer, memoryview)):   # an array's data (protocol 5)
        with memoryview(value) as view:
            return ("\0buffer", view.tobytes())
    if isinstance(value, type) or inspect.isroutine(value) or inspect.ismodule(value):
        return ("\0global", _name(value) if not inspect.ismodule(value) else value.__name__)
    down = depth + 1
    if isinstance(value, _CONTAINERS):
        tag = kind.__name__ if kind in _CONTAINERS else _name(kind)
        extra = ()
        if kind not in _CONTAINERS and getattr(value, "__dict__", None):
            extra = (_canonical(vars(value), down),)      # a subclass's own attributes
        if isinstance(value, collections.defaultdict):    # its factory is part of its value
            extra = (*extra, _canonical(value.default_factory, down))
        if isinstance(value, dict):
            items = [(_canonical(k, down), _canonical(v, down)) for k, v in value.items()]
            return ("\0dict", tag, sorted(items, key=lambda kv: _key(kv[0])), *extra)
        if isinstance(value, (set, frozenset)):
            return ("\0set", tag, sorted((_canonical(v, down) for v in value), key=_key), *extra)
        return ("\0seq", tag, [_canonical(v, down) for v in value], *extra)
    try:
        reduced = value.__reduce_ex__(5)
    except Exception as exc:  # whatever a __reduce__ raises
        raise _Irreducible(kind) from exc
    if isinstance(reduced, str):                      # a global, named by the reduction
        return ("\0global", f"{getattr(value, '__module__', None)}.{reduced}")
    if not isinstance(reduced, tuple) or len(reduced) < 2:
        raise _Irreducible(kind)
    func, args, *rest = reduced
    parts = [_canonical(func, down), _canonical(args, down)]
    for i, part in enumerate(rest[:3]):
        if part is None:
            parts.append(None)
        elif i == 0:                                  # the state
            parts.append(_canonical(part, down))
        elif i == 1:                                  # list items
            parts.append([_canonical(v, down) for v in part])
        else:                                         # dict items
            items = [(_canonical(k, down), _canonical(v, down)) for k, v in part]
            parts.append(sorted(items, key=lambda kv: _key(kv[0])))
    return ("\0obj", *parts)


@functools.lru_cache(maxsize=4096)
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s signature, once per method (None: it has none, a builtin)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _bound(fn: Callable[..., Any] | None, args: tuple[Any, ...],
           kwargs: Mapping[str, Any]) -> Any:
    """The call's arguments by parameter name, defaults applied; as sent if they do not bind.
    ``fn`` is the class's function: its first parameter (``self``) is left out."""
    sig = None
    if fn is not None:
        try:
            sig = _signature(fn)
        except TypeError:                             # an unhashable callable
            sig = None
    if sig is not None:
        try:
            bound = sig.bind(None, *args, **kwargs)
        except TypeError:
            pass
        else:
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(sig.parameters)), None)
            return ("\0bound", arguments)
    return ("\0sent", tuple(args), dict(kwargs))


def fingerprint(method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                fn: Callable[..., Any] | None = None) -> str:
    """``"<method>|v2:<digest>"`` of a call of ``fn`` (named ``method``) with these
    arguments; ``"<method>|"`` (only the method compared, a warning logged once per method
    and type) if an argument is uncomparable. Equal for a true resend in any process."""
    try:
        canonical = _canonical(_bound(fn, args, kwargs))
    except _Irreducible as exc:
        what = (method, _name(exc.kind))
        if what not in _warned:
            _warned.add(what)
            log.warning("%s(): an argument of type %s cannot be compared (it does not reduce, "
                        "or is nested deeper than %d): a request id reused with other "
                        "arguments of this method is not refused", method, what[1], MAX_DEPTH)
        return f"{method}|"
    except RecursionError:
        return f"{method}|"
    digest = hashlib.blake2b(repr(canonical).encode("utf-8", "surrogatepass"), digest_size=16)
    return f"{method}|{VERSION}{digest.hexdigest()}"


def same_call(recorded: str, attempt: str) -> bool:
    """Whether ``attempt`` may be the resend of the call ``recorded`` was taken of: the same
    method, and the same digest unless either has none (uncomparable) or the recorded one is
    an older version's (untagged: compared by method only)."""
    rec_method, _, rec_args = recorded.partition("|")
    method, _, args = attempt.partition("|")
    if rec_method != method:
        return False
    if not rec_args.startswith(VERSION) or not args.startswith(VERSION):
        return True
    return rec_args == args
