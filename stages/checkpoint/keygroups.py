"""Key groups: the stable unit in which keyed state is partitioned, moved and checkpointed.

A keyed stage hashes each record's key into one of ``max_parallelism`` key groups (default
:data:`DEFAULT_MAX_PARALLELISM`, fixed for the life of a run). Instance ``i`` of ``p``
parallel instances owns the contiguous range :func:`key_group_range` ``(i, p, m)``; a
rescale moves whole groups between instances, never single keys, so a group's state is
restored from the one lease that held it (docs/ARCHITECTURE.md, "Parallel keyed stages").

Guarantees:

* :func:`key_group` is the same on every process, machine, Python build and run: it hashes a
  canonical encoding of the key with BLAKE2b, never ``hash()`` (salted per process for str).
* Equal keys of the supported types map to the same group; a key of another type is refused
  with :class:`~stages.errors.KeyGroupError` naming the type, never hashed by ``repr``.
  Supported: ``str``, ``bytes``, ``int`` (``bool`` as its own type), ``None``, and tuples
  of these. ``1`` and ``"1"`` differ; ``1`` and ``True`` differ.
* The ranges of ``p`` instances partition ``range(m)`` exactly, each of ``m // p`` or
  ``m // p + 1`` groups.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import KeyGroupError

__all__ = [
    "DEFAULT_MAX_PARALLELISM",
    "encode_key",
    "instance_of_group",
    "key_group",
    "key_group_range",
]

#: Key groups per keyed stage unless the stage says otherwise (Flink's default is 128 too).
DEFAULT_MAX_PARALLELISM = 128

_MAX_DEPTH = 16


def encode_key(key: Any) -> bytes:
    """The canonical bytes of ``key`` (type-tagged, length-prefixed); raises KeyGroupError."""
    out = bytearray()
    _encode(key, out, 0)
    return bytes(out)


def _encode(key: Any, out: bytearray, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise KeyGroupError(f"record key nests tuples deeper than {_MAX_DEPTH} levels")
    kind = type(key)
    if kind is str:
        data = key.encode("utf-8", "surrogatepass")
        out += b"s" + len(data).to_bytes(8, "big") + data
    elif kind is bytes:
        out += b"b" + len(key).to_bytes(8, "big") + key
    elif kind is bool:
        out += b"T" if key else b"F"
    elif kind is int:
        data = key.to_bytes((key.bit_length() + 8) // 8 or 1, "big", signed=True)
        out += b"i" + len(data).to_bytes(8, "big") + data
    elif key is None:
        out += b"n"
    elif kind is tuple:
        out += b"t" + len(key).to_bytes(8, "big")
        for item in key:
            _encode(item, out, depth + 1)
    else:
        raise KeyGroupError(
            f"record key of type {kind.__qualname__} has no stable hash: use str, bytes, "
            "int, None or a tuple of these",
            key_type=kind.__qualname__)


def key_group(key: Any, max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> int:
    """The key group of ``key`` in ``range(max_parallelism)``; stable across processes."""
    _check_max(max_parallelism)
    digest = hashlib.blake2b(encode_key(key), digest_size=8).digest()
    return int.from_bytes(digest, "big") % max_parallelism


def key_group_range(index: int, parallelism: int,
                    max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> range:
    """The key groups instance ``index`` of ``parallelism`` instances owns (contiguous)."""
    _check_max(max_parallelism)
    if not 1 <= parallelism <= max_parallelism:
        raise KeyGroupError(
            f"parallelism {parallelism} is outside 1..{max_parallelism} (max_parallelism: "
            "each instance owns at least one key group)")
    if not 0 <= index < parallelism:
        raise KeyGroupError(f"instance index {index} is outside 0..{parallelism - 1}")
    return range(index * max_parallelism // parallelism,
                 (index + 1) * max_parallelism // parallelism)


def instance_of_group(group: int, parallelism: int,
                      max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> int:
    """The instance index that owns key group ``group``: the inverse of key_group_range."""
    _check_max(max_parallelism)
    if not 0 <= group < max_parallelism:
        raise KeyGroupError(f"key group {group} is outside 0..{max_parallelism - 1}")
    if not 1 <= parallelism <= max_parallelism:
        raise KeyGroupError(f"parallelism {parallelism} is outside 1..{max_parallelism}")
    # The largest i with i * m // p <= group.
    return ((group + 1) * parallelism - 1) // max_parallelism


def _check_max(max_parallelism: int) -> None:
    if type(max_parallelism) is not int or not 1 <= max_parallelism <= 32768:
        raise KeyGroupError(f"max_parallelism must be an int in 1..32768, got {max_parallelism!r}")
