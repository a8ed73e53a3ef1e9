"""Authenticated checkpoints: HMAC-SHA256 over payload and header (stdlib only).

Pickle is code execution, so a checkpoint from an untrusted place must be authenticated
before anything is unpickled. The MAC is HMAC-SHA256 with the configured key over the whole
serialized payload (in order) followed by the header's covered bytes with its MAC and CRC
fields zeroed. Payload first, so the writer can hash the payload in a background thread while
blocks are written and add the header, known only at commit, last.

The key comes from the ``key`` argument or, when that is None, the environment variable
:data:`KEY_ENV` (its UTF-8 bytes). When a key is configured, a generation without a MAC or
with a wrong one is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable

__all__ = ["KEY_ENV", "MAC_SIZE", "PayloadMac", "resolve_key"]

KEY_ENV = "BLOCKPOINT_CHECKPOINT_KEY"
MAC_SIZE = 32


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
    """Incremental MAC: feed the payload in order, then :meth:`finish` with the header."""

    def __init__(self, key: bytes) -> None:
        self._h = hmac.new(key, digestmod=hashlib.sha256)

    def update_all(self, parts: Iterable[memoryview | bytes]) -> PayloadMac:
        for p in parts:
            self._h.update(p)
        return self

    def finish(self, header_for_mac: bytes) -> bytes:
        h = self._h.copy()
        h.update(header_for_mac)
        return h.digest()


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)
