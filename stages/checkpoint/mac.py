"""Authenticated checkpoints: a payload MAC and a header MAC under the configured key.

Pickle is code execution, so a checkpoint from an untrusted place must be authenticated
before anything is unpickled - and a forged header must not cost work before it is
rejected. So there are two MACs, both keyed with the configured key:

* the **payload MAC** over the serialized payload, in order (the writer hashes it in the
  pool while blocks are written, the reader as read batches land); stored in the header;
* the **header MAC** over the lease's id and name and the header's covered bytes with its
  MAC and CRC fields zeroed - the generation, the MAC algorithm id and the payload MAC
  included. A reader checks it right after the header CRC, before following the block map;
  a checkpoint copied into another lease (or replayed as another generation) fails it.

The algorithm is recorded in the header (``docs/FORMAT.md`` 2.1, 2.5; ids in
:mod:`blockstore.macs`): AES-GMAC for new generations by default (faster than the CRCs;
keyed BLAKE3 and HMAC-SHA256 are slower), keyed BLAKE3 or HMAC-SHA256 on request
(``CheckpointedStageState(mac="blake3")``), HMAC-SHA256 for every generation of format
versions 2 and 3. HMAC-SHA256 separates the two MACs by domain tags, the others by keys
derived per purpose (AES-GMAC: and per MAC, from a salt stored with it).

Keys are resolved by :func:`blockstore.keys.resolve_keys`, the one resolution shared with
documents and the scheduler registry: the ``key`` argument, or ``$BLOCKPOINT_CHECKPOINT_KEY``
plus ``$BLOCKPOINT_CHECKPOINT_OLD_KEYS`` (rotation). New MACs use the ring's current key;
a MAC made with any key of the ring verifies. When a key is configured, a generation
without a MAC or with a wrong one is refused. The header MAC names the key: the key whose
header MAC matches is the writer's, and only that key is tried on the (large) payload.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable

from blockstore import LeaseReader
from blockstore.keys import KEY_ENV, OLD_KEYS_ENV, KeyRing, KeySetting, resolve_keys
from blockstore.macs import (
    DEFAULT_MAC,
    MAC_ALGORITHMS,
    MAC_BLAKE3,
    MAC_HMAC_SHA256,
    MAC_SIZE,
    equal,
    new_mac,
)

from ..errors import CheckpointAuthError, UnauthenticatedRestoreWarning
from .format import Header

__all__ = ["DEFAULT_MAC", "KEY_ENV", "MAC_ALGORITHMS", "MAC_BLAKE3", "MAC_HMAC_SHA256",
           "MAC_ENV", "MAC_SIZE", "OLD_KEYS_ENV", "KeyRing", "KeySetting", "PayloadMac",
           "check_header_mac", "checkpoint_mac",
           "equal", "header_key", "header_mac", "resolve_keys", "warn_unauthenticated"]

#: HMAC-SHA256's domain tags (keyed BLAKE3 derives a key per purpose instead).
_PAYLOAD_TAG = b"blockpoint checkpoint payload v2\0"
_HEADER_TAG = b"blockpoint checkpoint header v2\0"
_warned_unauthenticated = threading.Event()


class PayloadMac:
    """Incremental payload MAC: feed the payload in order, then :meth:`digest`.

    To verify, pass the stored MAC as ``verifying`` (AES-GMAC takes its salt from it)."""

    def __init__(self, key: bytes, alg: int = MAC_BLAKE3, verifying: bytes | None = None) -> None:
        self._h = new_mac(alg, key, purpose="checkpoint payload", hmac_tag=_PAYLOAD_TAG,
                          verifying=verifying)

    def update_all(self, parts: Iterable[memoryview | bytes]) -> PayloadMac:
        for p in parts:
            self._h.update(p)
        return self

    def digest(self) -> bytes:
        return self._h.digest()


#: Names the MAC algorithm of new generations where the code gives none (``mac=None``):
#: ``"blake3"`` keeps checkpoints readable by a blockpoint from before AES-GMAC (format
#: version 4) during a staged upgrade or a rollback (docs/OPERATIONS.md).
MAC_ENV = "BLOCKPOINT_CHECKPOINT_MAC"


def checkpoint_mac(mac: str | None) -> int:
    """The algorithm id of new generations: ``mac``, else ``$BLOCKPOINT_CHECKPOINT_MAC``
    (stripped; unset or empty: :data:`DEFAULT_MAC`). Raises ``ValueError`` naming the
    argument or the variable for a name that is not an algorithm."""
    if mac is None:
        name = os.environ.get(MAC_ENV, "").strip() or DEFAULT_MAC
        where = f"${MAC_ENV}"
    else:
        name, where = mac, "mac"
    if name not in MAC_ALGORITHMS:
        raise ValueError(f"{where} must be one of {sorted(MAC_ALGORITHMS)}, got {name!r}")
    return MAC_ALGORITHMS[name]


def header_mac(key: bytes, lease_id: str, name: str, header_for_mac: bytes,
               alg: int = MAC_BLAKE3, verifying: bytes | None = None) -> bytes:
    """The header MAC, binding the header (and the payload MAC in it) to one lease
    (``verifying``: the stored MAC being checked, as for :class:`PayloadMac`)."""
    h = new_mac(alg, key, purpose="checkpoint header", hmac_tag=_HEADER_TAG,
                verifying=verifying)
    ident = lease_id.encode() + b"\0" + name.encode("utf-8", "surrogatepass") + b"\0"
    h.update(len(ident).to_bytes(4, "little"))
    h.update(ident)
    h.update(header_for_mac)
    return h.digest()


def header_key(ring: KeyRing, lease_id: str, name: str, header_for_mac: bytes,
               mac: bytes, alg: int = MAC_BLAKE3) -> bytes | None:
    """The key of ``ring`` under which ``mac`` is the header MAC, or None if none is."""
    for key in ring.all:
        if equal(header_mac(key, lease_id, name, header_for_mac, alg, verifying=mac), mac):
            return key
    return None


def check_header_mac(reader: LeaseReader, h: Header, key: KeySetting) -> bytes:
    """Authenticate a parsed header for this lease before anything it points to is read.

    ``key`` is a :class:`~blockstore.keys.KeyRing` (or one key): the header verifies if its
    MAC matches under any key of the ring (rotation), in the algorithm the header names
    (``docs/FORMAT.md`` 2.5). Cheap (one MAC of ~200 bytes per key).

    Returns:
        The key that verified it: the writer's, the one its payload MAC must match under.

    Raises:
        CheckpointAuthError: no MAC, or a MAC that matches under no key (wrong key, tampered
            header, or a header copied from another lease).
    """
    ring = resolve_keys(key)
    assert ring is not None
    where = f"lease {reader.name!r} ({reader.lease_id}) generation {h.generation}"
    ctx = {"lease_id": reader.lease_id, "name": reader.name, "generation": h.generation,
           "slot": h.slot}
    if not h.has_mac:
        raise CheckpointAuthError(f"{where} has no MAC but a checkpoint key is configured; "
                                  "refusing it", **ctx)
    found = header_key(ring, reader.lease_id, reader.name, h.for_mac(), h.mac, h.mac_algorithm)
    if found is None:
        raise CheckpointAuthError(f"{where}: header MAC mismatch under all {len(ring.all)} "
                                  "configured key(s) (wrong key, tampered header, or a "
                                  "checkpoint of another lease); nothing was followed",
                                  **ctx)
    return found


def warn_unauthenticated(where: str, stacklevel: int = 3) -> None:
    """Warn, once per process, that a pickle checkpoint of ``where`` is restored without a
    key (:class:`~stages.errors.UnauthenticatedRestoreWarning`); ``stacklevel`` as in
    :func:`warnings.warn`, counted from this function (3: its caller's caller)."""
    if _warned_unauthenticated.is_set():
        return
    _warned_unauthenticated.set()
    warnings.warn(
        f"restoring a pickle checkpoint of {where} without a checkpoint key: anyone who can "
        "write the store can run code in this process. Give a key to authenticate "
        "checkpoints - BLOCKPOINT_CHECKPOINT_KEY_FILE naming a 0600 key file (on a cluster: "
        "on every node, never in a runtime env), BLOCKPOINT_CHECKPOINT_KEY, or key= - or use codec='msgpack'. (Warned once per "
        "process.)", UnauthenticatedRestoreWarning, stacklevel=stacklevel)
