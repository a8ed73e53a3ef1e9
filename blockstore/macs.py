"""MAC algorithms: their ids in the formats, and their keys' derivation.

Checkpoints (``stages/checkpoint/mac.py``), slotted documents (``blockstore/document.py``)
and their log records (``blockstore/doclog.py``) all authenticate
under the configured keys (``blockstore/keys.py``) and all record which
algorithm a MAC was made with, by the ids below (``docs/FORMAT.md`` 2.5 and 5.1), so that
data written before the default changed is still read.

Why AES-GMAC is the default (since 2026-12-07; keyed BLAKE3 before): a keyed checkpoint
hashes every payload byte. HMAC-SHA256 runs at ~1.3 GB/s here - slower than the disk -, keyed
BLAKE3 at ~4.5-5.7 GB/s on one thread, and GMAC (GHASH on carry-less multiplication, AES-NI;
OpenSSL through the ``cryptography`` package) at ~20 GB/s, faster than CRC-32C's ~12 GB/s
(``BENCHMARKS.md``, issue 23). Keyed BLAKE3 still cost ~45-58 ms of a core per 256 MiB, which
a keyed checkpoint on two busy cores paid as 1.14-1.18x the unkeyed one. HMAC-SHA256 and
keyed BLAKE3 stay readable, and writable on request.

Keyed BLAKE3 takes a 32-byte key, while a configured key is any non-empty byte string. The
32-byte key is derived with BLAKE3's own key derivation mode, one **context string** per
purpose (:data:`CONTEXTS`), so the payload MAC, the header MAC and a document MAC are made
under three unrelated keys and never stand in for each other::

    mac_key(purpose) = BLAKE3-derive_key(context = CONTEXTS[purpose], key material = key)

AES-GMAC (id 3) must never use one AES key and nonce for two messages (that would reveal
its hash key). So every GMAC is made under a key of its own, derived from a 16-byte random
**salt** that is stored with the tag - the 32-byte MAC field holds ``salt || tag``::

    gmac_key(purpose)   = BLAKE3-derive_key(context = GMAC_CONTEXTS[purpose], key material = key)
    K_m                 = BLAKE3-keyed(gmac_key(purpose), salt)        (32 bytes: AES-256)
    MAC                 = salt || GCM-tag(K_m, IV = 12 zero bytes, A = message, P = empty)

A verifier takes the salt from the MAC it checks (``verifying=``); a forger choosing a salt
gains nothing, since ``K_m`` depends on the secret key. The GMAC contexts differ from the
BLAKE3 ones, so no keyed-BLAKE3 MAC (which anyone who can read the store sees) is ever an
AES key.

The derived keys are cached per (key, purpose): a ring's keys are tried on every header.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os

import blake3
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "CONTEXTS",
    "GMAC_CONTEXTS",
    "SALT_SIZE",
    "MAC_ALGORITHMS",
    "MAC_BLAKE3",
    "MAC_GMAC",
    "MAC_HMAC_SHA256",
    "MAC_NONE",
    "MAC_SIZE",
    "DEFAULT_MAC",
    "DOCUMENT_MAC",
    "algorithm_id",
    "algorithm_name",
    "blake3_key",
    "gmac_key",
    "equal",
    "new_mac",
]

MAC_SIZE = 32
#: Algorithm ids as the formats store them (a u8 in a checkpoint header, a u32 in a
#: document header). 0: no MAC.
MAC_NONE = 0
MAC_HMAC_SHA256 = 1
MAC_BLAKE3 = 2
MAC_GMAC = 3
#: The names a writer is configured with, and their ids.
MAC_ALGORITHMS = {"hmac-sha256": MAC_HMAC_SHA256, "blake3": MAC_BLAKE3, "aes-gmac": MAC_GMAC}
DEFAULT_MAC = "aes-gmac"
#: The default of documents and document log records: keyed BLAKE3. A document is small (the
#: MAC's speed does not show), and a blockpoint from before AES-GMAC skips a document slot of
#: an id it does not know as damage and may then save over it - so documents, which several
#: versions of blockpoint may share during an upgrade (the scheduler registry, runs,
#: LangGraph threads), keep the MAC every version since 2026-12-02 reads. Checkpoints carry
#: AES-GMAC in a format version of its own (5), which older readers refuse as newer.
DOCUMENT_MAC = "blake3"
#: AES-GMAC: the salt's length at the start of the MAC field; the tag fills the rest.
SALT_SIZE = 16
_NAMES = {v: k for k, v in MAC_ALGORITHMS.items()}

#: BLAKE3 key-derivation contexts, one per purpose (BLAKE3's recommended form: application,
#: a fixed date, purpose). Changing one changes every MAC made for that purpose.
CONTEXTS = {
    "checkpoint payload": "blockpoint 2026-12-02 checkpoint payload MAC key",
    "checkpoint header": "blockpoint 2026-12-02 checkpoint header MAC key",
    "document": "blockpoint 2026-12-02 document MAC key",
    "document log": "blockpoint 2026-12-02 document log record MAC key",
}
#: AES-GMAC's key-derivation contexts, one per purpose, unrelated to :data:`CONTEXTS`.
GMAC_CONTEXTS = {
    "checkpoint payload": "blockpoint 2026-12-07 checkpoint payload GMAC key",
    "checkpoint header": "blockpoint 2026-12-07 checkpoint header GMAC key",
    "document": "blockpoint 2026-12-07 document GMAC key",
    "document log": "blockpoint 2026-12-07 document log record GMAC key",
}
_GMAC_IV = bytes(12)


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


@functools.lru_cache(maxsize=64)
def gmac_key(key: bytes, purpose: str) -> bytes:
    """The 32-byte key of ``key`` for ``purpose`` from which AES-GMAC's per-MAC keys are
    derived (a key of :data:`GMAC_CONTEXTS`)."""
    return blake3.blake3(key, derive_key_context=GMAC_CONTEXTS[purpose]).digest()


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """``data`` as bytes every MAC takes: a view of other items (a float32 payload segment,
    a 2-D array) is cast to its bytes; blake3 and OpenSSL refuse such views."""
    if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
        return data.cast("B")
    return data


class _Hmac:
    __slots__ = ("_h",)

    def __init__(self, key: bytes, tag: bytes) -> None:
        self._h = hmac.new(key, tag, digestmod=hashlib.sha256)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(_as_bytes(data))

    def digest(self) -> bytes:
        return self._h.digest()


class _Blake3:
    __slots__ = ("_h",)

    def __init__(self, key: bytes, purpose: str) -> None:
        self._h = blake3.blake3(key=blake3_key(key, purpose))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(_as_bytes(data))

    def digest(self) -> bytes:
        return self._h.digest()


class _Gmac:
    __slots__ = ("_salt", "_enc", "_mac")

    def __init__(self, key: bytes, purpose: str, verifying: bytes | None) -> None:
        if verifying is not None and len(verifying) == MAC_SIZE:
            self._salt = bytes(verifying[:SALT_SIZE])
        else:  # writing (or a malformed MAC, which then cannot match)
            self._salt = os.urandom(SALT_SIZE)
        k_m = blake3.blake3(self._salt, key=gmac_key(key, purpose)).digest()
        self._enc = Cipher(algorithms.AES(k_m), modes.GCM(_GMAC_IV)).encryptor()
        self._mac: bytes | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        data = _as_bytes(data)
        if len(data):
            self._enc.authenticate_additional_data(data)

    def digest(self) -> bytes:
        if self._mac is None:
            self._enc.finalize()
            self._mac = self._salt + self._enc.tag
        return self._mac


def new_mac(alg: int, key: bytes, *, purpose: str, hmac_tag: bytes = b"",
            verifying: bytes | None = None) -> _Hmac | _Blake3 | _Gmac:
    """An incremental MAC (``update``, ``digest``) of algorithm ``alg`` under ``key``.

    HMAC-SHA256 is keyed with ``key`` as is and starts with ``hmac_tag`` (its domain tag,
    as the formats define it); keyed BLAKE3 is keyed with :func:`blake3_key` of ``purpose``
    (its domain separation) and takes no tag; AES-GMAC is keyed per MAC from a salt - a new
    random one to write, the one in ``verifying`` (the MAC being checked) to verify - so a
    verifier MUST pass the stored MAC. The other algorithms ignore ``verifying``.
    ``digest()`` may be called more than once and then returns the same MAC.
    """
    if alg == MAC_GMAC:
        return _Gmac(key, purpose, verifying)
    if alg == MAC_BLAKE3:
        return _Blake3(key, purpose)
    if alg == MAC_HMAC_SHA256:
        return _Hmac(key, hmac_tag)
    raise ValueError(f"unknown MAC algorithm id {alg}")


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a, b)
