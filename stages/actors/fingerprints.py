"""Request fingerprints: which call a request id was recorded for (``records.py`` keeps them).

A fingerprint is ``"<method>|v2:<digest>"``: the name the method was called by (not its
function's ``__name__``, which a factory's or an undecorated wrapper's functions share) and
a blake2b digest of a *structural* canonical form of the call's bound arguments, so that a
true resend - from another process, another incarnation, another client - has the same
fingerprint, and a call with other arguments another one:

* **Bound, not spelled**: the arguments are bound to the method's signature with the
  defaults applied (``deposit(5)``, ``deposit(amount=5)`` and ``deposit(5, note=None)`` are
  one call); a parameter left at its default (or given the default object itself, or an
  equal scalar) stands as "the default", so a method that mutates its own default does not
  change its resend. The signature is computed once per method. A method without a
  signature (a builtin), one that takes its ``self`` in ``*args`` (an undecorated wrapper)
  and a call that does not bind (it fails in the method anyway) are fingerprinted by their
  arguments as sent.
* **Structural**: ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str`` and
  ``bytes`` stand as themselves (longer than 256 bytes or characters: by length and digest,
  as do array buffers - hashing a 64 MiB array through its ``repr`` took seconds); lists,
  tuples, dicts, sets and frozensets (and their subclasses - a namedtuple, a ``Counter``,
  an ``OrderedDict`` - tagged with the class's module and qualname, with their own
  attributes and slots, a ``defaultdict`` with its factory) by their items, the items of
  sets and dicts sorted by their canonical form (a set of strings iterates in another order
  under another hash seed); any other object (a dataclass, an enum, a numpy array, a
  compiled pattern) by its reduction (``copyreg``'s, else ``__reduce_ex__(5)``): the
  callable named by module and qualname, its arguments and state canonicalised in turn.
  Classes, modules and module-level functions stand by their names; closures, lambdas and
  functions defined inside others by their code, cells and defaults, bound methods by their
  function and object. A value that contains itself stands as a reference to where it
  began. Nothing depends on hash order or on the argument's class being importable where
  the actor runs (a class of the driver's script, which Ray's cloudpickle sends by value).
  Actor handles stand by their ids; an object ref nested in the arguments stands as "a
  ref" - a resend from another driver puts its data again under another id, and what a
  ref holds is not fetched to compare it.
* **Reductions, not ``==``**: two objects equal by ``==`` whose reductions differ (a
  pydantic model rebuilt from its JSON carries another ``fields_set``) are other calls: a
  resend must send what the first attempt sent, or a new request id.
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
import copyreg
import functools
import hashlib
import inspect
import logging
import pickle
import types
from collections.abc import Callable, Mapping
from typing import Any

import ray
import ray.actor

__all__ = ["MAX_DEPTH", "VERSION", "fingerprint", "same_call"]

log = logging.getLogger(__name__)

#: The tag of this version's digests (a recorded digest without it: an older version's).
VERSION = "v2:"
#: How deep the canonical form goes into nested values (deeper: uncomparable).
MAX_DEPTH = 64
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


def _digest(data: bytes | memoryview) -> tuple[int, str]:
    """A long bytes-like value by its length and digest: its ``repr`` would cost far more
    than hashing it (a 64 MiB array took seconds and +400 MiB through ``repr``)."""
    return (len(data), hashlib.blake2b(data, digest_size=16).hexdigest())


def _canonical(value: Any, depth: int = 0, path: dict[int, int] | None = None) -> Any:
    """A tree of tuples, strs and numbers standing for ``value`` (module docstring); its
    ``repr`` is the same in every process for equal values. ``path`` maps the ids of the
    containers and objects being canonicalised to their depth: a value that contains itself
    (a node pointing back to its parent) stands as a reference to that depth."""
    if depth > MAX_DEPTH:
        raise _Irreducible(type(value))
    kind = type(value)
    if kind in _SCALARS:
        if kind in (bytes, str) and len(value) > _LONG:
            data = value if kind is bytes else value.encode("utf-8", "surrogatepass")
            return ("\0long", kind.__name__, *_digest(data))
        return value
    if isinstance(value, ray.ObjectRef):
        # Not by id: a resend from another driver (or a restarted one) puts its data again,
        # under another id; what the ref holds is not fetched. The rest of the call compares.
        return ("\0ref",)
    if isinstance(value, ray.actor.ActorHandle):
        return ("\0actor", value._actor_id.hex())
    if isinstance(value, (pickle.PickleBuffer, memoryview)):   # an array's data (protocol 5)
        with memoryview(value) as view:
            return ("\0buffer", *_digest(view.cast("B") if view.contiguous else view.tobytes()))
    if isinstance(value, types.CodeType):
        return _code(value, depth, path)
    if inspect.ismodule(value):
        return ("\0global", value.__name__)
    if isinstance(value, type) or (inspect.isroutine(value) and not _structural(value)):
        return ("\0global", _name(value))
    path = {} if path is None else path
    seen = path.get(id(value))
    if seen is not None:
        return ("\0cycle", seen)
    path[id(value)] = depth
    try:
        return _composite(value, kind, depth + 1, path)
    finally:
        del path[id(value)]


#: Bytes and strs longer than this stand by length and digest.
_LONG = 256


def _structural(fn: Any) -> bool:
    """Whether a routine is compared by what it is, not only its name: a bound method (its
    object too), a closure, a lambda or a function defined inside another (two of them
    share a name: ``price_rule(10)`` and ``price_rule(90)``)."""
    owner = getattr(fn, "__self__", None)
    if isinstance(fn, types.MethodType) or (inspect.isbuiltin(fn) and owner is not None
                                             and not inspect.ismodule(owner)):
        return True
    if isinstance(fn, types.FunctionType):
        return bool(fn.__closure__) or "<" in fn.__qualname__
    return False


def _code(code: types.CodeType, depth: int, path: dict[int, int] | None) -> Any:
    down = depth + 1
    consts = tuple(_canonical(c, down, path) for c in code.co_consts)
    return ("\0code", code.co_qualname, code.co_code, consts, code.co_names)


def _composite(value: Any, kind: type, down: int, path: dict[int, int]) -> Any:
    if isinstance(value, types.MethodType):
        return ("\0method", _canonical(value.__func__, down, path),
                _canonical(value.__self__, down, path))
    if inspect.isbuiltin(value):                       # a bound builtin: [].append
        return ("\0method", _name(value), _canonical(value.__self__, down, path))
    if isinstance(value, types.FunctionType):          # a closure, a lambda, a local function
        cells = tuple(_canonical(c.cell_contents, down, path) if _filled(c) else ("\0empty",)
                      for c in value.__closure__ or ())
        return ("\0function", _name(value), _code(value.__code__, down, path), cells,
                _canonical(value.__defaults__, down, path),
                _canonical(value.__kwdefaults__, down, path))
    if isinstance(value, _CONTAINERS):
        tag = kind.__name__ if kind in _CONTAINERS else _name(kind)
        extra: tuple[Any, ...] = ()
        if kind not in _CONTAINERS:
            own = _own_attributes(value)
            if own:
                extra = (_canonical(own, down, path),)  # a subclass's own attributes
        if isinstance(value, collections.defaultdict):    # its factory is part of its value
            extra = (*extra, _canonical(value.default_factory, down, path))
        if isinstance(value, dict):
            items = [(_canonical(k, down, path), _canonical(v, down, path))
                     for k, v in value.items()]
            return ("\0dict", tag, sorted(items, key=lambda kv: _key(kv[0])), *extra)
        if isinstance(value, (set, frozenset)):
            return ("\0set", tag, sorted((_canonical(v, down, path) for v in value), key=_key),
                    *extra)
        return ("\0seq", tag, [_canonical(v, down, path) for v in value], *extra)
    try:
        reducer = copyreg.dispatch_table.get(kind)    # as pickle does: re.Pattern, ...
        reduced = reducer(value) if reducer is not None else value.__reduce_ex__(5)
    except Exception as exc:  # whatever a __reduce__ raises
        raise _Irreducible(kind) from exc
    if isinstance(reduced, str):                      # a global, named by the reduction
        return ("\0global", f"{getattr(value, '__module__', None)}.{reduced}")
    if not isinstance(reduced, tuple) or len(reduced) < 2:
        raise _Irreducible(kind)
    func, args, *rest = reduced
    parts = [_canonical(func, down, path), _canonical(args, down, path)]
    for i, part in enumerate(rest[:3]):
        if part is None:
            parts.append(None)
        elif i == 0:                                  # the state
            parts.append(_canonical(part, down, path))
        elif i == 1:                                  # list items
            parts.append([_canonical(v, down, path) for v in part])
        else:                                         # dict items
            items = [(_canonical(k, down, path), _canonical(v, down, path)) for k, v in part]
            parts.append(sorted(items, key=lambda kv: _key(kv[0])))
    return ("\0obj", *parts)


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _own_attributes(value: Any) -> dict[str, Any]:
    """A container subclass's own attributes: its ``__dict__`` and its slots."""
    own = dict(getattr(value, "__dict__", None) or {})
    for klass in type(value).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                own[f"{klass.__qualname__}.{slot}"] = getattr(value, slot)
    return own


