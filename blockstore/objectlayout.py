"""The object layout of an object-store block store: keys, the lease record, the block map.

Pure functions and values, no I/O, so the layout (specified in docs/FORMAT.md, "Object
store layout") is defined in one place and tested without a server. Keys are relative to
the store's prefix::

    blockpoint-store.json                       store metadata, created once (If-None-Match)
    leases/<name-key>.json                      the lease record = the commit point
    ids/<lease_id>                              the lease's name (hint for lookups by id)
    blocks/<lease_id>/<generation>/<index>      one block, immutable once published

``<generation>`` is ``e<epoch>.<token>``: the holder's epoch and a random token per flush
cycle, so every flush of every holder writes under a prefix nobody else uses and no
published object is ever overwritten. The record lists, per block index, the generation
whose object holds it (run-length encoded); an object the record does not list is
invisible, whatever its key.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import StoreCorruptError, StoreVersionError
from .lease import LeaseInfo

__all__ = [
    "DOOM_WINDOW",
    "LEASES",
    "META_KEY",
    "LeaseRecord",
    "block_key",
    "blocks_prefix",
    "decode_record",
    "encode_record",
    "id_key",
    "name_key",
    "new_generation",
    "parse_block_key",
]

META_KEY = "blockpoint-store.json"
META_FORMAT = "blockpoint-object-store"
RECORD_FORMAT = "blockpoint-lease"
VERSION = 1
LEASES = "leases/"
#: Seconds a doomed tombstone is left alone by creators (the gc that doomed it deletes it at
#: once, and never later than half of this after its doom put was sent).
DOOM_WINDOW = 30.0
IDS = "ids/"
BLOCKS = "blocks/"

_SAFE = re.compile(r"[A-Za-z0-9._-]")
_GENERATION = re.compile(r"^e(\d+)\.([0-9a-f]{8,32})$")


def name_key(name: str) -> str:
    """The record key of lease ``name``: letters, digits and ``._-`` kept, every other byte
    written as ``~XX`` (so ``run/a/step/1`` is ``leases/run~2Fa~2Fstep~2F1.json``)."""
    out = []
    for ch in name:
        if _SAFE.match(ch):
            out.append(ch)
        else:
            # surrogatepass: a lone surrogate names no lease (check_name refuses it), but a
            # lookup by it must find nothing, not fail to build the key.
            out.extend(f"~{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return f"{LEASES}{''.join(out)}.json"


def id_key(lease_id: str) -> str:
    return f"{IDS}{lease_id}"


def blocks_prefix(lease_id: str) -> str:
    return f"{BLOCKS}{lease_id}/"


def new_generation(epoch: int) -> str:
    """A fresh generation name for one flush cycle of the holder of ``epoch``."""
    return f"e{epoch}.{secrets.token_hex(4)}"


def block_key(lease_id: str, generation: str, index: int) -> str:
    return f"{BLOCKS}{lease_id}/{generation}/{index}"


def parse_block_key(key: str) -> tuple[str, str, int, int] | None:
    """``(lease_id, generation, epoch, index)`` of a block key, or ``None`` if it is not one."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] + "/" != BLOCKS or not parts[3].isdigit():
        return None
    m = _GENERATION.match(parts[2])
    if m is None:
        return None
    return parts[1], parts[2], int(m.group(1)), int(parts[3])


def encode_meta(block_size: int) -> bytes:
    return json.dumps({"format": META_FORMAT, "version": VERSION,
                       "block_size": block_size}).encode()


def decode_meta(raw: bytes, where: str) -> int:
    """The block size recorded in the store metadata; ``StoreCorruptError`` if unreadable."""
    try:
        meta = json.loads(raw)
        fmt, version, bs = meta["format"], int(meta["version"]), int(meta["block_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreCorruptError(f"store metadata {where} is unreadable: {exc}",
                                path=where) from exc
    if fmt != META_FORMAT:
        raise StoreCorruptError(f"{where} is not blockpoint store metadata (format {fmt!r})",
                                path=where)
    if version > VERSION:
        raise StoreVersionError(f"{where} has version {version}; this blockpoint reads up "
                                f"to {VERSION}", path=where, version=version,
                                supported=VERSION)
    return bs


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """One lease record as stored: the lease's fields (times in the store's clock), the
    block map, and the writer's nonce.

    Attributes:
        info: the lease fields; ``expires_at`` and ``created_at`` are in the store's clock.
        ttl: the TTL of the last acquire or renew (seconds).
        blocks: block index -> generation whose object holds it.
        nonce: random per record write, so a writer whose conditional put got an ambiguous
            answer (a retried request) can tell whether the record now is its own.
        deleted: a tombstone: the lease was deleted; a new lease may replace it.
        doomed_at: on a tombstone, when (store clock) a gc marked it for removal; until
            ``doomed_at + DOOM_WINDOW`` nobody replaces it (docs/FORMAT.md 6.4). 0.0: not.
    """

    info: LeaseInfo
    ttl: float
    blocks: Mapping[int, str] = field(default_factory=dict)
    nonce: str = ""
    deleted: bool = False
    doomed_at: float = 0.0


def _runs(blocks: Mapping[int, str]) -> list[list[Any]]:
    """``[[first, count, generation], ...]``: consecutive indices of one generation folded."""
    runs: list[list[Any]] = []
    for i in sorted(blocks):
        g = blocks[i]
        if runs and runs[-1][2] == g and runs[-1][0] + runs[-1][1] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, 1, g])
    return runs


def _unruns(runs: Iterable[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for first, count, gen in runs:
        if not _GENERATION.match(gen) or int(first) < 0 or int(count) < 1:
            raise ValueError(f"bad block run {[first, count, gen]!r}")
        for i in range(int(first), int(first) + int(count)):
            out[i] = str(gen)
    return out


def encode_record(rec: LeaseRecord) -> bytes:
    """The record's bytes: compact UTF-8 JSON (layout in docs/FORMAT.md)."""
    i = rec.info
    doc = {"format": RECORD_FORMAT, "version": VERSION, "lease_id": i.lease_id,
           "name": i.name, "holder": i.holder, "epoch": i.epoch, "expires_at": i.expires_at,
           "num_blocks": i.num_blocks, "block_size": i.block_size,
           "created_at": i.created_at, "ttl": rec.ttl, "nonce": rec.nonce,
           "deleted": rec.deleted, "blocks": _runs(rec.blocks)}
    if rec.doomed_at:
        doc["doomed_at"] = rec.doomed_at
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_record(raw: bytes, where: str) -> LeaseRecord:
    """Parse a record; ``StoreCorruptError`` (or ``StoreVersionError``) naming ``where``."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != RECORD_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        version = int(doc["version"])
        if version > VERSION:
            raise StoreVersionError(f"lease record {where} has version {version}; this "
                                    f"blockpoint reads up to {VERSION}", path=where,
                                    version=version, supported=VERSION)
        info = LeaseInfo.from_dict(doc)
        return LeaseRecord(info=info, ttl=float(doc["ttl"]), blocks=_unruns(doc["blocks"]),
                           nonce=str(doc["nonce"]), deleted=bool(doc["deleted"]),
                           doomed_at=float(doc.get("doomed_at", 0.0)))
    except StoreVersionError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreCorruptError(f"lease record {where} is unreadable: {exc}",
                                path=where) from exc
