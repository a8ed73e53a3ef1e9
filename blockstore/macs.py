"""MAC algorithms: their ids in the formats, and keyed BLAKE3's key derivation.

Checkpoints (``stages/checkpoint/mac.py``), slotted documents (``blockstore/document.py``)
and their log records (``blockstore/doclog.py``) all authenticate
under the configured keys (``blockstore/keys.py``) and all record which
algorithm a MAC was made with, by the ids below (``docs/FORMAT.md`` 2.5 and 5.1), so that
data written before the default changed is still read.

Why keyed BLAKE3 is the default: a keyed checkpoint hashes every payload byte, and
HMAC-SHA256 runs at ~1.3 GB/s here - slower than the disk - while keyed BLAKE3 (the ``blake3``
package, Rust, SIMD, releases the GIL) runs at ~5.7 GB/s on one thread, beside CRC-32C's
~12 GB/s (``BENCHMARKS.md``). HMAC-SHA256 stays readable, and writable on request.

Keyed BLAKE3 takes a 32-byte key, while a configured key is any non-empty byte string. The
32-byte key is derived with BLAKE3's own key derivation mode, one **context string** per
purpose (:data:`CONTEXTS`), so the payload MAC, the header MAC and a document MAC are made
under three unrelated keys and never stand in for each other::

    mac_key(purpose) = BLAKE3-derive_key(context = CONTEXTS[purpose], key material = key)

The derived keys are cached per (key, purpose): a ring's keys are tried on every header.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

import blake3

__all__ = [
    "CONTEXTS",
    "MAC_ALGORITHMS",
    "MAC_BLAKE3",
    "MAC_HMAC_SHA256",
    "MAC_NONE",
    "MAC_SIZE",
    "DEFAULT_MAC",
    "algorithm_id",
    "algorithm_name",
    "blake3_key",
    "equal",
    "new_mac",
]

MAC_SIZE = 32
#: Algorithm ids as the formats store them (a u8 in a checkpoint header, a u32 in a
#: document header). 0: no MAC.
MAC_NONE = 0
MAC_HMAC_SHA256 = 1
MAC_BLAKE3 = 2
#: The names a writer is configured with, and their ids.
MAC_ALGORITHMS = {"hmac-sha256": MAC_HMAC_SHA256, "blake3": MAC_BLAKE3}
DEFAULT_MAC = "blake3"
_NAMES = {v: k for k, v in MAC_ALGORITHMS.items()}

#: BLAKE3 key-derivation contexts, one per purpose (BLAKE3's recommended form: application,
#: a fixed date, purpose). Changing one changes every MAC made for that purpose.
CONTEXTS = {
    "checkpoint payload": "blockpoint 2026-12-02 checkpoint payload MAC key",
    "checkpoint header": "blockpoint 2026-12-02 checkpoint header MAC key",
    "document": "blockpoint 2026-12-02 document MAC key",
    "document log": "blockpoint 2026-12-02 document log record MAC key",
}


def algorithm_id(name: str) -> int:
    """The id of a MAC algorithm given by name (``"blake3"``, ``"hmac-sha256"``)."""
    try:
        return MAC_ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"mac must be one of {sorted(MAC_ALGORITHMS)}, got {name!r}") from None


def algorithm_name(alg: int) -> str:
    """The name of an algorithm id (``"none"`` for 0)."""
    return _NAMES.get(alg, "none" if alg == MAC_NONE else f"unknown ({alg})")


@functools.lru_cache(maxsize=64)
def blake3_key(key: bytes, purpose: str) -> bytes:
    """The 32-byte keyed-BLAKE3 key of ``key`` for ``purpose`` (a key of :data:`CONTEXTS`)."""
    return blake3.blake3(key, derive_key_context=CONTEXTS[purpose]).digest()


class _Hmac:
    __slots__ = ("_h",)

    def __init__(self, key: bytes, tag: bytes) -> None:
        self._h = hmac.new(key, tag, digestmod=hashlib.sha256)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


class _Blake3:
    __slots__ = ("_h",)

    def __init__(self, key: bytes, purpose: str) -> None:
        self._h = blake3.blake3(key=blake3_key(key, purpose))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


def new_mac(alg: int, key: bytes, *, purpose: str, hmac_tag: bytes = b"") -> _Hmac | _Blake3:
    """An incremental MAC (``update``, ``digest``) of algorithm ``alg`` under ``key``.

    HMAC-SHA256 is keyed with ``key`` as is and starts with ``hmac_tag`` (its domain tag,
    as the formats define it); keyed BLAKE3 is keyed with :func:`blake3_key` of ``purpose``
    (its domain separation) and takes no tag.
    """
    if alg == MAC_BLAKE3:
        return _Blake3(key, purpose)
    if alg == MAC_HMAC_SHA256:
        return _Hmac(key, hmac_tag)
    raise ValueError(f"unknown MAC algorithm id {alg}")


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)
