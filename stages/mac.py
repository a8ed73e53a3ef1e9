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

The key comes from the ``key`` argument or, when that is None, the environment variable
:data:`KEY_ENV` (its UTF-8 bytes). When a key is configured, a generation without a MAC or
with a wrong one is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

__all__ = ["KEY_ENV", "MAC_SIZE", "PayloadMac", "equal", "header_mac", "resolve_key"]

KEY_ENV = "BLOCKPOINT_CHECKPOINT_KEY"
MAC_SIZE = 32
_PAYLOAD_TAG = b"blockpoint checkpoint payload v2\0"
_HEADER_TAG = b"blockpoint checkpoint header v2\0"


def resolve_key(key: bytes | str | None) -> bytes | None:
    """The key to use: ``key`` if given, else ``$BLOCKPOINT_CHECKPOINT_KEY``, else None."""
    if key is None:
        env = os.environ.get(KEY_ENV)
        return env.encode() if env else None
    if isinstance(key, str):
        key = key.encode()
    if not key:
        raise ValueError("an empty MAC key is not a key")
    return bytes(key)


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


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)
