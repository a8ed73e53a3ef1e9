"""Authenticated checkpoints: HMAC-SHA256 over the header and the payload (stdlib only).

Pickle is code execution, so a checkpoint from an untrusted place must be authenticated
before anything is unpickled - and a forged header must not cost work before it is
rejected. So there are two MACs, both keyed with the configured key:

* the **payload MAC**: HMAC-SHA256 over the serialized payload, in order (the writer hashes it
  in a background thread while blocks are written); stored in the header;
* the **header MAC**: HMAC-SHA256 over a domain tag, the lease's id and name, and the header's
  covered bytes with its MAC and CRC fields zeroed - the generation and the payload MAC
  included. A reader checks it right after the header CRC, before following the block map;
  a checkpoint copied into another lease (or replayed as another generation) fails it.

Keys are resolved by :func:`blockstore.keys.resolve_keys`, the one resolution shared with
documents and the scheduler registry: the ``key`` argument, or ``$BLOCKPOINT_CHECKPOINT_KEY``
plus ``$BLOCKPOINT_CHECKPOINT_OLD_KEYS`` (rotation). New MACs use the ring's current key;
a MAC made with any key of the ring verifies. When a key is configured, a generation
without a MAC or with a wrong one is refused. The header MAC names the key: the key whose
header MAC matches is the writer's, and only that key is tried on the (large) payload.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import warnings
from collections.abc import Iterable

from blockstore.keys import KEY_ENV, OLD_KEYS_ENV, KeyRing, KeySetting, resolve_keys

from ..errors import UnauthenticatedRestoreWarning

__all__ = ["KEY_ENV", "MAC_SIZE", "OLD_KEYS_ENV", "KeyRing", "KeySetting", "PayloadMac",
           "equal", "header_key", "header_mac", "resolve_keys", "warn_unauthenticated"]

MAC_SIZE = 32
_PAYLOAD_TAG = b"blockpoint checkpoint payload v2\0"
_HEADER_TAG = b"blockpoint checkpoint header v2\0"
_warned_unauthenticated = threading.Event()


class PayloadMac:
    """Incremental payload MAC: feed the payload in order, then :meth:`digest`."""

    def __init__(self, key: bytes) -> None:
        self._h = hmac.new(key, _PAYLOAD_TAG, digestmod=hashlib.sha256)

    def update_all(self, parts: Iterable[memoryview | bytes]) -> PayloadMac:
        for p in parts:
            self._h.update(p)
        return self

    def digest(self) -> bytes:
        return self._h.digest()


def header_mac(key: bytes, lease_id: str, name: str, header_for_mac: bytes) -> bytes:
    """The header MAC, binding the header (and the payload MAC in it) to one lease."""
    h = hmac.new(key, _HEADER_TAG, digestmod=hashlib.sha256)
    ident = lease_id.encode() + b"\0" + name.encode("utf-8", "surrogatepass") + b"\0"
    h.update(len(ident).to_bytes(4, "little"))
    h.update(ident)
    h.update(header_for_mac)
    return h.digest()


def header_key(ring: KeyRing, lease_id: str, name: str, header_for_mac: bytes,
               mac: bytes) -> bytes | None:
    """The key of ``ring`` under which ``mac`` is the header MAC, or None if none is."""
    for key in ring.all:
        if equal(header_mac(key, lease_id, name, header_for_mac), mac):
            return key
    return None


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)


def warn_unauthenticated(where: str) -> None:
    """Warn, once per process, that a pickle checkpoint of ``where`` is restored without a
    key (:class:`~stages.errors.UnauthenticatedRestoreWarning`)."""
    if _warned_unauthenticated.is_set():
        return
    _warned_unauthenticated.set()
    warnings.warn(
        f"restoring a pickle checkpoint of {where} without a checkpoint key: anyone who can "
        "write the store can run code in this process. Set BLOCKPOINT_CHECKPOINT_KEY (or "
        "pass key=) to authenticate checkpoints, or use codec='msgpack'. (Warned once per "
        "process.)", UnauthenticatedRestoreWarning, stacklevel=3)
