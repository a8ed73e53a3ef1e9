"""Checkpoint keys: the one place where the MAC key setting is read and resolved.

Stage checkpoints (``stages/checkpoint/mac.py``, ``stages/checkpoint/reader.py``, ``stages/checkpoint/state.py``), slotted
documents (``blockstore/document.py``, whose key comes from its callers) and the scheduler's
registry (``scheduler/registry.py``) all authenticate with the same key setting, so they all
resolve it here, with :func:`resolve_keys`. It lives in ``blockstore`` because documents are
a blockstore mechanism and ``blockstore`` imports nothing of ours.

Why a key *ring*: keys must be rotated without making old checkpoints unreadable. A
:class:`KeyRing` holds the **current** key - the only one anything is written with - and any
number of **old** keys, accepted when verifying. Rotation is then: add the new key as
current and the previous one as old on every node; once every retained generation and
document has been rewritten (``retention`` checkpoints later), drop the old key.

The setting:

* ``BLOCKPOINT_CHECKPOINT_KEY``: the current key (its UTF-8 bytes);
* ``BLOCKPOINT_CHECKPOINT_OLD_KEYS``: old keys, comma-separated (so a key never contains a
  comma); empty items are ignored. Old keys without a current key are a configuration error.

Both are read from the process environment when the key is resolved (never at import), so
Ray actors pick them up from Ray's runtime environment:
``ray.init(runtime_env={"env_vars": {"BLOCKPOINT_CHECKPOINT_KEY": ...}})`` or
``Actor.options(runtime_env={"env_vars": {...}})`` - Ray sets ``env_vars`` in the worker
process before the actor is constructed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import KeySettingError

__all__ = ["KEY_ENV", "OLD_KEYS_ENV", "KeyRing", "KeySetting", "resolve_keys"]

KEY_ENV = "BLOCKPOINT_CHECKPOINT_KEY"
OLD_KEYS_ENV = "BLOCKPOINT_CHECKPOINT_OLD_KEYS"


def _as_key(value: bytes | bytearray | str, what: str) -> bytes:
    if isinstance(value, str):
        try:
            value = value.encode()
        except UnicodeEncodeError:
            # ``from None``: the UnicodeEncodeError's ``.object`` is the key itself. An
            # environment value that is not UTF-8 arrives here with surrogate escapes.
            raise KeySettingError(f"{what} is not valid UTF-8 text (keys are the UTF-8 "
                                  "bytes of a string; set a key that is)") from None
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")
    if not value:
        raise KeySettingError(f"an empty {what} is not a key")
    return bytes(value)


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys of one reader/writer: write with ``current``, verify with any of ``all``.

    Attributes:
        current: the key every new MAC is computed with.
        old: keys still accepted when verifying (rotation), newest first by convention.
    """

    current: bytes
    old: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.current, bytes) or not self.current:
            raise ValueError("the current key must be non-empty bytes")
        if any(not isinstance(k, bytes) or not k for k in self.old):
            raise ValueError("old keys must be non-empty bytes")

    @property
    def all(self) -> tuple[bytes, ...]:
        """Every key accepted for verification: the current one first, then the old ones."""
        return (self.current, *(k for k in self.old if k != self.current))

    def __repr__(self) -> str:  # never print key material
        return f"KeyRing(current=<{len(self.current)} bytes>, old=<{len(self.old)} keys>)"


#: What callers may pass where a key is asked for: a ring, one key (bytes or str), or a
#: sequence of keys (the first is the current one).
KeySetting = KeyRing | bytes | bytearray | str | Sequence[bytes | str] | None


def resolve_keys(key: KeySetting = None, *,
                 environ: Mapping[str, str] | None = None) -> KeyRing | None:
    """The key ring to use: from ``key`` when given, else from the environment.

    ``key`` may be a :class:`KeyRing` (returned as is), one key (``bytes`` or ``str``, UTF-8),
    or a sequence of keys whose first is the current one. ``None`` reads
    :data:`KEY_ENV` and :data:`OLD_KEYS_ENV` from ``environ`` (default ``os.environ``, read
    now). Returns ``None`` when no key is configured.

    Raises:
        KeySettingError: (a ``ValueError``) an empty key, a ``str`` key that is not valid
            UTF-8 (an environment value with bytes that are not), or old keys configured
            without a current key. The message names the setting, never the key.
        TypeError: a key that is neither bytes nor str.
    """
    if isinstance(key, KeyRing):
        return key
    if key is None:
        env = os.environ if environ is None else environ
        current = env.get(KEY_ENV, "")
        old = tuple(_as_key(k, f"key in ${OLD_KEYS_ENV}")
                    for k in env.get(OLD_KEYS_ENV, "").split(",") if k)
        if not current:
            if old:
                raise KeySettingError(f"${OLD_KEYS_ENV} is set but ${KEY_ENV} is not: set "
                                      "the current key (checkpoints are written with it)")
            return None
        return KeyRing(_as_key(current, f"${KEY_ENV}"), old)
    if isinstance(key, (bytes, bytearray, str)):
        return KeyRing(_as_key(key, "key"))
    keys = [_as_key(k, "key") for k in key]
    if not keys:
        raise KeySettingError("an empty sequence of keys is not a key")
    return KeyRing(keys[0], tuple(keys[1:]))
