"""The scheduler's registry, persisted in the block store through a lease of its own.

The scheduler actor is detached and restartable (``max_restarts``); when Ray restarts it -
after a crash, or on another node when its node is lost - it must know again which stages
exist, where they ran, how to recreate them (their ``StageSpec``) and what it had decided.
So after every change of the registry it saves a *document* (a JSON-able dict: the
``PreemptionManager.snapshot()`` plus per-stage entries holding the pickled spec and actor
handle) here, and it loads the newest one when it starts.

Why a small format of its own rather than a ``CheckpointedStageState``: the registry is a
few kilobytes written often, by one writer, and must stay readable even while the stage
checkpoint format evolves; two header slots and a checksum are all it needs.

Layout of the registry lease (``B`` = the store's block size; little-endian):

=========  ======  =================================================================
block      bytes   content
=========  ======  =================================================================
0 and 1    0-3     magic ``b"BPSR"``
           4-7     format version (u32) = 1
           8-15    generation (u64), +1 per save, starts at 1
           16-23   payload length in bytes (u64)
           24-31   first payload block (u64, >= 2)
           32-35   CRC-32C of the payload (u32)
           36-39   flags (u32): bit 0 set when bytes 40-71 hold a MAC
           40-71   HMAC-SHA256 over bytes 0-39 and the payload, or zeros
           72-75   CRC-32C of bytes 0-71 (u32)
2 ...      all     payloads: UTF-8 JSON, ``ceil(length / B)`` consecutive blocks
=========  ======  =================================================================

Commit protocol (crash-safe at every point): a save writes its payload into blocks that
the newest valid record does not use, flushes, then writes its header into the *other*
header slot than the newest valid record's, and flushes again. A crash before the header
write leaves the previous record untouched and newest; a torn header fails its CRC and is
ignored. A reader takes the newest header that verifies and whose payload verifies, and
falls back to the other one otherwise - so at most one save is ever lost, never the registry.

Fencing: :meth:`RegistryStore.open` acquires the lease with ``steal=True``, which bumps its
epoch, so a previous incarnation of the scheduler that is still running (a zombie on a
partitioned node) can no longer write: the store refuses its stale epoch.

Authentication: when ``key`` is given (default: the ``BLOCKPOINT_CHECKPOINT_KEY``
environment variable, as for stage checkpoints), every header carries an HMAC-SHA256 and a
record without a valid MAC is skipped; the scheduler unpickles specs and handles only from
an authenticated (or, without a key, checksummed) document.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import struct
from dataclasses import dataclass
from typing import Any

from blockstore import BlockStore, Lease, crc32c, open_store
from blockstore.errors import BlockStoreError

from scheduler.errors import RegistryError

__all__ = ["REGISTRY_MAGIC", "REGISTRY_VERSION", "RegistryRecord", "RegistryStore"]

log = logging.getLogger(__name__)

REGISTRY_MAGIC = b"BPSR"
REGISTRY_VERSION = 1
_HEADER = struct.Struct("<4sIQQQII32s")  # bytes 0-71
_HEADER_CRC = struct.Struct("<I")  # bytes 72-75
_FIRST_PAYLOAD_BLOCK = 2
_FLAG_MAC = 1
_KEY_ENV = "BLOCKPOINT_CHECKPOINT_KEY"


@dataclass(frozen=True, slots=True)
class _Header:
    slot: int
    generation: int
    length: int
    first: int
    crc: int
    flags: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class RegistryRecord:
    """A loaded registry document.

    Attributes:
        generation: Its save number (grows by one per save).
        document: The JSON document as saved.
        skipped: ``(slot, reason)`` of newer header slots that failed verification.
    """

    generation: int
    document: dict[str, Any]
    skipped: tuple[tuple[int, str], ...] = ()


def _env_key() -> bytes | None:
    value = os.environ.get(_KEY_ENV)
    return value.encode() if value else None


class RegistryStore:
    """Load and save the scheduler's registry document in its own lease.

    Guarantees:
        * :meth:`save` is atomic: a crash at any point leaves the previous document (or the
          new one) loadable, never a mix.
        * :meth:`load` never returns a document that fails its checksum (or, with a key,
          its MAC).
        * Only the holder of the newest epoch can save (see the module docstring).

    Use as a context manager (opens on entry, releases the lease on exit).

    Args:
        store: A store, or a path/URL for :func:`blockstore.open_store`.
        name: The registry lease's name (one per scheduler, e.g. ``"_scheduler/ns"``).
        ttl: The lease's TTL; a keepalive thread renews it while open.
        key: MAC key; default from ``BLOCKPOINT_CHECKPOINT_KEY`` (no MAC if unset).
        holder: Holder name recorded in the lease (default: host:pid:random).
    """

    def __init__(self, store: BlockStore | str, name: str, *, ttl: float = 30.0,
                 key: bytes | None = None, holder: str | None = None) -> None:
        self._own_store = not isinstance(store, BlockStore)
        self._store: BlockStore = open_store(store) if isinstance(store, str) else store
        self.name = name
        self._ttl = ttl
        self._key = key if key is not None else _env_key()
        self._holder = holder
        self._lease: Lease | None = None
        # The newest valid header (slot, first, nblocks, generation) known to this writer.
        self._newest: tuple[int, int, int, int] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> BlockStore:
        """The block store holding the registry lease."""
        return self._store

    @property
    def lease(self) -> Lease | None:
        """The held lease while open, else ``None``."""
        return self._lease

    def open(self) -> RegistryRecord | None:
        """Take the registry lease (fencing any previous holder) and load the newest document.

        Returns:
            The newest valid document, or ``None`` if the registry is empty.

        Raises:
            RegistryError: the store refused, or headers exist but none verifies.
        """
        if self._lease is None:
            try:
                self._lease = self._store.acquire(self.name, holder=self._holder, ttl=self._ttl,
                                                  steal=True, keepalive=True)
            except BlockStoreError as exc:
                raise RegistryError(self.name, f"cannot acquire the registry lease: {exc}") from exc
        return self.load()

    def close(self) -> None:
        """Release the lease (the documents stay). Closing twice is harmless."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
        if self._own_store:
            self._store.close()

    def __enter__(self) -> RegistryStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ read

    def load(self) -> RegistryRecord | None:
        """Return the newest document that verifies, or ``None`` if none was ever saved.

        Works without holding the lease (reads need no epoch), e.g. from the CLI.

        Raises:
            RegistryError: headers were written but no record verifies.
        """
        try:
            info = self._store.find(self.name)
            if info is None or info.num_blocks == 0:
                self._newest = None
                return None
            reader = self._store.open_reader(info.lease_id)
            count = min(info.num_blocks, 2)
            raw_headers = reader.read_blocks(list(range(count)))
        except BlockStoreError as exc:
            raise RegistryError(self.name, f"cannot read the registry lease: {exc}") from exc
        headers: list[_Header] = []
        skipped: list[tuple[int, str]] = []
        written = False
        for slot, block in enumerate(raw_headers):
            if block[:4] != b"\x00\x00\x00\x00":
                written = True
            header, why = self._parse_header(slot, block)
            if header is None:
                if why:
                    skipped.append((slot, why))
                continue
            headers.append(header)
        headers.sort(key=lambda h: h.generation, reverse=True)
        bs = self._store.block_size
        for header in headers:
            nblocks = (header.length + bs - 1) // bs
            try:
                if header.first < _FIRST_PAYLOAD_BLOCK or header.first + nblocks > info.num_blocks:
                    raise ValueError(f"payload blocks {header.first}+{nblocks} beyond the lease")
                buf = bytearray(nblocks * bs)
                if nblocks:
                    reader.read_run_into(header.first, memoryview(buf))
                payload = bytes(buf[:header.length])
                if crc32c(payload) != header.crc:
                    raise ValueError("payload checksum mismatch")
                if self._key is not None:
                    if not header.flags & _FLAG_MAC:
                        raise ValueError("record has no MAC but a key is configured")
                    if not hmac.compare_digest(self._mac(header, payload), header.mac):
                        raise ValueError("MAC mismatch")
                document = json.loads(payload.decode("utf-8"))
                if not isinstance(document, dict):
                    raise ValueError("document is not a JSON object")
            except (ValueError, BlockStoreError, UnicodeDecodeError) as exc:
                skipped.append((header.slot, f"generation {header.generation}: {exc}"))
                continue
            self._newest = (header.slot, header.first, nblocks, header.generation)
            if skipped:
                log.warning("registry %s: loaded generation %d, skipped %s",
                            self.name, header.generation, skipped)
            return RegistryRecord(header.generation, document, tuple(skipped))
        self._newest = None
        if written:
            raise RegistryError(self.name, f"no registry record verifies: {skipped}")
        return None

    def _parse_header(self, slot: int, block: bytes) -> tuple[_Header | None, str]:
        end = _HEADER.size + _HEADER_CRC.size
        if len(block) < end or block[:end] == bytes(end):
            return None, ""
        magic, version, generation, length, first, crc, flags, mac = _HEADER.unpack_from(block)
        (stored_crc,) = _HEADER_CRC.unpack_from(block, _HEADER.size)
        if crc32c(block[:_HEADER.size]) != stored_crc:
            return None, "header checksum mismatch"
        if magic != REGISTRY_MAGIC:
            return None, f"bad magic {magic!r}"
        if version != REGISTRY_VERSION:
            return None, f"unsupported version {version}"
        return _Header(slot, generation, length, first, crc, flags, mac), ""

    def _mac(self, header: _Header | tuple[int, int, int, int, int], payload: bytes) -> bytes:
        assert self._key is not None
        if isinstance(header, _Header):
            fields = (header.generation, header.length, header.first, header.crc, header.flags)
        else:
            fields = header
        prefix = struct.pack("<4sIQQQII", REGISTRY_MAGIC, REGISTRY_VERSION, *fields)
        return hmac.new(self._key, prefix + payload, hashlib.sha256).digest()

    # ------------------------------------------------------------------ write

    def save(self, document: dict[str, Any]) -> int:
        """Persist ``document`` atomically (payload, flush, header, flush).

        Returns:
            The new generation.

        Raises:
            RegistryError: not open, fenced by a newer holder (``StaleLeaseError`` as the
                cause), or an I/O error; the previous document stays loadable.
            TypeError: ``document`` is not JSON-serialisable.
        """
        lease = self._lease
        if lease is None:
            raise RegistryError(self.name, "not open")
        payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
        bs = self._store.block_size
        nblocks = (len(payload) + bs - 1) // bs
        newest = self._newest
        if newest is None:
            slot, generation, first = 0, 1, _FIRST_PAYLOAD_BLOCK
        else:
            n_slot, n_first, n_blocks, n_gen = newest
            slot, generation = 1 - n_slot, n_gen + 1
            # Never overwrite the newest valid record's payload.
            if _FIRST_PAYLOAD_BLOCK + nblocks <= n_first:
                first = _FIRST_PAYLOAD_BLOCK
            else:
                first = max(n_first + n_blocks, _FIRST_PAYLOAD_BLOCK)
        crc = crc32c(payload)
        flags = _FLAG_MAC if self._key is not None else 0
        mac = self._mac((generation, len(payload), first, crc, flags), payload) \
            if self._key is not None else bytes(32)
        head = _HEADER.pack(REGISTRY_MAGIC, REGISTRY_VERSION, generation, len(payload), first,
                            crc, flags, mac)
        head += _HEADER_CRC.pack(crc32c(head))
        try:
            lease.grow(first + nblocks)
            if nblocks:
                view = memoryview(payload)
                lease.write_blocks({first + i: view[i * bs:(i + 1) * bs] for i in range(nblocks)})
                lease.flush()
            lease.write_blocks({slot: head})
            lease.flush()
        except BlockStoreError as exc:
            raise RegistryError(self.name, f"save of generation {generation} failed: {exc}") from exc
        self._newest = (slot, first, nblocks, generation)
        return generation