@functools.lru_cache(maxsize=4096)
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """``fn``'s signature, once per method (None: it has none, a builtin)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _bound(fn: Callable[..., Any] | None, args: tuple[Any, ...],
           kwargs: Mapping[str, Any]) -> Any:
    """The call's arguments by parameter name, defaults applied; as sent if they do not bind
    or ``fn`` takes its ``self`` in ``*args`` (an undecorated wrapper). ``fn`` is the class's
    function: its first parameter (``self``) is left out. A parameter not given, or given its
    default itself (the same object, or an equal scalar), stands as "the default": a method
    that mutates its own default (``seen=[]``) does not change its resend's fingerprint."""
    sig = None
    if fn is not None:
        try:
            sig = _signature(fn)
        except TypeError:                             # an unhashable callable
            sig = None
    params = [] if sig is None else list(sig.parameters.values())
    if params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                     inspect.Parameter.POSITIONAL_OR_KEYWORD):
        try:
            bound = sig.bind(None, *args, **kwargs)
        except TypeError:
            pass
        else:
            arguments: dict[str, Any] = {}
            for param in params[1:]:
                if param.name not in bound.arguments or _is_default(
                        bound.arguments[param.name], param.default):
                    arguments[param.name] = _DEFAULT
                else:
                    arguments[param.name] = bound.arguments[param.name]
            return ("\0bound", arguments)
    return ("\0sent", tuple(args), dict(kwargs))


#: What a parameter left at its default stands as.
_DEFAULT = ("\0default",)


def _is_default(value: Any, default: Any) -> bool:
    if default is inspect.Parameter.empty:
        return False
    if value is default:
        return True
    return type(value) is type(default) and type(value) in _SCALARS and value == default


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
