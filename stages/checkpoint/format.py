"""The checkpoint format on a lease: header slots, block map, map blocks (``docs/FORMAT.md``).

Why this layout:

* **K header slots** at blocks ``0..K-1`` (K = retention >= 2). A generation is committed by
  writing its header into one slot, last, after its data is durable; the other K-1 slots keep
  the newer generations untouched, so a crash at any point leaves a complete older
  generation. Nothing else is ever "the" checkpoint: a header *is* the commit record.
* **A block map** per generation: logical chunk -> (physical block, offset, stored length,
  raw length, CRC-32C, flags). Data can therefore live anywhere in the lease. That is what
  lets later work share unchanged blocks between generations (incremental), fill blocks in
  the background (async), or map a generation onto immutable objects (S3) - without a
  format change. Compressed chunks are packed several to a block; raw chunks fill a block.
* The map is inline in the header block when it fits, otherwise it **spills** into a chain
  of map blocks referenced from the header; a CRC over the whole map is in the header.
* **Content hashes** (version 3): every map entry carries the 128-bit XXH3 hash of the
  chunk's raw bytes, so an incremental checkpoint (``stages/checkpoint/incremental.py``) can tell an
  unchanged chunk from a changed one without reading the stored block - a 32-bit CRC match
  is not enough to call content unchanged. Version 2 (32-byte entries, no hashes) is still
  read; its chunks are simply never reused.
* Everything a reader trusts is checksummed: the header (CRC-32C over its used bytes with the
  CRC field zeroed), the map, every chunk as stored. Optional MACs authenticate the
  header - bound to the lease's id and name, so a valid checkpoint cannot be replayed into
  another lease - and, through a payload MAC stored in the header, the payload. The header
  MAC is checked before anything the header points to is followed.
* **The MAC algorithm** (versions 4 and 5): a u8 id at offset 142 says which MAC the generation
  carries - AES-GMAC (the default: faster than the CRCs), keyed BLAKE3, or HMAC-SHA256 (the
  only one of versions 2 and 3, whose headers have no id). Version 4 is version 3 with the u32
  incremental depth at 140 split into a u16 depth, the id and a reserved byte; version 5 is
  version 4 whose id may be AES-GMAC's, written exactly for AES-GMAC generations.

All integers are little-endian; ``struct`` formats below are the single source of truth and
``docs/FORMAT.md`` reproduces them byte by byte (a test parses a header per the doc).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from blockstore import canonical_json, crc32c
from blockstore.macs import MAC_BLAKE3, MAC_GMAC, MAC_HMAC_SHA256, MAC_NONE

from ..errors import BadMagicError, CheckpointCorrupt, TornHeaderError, UnsupportedFormatError

__all__ = [
    "CODECS",
    "COMPRESSIONS",
    "ENTRY",
    "ENTRY_V2",
    "FLAG_HASHES",
    "FLAG_MAC",
    "FLAG_MAP_SPILLED",
    "FORMAT_VERSION",
    "GMAC_VERSION",
    "HEADER",
    "HEADER_SIZE",
    "TRAILER",
    "MAGIC",
    "MAPBLOCK",
    "MAC_IDS",
    "MAX_DEPTH",
    "MAX_SLOTS",
    "CHUNK_RAW",
    "CHUNK_ZSTD",
    "HASH_SIZE",
    "Header",
    "READ_VERSIONS",
    "MapEntry",
    "entries_per_map_block",
    "is_zero",
    "pack_entries",
    "pack_header",
    "parse_header",
    "unpack_entries",
]

MAGIC = b"PCHK"
FORMAT_VERSION = 5
#: Versions this reader accepts: 2 (32-byte entries), 3 (48-byte entries with hashes), 4
#: (version 3 with a MAC algorithm id) and 5 (version 4 whose MAC may be AES-GMAC).
READ_VERSIONS = (2, 3, 4, 5)
#: Writers write version 5 exactly for an AES-GMAC generation, version 4 otherwise: a reader
#: of version 4 (which does not know id 3) then refuses an AES-GMAC generation as newer -
#: and its writer refuses to overwrite it (2.7) - instead of skipping it as damage.
GMAC_VERSION = 5
MAX_SLOTS = 255
#: The largest incremental depth a version 4 header holds (a u16).
MAX_DEPTH = 0xFFFF
#: MAC algorithm ids of offset 142 (version 4), as ``docs/FORMAT.md`` 2.5 tabulates them.
MAC_IDS = {"none": MAC_NONE, "HMAC-SHA256": MAC_HMAC_SHA256, "keyed BLAKE3": MAC_BLAKE3,
           "AES-GMAC": MAC_GMAC}

#: The fixed part of a header block (176 bytes). Field order = docs/FORMAT.md table.
HEADER = struct.Struct(
    "<4s"   # 0   magic "PCHK"
    "I"     # 4   format version
    "Q"     # 8   data length (serialized payload bytes)
    "Q"     # 16  generation
    "Q"     # 24  step
    "d"     # 32  created_at (unix seconds, float64)
    "d"     # 40  duration_s (float64)
    "Q"     # 48  stored bytes (sum of stored chunk lengths)
    "Q"     # 56  chunk count N (logical data blocks)
    "I"     # 64  block size
    "H"     # 68  slot count K
    "H"     # 70  slot index of this header
    "B"     # 72  codec id
    "B"     # 73  compression setting id
    "b"     # 74  compression level
    "B"     # 75  flags
    "I"     # 76  metadata length M
    "I"     # 80  map block count (0 = map inline)
    "I"     # 84  map CRC-32C
    "Q"     # 88  first map block (physical index; 0 when inline)
    "Q"     # 96  header length H (bytes covered by the header CRC)
    "32s"   # 104 header MAC (over lease identity + header; zeros when absent)
    "I"     # 136 header CRC-32C
    "H"     # 140 incremental depth (0 = full; v3: a u32 at 140; v2: reserved 0)
    "B"     # 142 MAC algorithm id (MAC_IDS; v2/v3: part of the u32 at 140)
    "B"     # 143 reserved 0 (v2/v3: part of the u32 at 140)
    "32s"   # 144 payload MAC (over the payload; zeros when absent)
)
HEADER_SIZE = HEADER.size  # 176
MAC_OFFSET = 104
CRC_OFFSET = 136
PAYLOAD_MAC_OFFSET = 144

#: Right after the covered header bytes: magic ``KHCP`` + a copy of the header CRC. A header
#: is written into a zeroed slot, so a write cut short leaves this trailer zero: that is how
#: an interrupted commit (never committed) is told apart from a damaged committed header.
TRAILER = struct.Struct("<4sI")
TRAILER_MAGIC = b"KHCP"

#: One block-map entry of version 3 (48 bytes): the version 2 entry + a content hash.
ENTRY = struct.Struct(
    "<Q"    # 0  physical block index
    "I"     # 8  byte offset of the stored chunk in that block
    "I"     # 12 stored length
    "I"     # 16 raw length (bytes of payload this chunk restores)
    "I"     # 20 CRC-32C of the stored bytes
    "B"     # 24 chunk flags (0 raw, 1 zstd)
    "7x"    # 25 reserved
    "16s"   # 32 XXH3-128 of the raw chunk bytes (zeros unless the header has FLAG_HASHES)
)
#: The version 2 entry (32 bytes): read, never written.
ENTRY_V2 = struct.Struct("<QIIIIB7x")
HASH_SIZE = 16
_NO_HASH = bytes(HASH_SIZE)
#: Head of a spilled map block (16 bytes), followed by ``count`` entries: next map block
#: (0 = last), entry count, CRC-32C of this block's used bytes (16 + entry size * count)
#: computed with this field zero - so a damaged map block is named, not just "the map".
MAPBLOCK = struct.Struct("<QII")

FLAG_MAC = 1
FLAG_MAP_SPILLED = 2
#: The entries' content hashes are filled in (written with ``incremental=True``); only such
#: a generation's chunks can be reused by a later one.
FLAG_HASHES = 4

CHUNK_RAW = 0
CHUNK_ZSTD = 1

CODECS = {"pickle": 1, "msgpack": 2}
COMPRESSIONS = {"none": 0, "zstd": 1, "auto": 2}
_CODEC_NAMES = {v: k for k, v in CODECS.items()}
_COMPRESSION_NAMES = {v: k for k, v in COMPRESSIONS.items()}


class MapEntry(NamedTuple):
    """Where one logical chunk of the payload is stored (see :data:`ENTRY`).

    A tuple rather than a dataclass: a 1 GiB state at 4 KiB blocks has 262,144 of them.
    """

    block: int
    offset: int
    stored: int
    raw: int
    crc: int
    flags: int
    hash: bytes = _NO_HASH


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed header slot. ``inline_map`` holds the map bytes when not spilled."""

    version: int
    data_length: int
    generation: int
    step: int
    created_at: float
    duration_s: float
    stored_bytes: int
    chunks: int
    block_size: int
    slots: int
    slot: int
    codec: str
    compression: str
    level: int
    flags: int
    meta: Mapping[str, Any]
    map_blocks: int
    map_crc: int
    first_map_block: int
    header_length: int
    mac: bytes
    header_crc: int
    payload_mac: bytes = bytes(32)
    depth: int = 0
    mac_algorithm: int = MAC_NONE  # versions 2 and 3: HMAC-SHA256 when FLAG_MAC is set
    inline_map: bytes = b""
    raw: bytes = field(default=b"", repr=False)  # the covered header bytes, as read

    @property
    def has_mac(self) -> bool:
        return bool(self.flags & FLAG_MAC)

    @property
    def spilled(self) -> bool:
        return bool(self.flags & FLAG_MAP_SPILLED)

    @property
    def hashed(self) -> bool:
        """True if the map entries carry content hashes (its chunks may be reused)."""
        return bool(self.flags & FLAG_HASHES)

    @property
    def entry_size(self) -> int:
        return entry_struct(self.version).size

    def for_mac(self) -> bytes:
        """The covered header bytes with the header MAC and CRC fields zeroed (the header
        MAC's input; the payload MAC field is covered)."""
        b = bytearray(self.raw)
        b[MAC_OFFSET:MAC_OFFSET + 32] = bytes(32)
        b[CRC_OFFSET:CRC_OFFSET + 4] = bytes(4)
        return bytes(b)


def entry_struct(version: int = FORMAT_VERSION) -> struct.Struct:
    """The map entry layout of a format version."""
    return ENTRY_V2 if version == 2 else ENTRY


def entries_per_map_block(block_size: int, version: int = FORMAT_VERSION) -> int:
    return (block_size - MAPBLOCK.size) // entry_struct(version).size


def pack_entries(entries: Sequence[MapEntry]) -> bytes:
    """Entries in the layout this version writes (:data:`ENTRY`)."""
    return b"".join(ENTRY.pack(*e) for e in entries)


def unpack_entries(data: bytes | memoryview, version: int = FORMAT_VERSION) -> list[MapEntry]:
    if version == 2:
        return [MapEntry(*f) for f in ENTRY_V2.iter_unpack(data)]  # hash: the zero default
    return list(map(MapEntry._make, ENTRY.iter_unpack(data)))


def inline_fits(block_size: int, meta_len: int, chunks: int) -> bool:
    return HEADER_SIZE + meta_len + chunks * ENTRY.size + TRAILER.size <= block_size


def max_meta(block_size: int) -> int:
    """The largest metadata (bytes of JSON) a header block of this size can hold."""
    return block_size - HEADER_SIZE - TRAILER.size


def encode_meta(meta: Mapping[str, Any] | None) -> bytes:
    if not meta:
        return b""
    return canonical_json(dict(meta))


def pack_header(*, data_length: int, generation: int, step: int, created_at: float,
                duration_s: float, stored_bytes: int, chunks: int, block_size: int,
                slots: int, slot: int, codec: str, compression: str, level: int,
                mac_algorithm: int, meta: bytes, map_blocks: int, map_crc: int,
                first_map_block: int, inline_map: bytes, hashed: bool = False,
                depth: int = 0) -> bytearray:
    """A header block (``block_size`` bytes) with MAC and CRC fields zero.

    ``mac_algorithm``: an id of :data:`MAC_IDS` (0: no MAC). Call :func:`seal_header` after
    computing the MAC.
    """
    if mac_algorithm not in MAC_IDS.values():
        raise ValueError(f"unknown MAC algorithm id {mac_algorithm}")
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"incremental depth {depth} does not fit a header (max {MAX_DEPTH})")
    flags = ((FLAG_MAC if mac_algorithm != MAC_NONE else 0) | (FLAG_MAP_SPILLED if map_blocks else 0)
             | (FLAG_HASHES if hashed else 0))
    length = HEADER_SIZE + len(meta) + len(inline_map)
    if length + TRAILER.size > block_size:
        raise ValueError(f"header of {length} bytes does not fit a {block_size}-byte block")
    out = bytearray(block_size)
    version = GMAC_VERSION if mac_algorithm == MAC_GMAC else 4
    HEADER.pack_into(out, 0, MAGIC, version, data_length, generation, step, created_at,
                     duration_s, stored_bytes, chunks, block_size, slots, slot, CODECS[codec],
                     COMPRESSIONS[compression], level, flags, len(meta), map_blocks, map_crc,
                     first_map_block, length, bytes(32), 0, depth, mac_algorithm, 0, bytes(32))
    out[HEADER_SIZE:HEADER_SIZE + len(meta)] = meta
    out[HEADER_SIZE + len(meta):length] = inline_map
    return out


def header_mac_input(block: bytearray) -> bytes:
    """The covered bytes of a packed (unsealed) header, MAC and CRC zero."""
    (length,) = struct.unpack_from("<Q", block, 96)
    return bytes(block[:length])


def set_payload_mac(block: bytearray, payload_mac: bytes) -> None:
    """Put the payload MAC into a packed header (before its header MAC is computed)."""
    block[PAYLOAD_MAC_OFFSET:PAYLOAD_MAC_OFFSET + 32] = payload_mac


def seal_header(block: bytearray, mac: bytes | None) -> bytearray:
    """Set the header MAC (if any), the header CRC (over the covered bytes, CRC zeroed), the
    trailer."""
    if mac is not None:
        block[MAC_OFFSET:MAC_OFFSET + 32] = mac
    struct.pack_into("<I", block, CRC_OFFSET, 0)
    (length,) = struct.unpack_from("<Q", block, 96)
    crc = crc32c(memoryview(block)[:length])
    struct.pack_into("<I", block, CRC_OFFSET, crc)
    TRAILER.pack_into(block, length, TRAILER_MAGIC, crc)
    return block


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True if every byte is zero (a never-written or erased slot)."""
    return not np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8).any()


#: The unit a disk writes atomically (at least). A header longer than one sector may be
#: torn by power loss in any pattern of its sectors, not only cut short.
SECTOR = 512


def _has_zero_sector(mv: memoryview, end: int) -> bool:
    """True if the part of some sector that lies in ``mv[:end]`` is all zeros.

    A header is only written into an erased (zeroed) slot, and no sector's share of a header
    and its trailer is all zeros (magic, lengths, CRCs, JSON, map entries; a share of fewer
    than 4 bytes is not judged), so a zero share means that sector's write was lost: an
    interrupted commit, not damage (a flipped bit never zeroes a sector).
    """
    end = min(end, len(mv))
    for start in range(0, end, SECTOR):
        share = mv[start:min(start + SECTOR, end)]
        if len(share) >= 4 and is_zero(share):
            return True
    return False


def parse_header(block: bytes | bytearray | memoryview, *, slot: int, lease_id: str = "",
                 name: str = "") -> Header:
    """Parse and check a header slot; raise a specific :class:`CheckpointCorrupt` if bad.

    Checks, in order: magic (:class:`BadMagicError`), version
    (:class:`UnsupportedFormatError` for a newer one), the header CRC, then field sanity.
    """
    mv = memoryview(block)
    ctx = {"lease_id": lease_id, "name": name, "slot": slot, "block": slot}
    if len(mv) < HEADER_SIZE:
        raise CheckpointCorrupt(f"header slot {slot} of lease {name!r} is short", **ctx)
    if bytes(mv[:4]) != MAGIC:
        if is_zero(mv[:SECTOR]):
            # The first sector was lost while later ones landed: a torn first write.
            raise TornHeaderError(f"header slot {slot} of lease {name!r} ({lease_id}): its "
                                  "first sector is zero but the block is not: a header write "
                                  "torn by power loss (never committed)", **ctx)
        raise BadMagicError(f"header slot {slot} of lease {name!r} ({lease_id}) has magic "
                            f"{bytes(mv[:4])!r}, not {MAGIC!r}", **ctx)
    (version,) = struct.unpack_from("<I", mv, 4)
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"header slot {slot} of lease {name!r} ({lease_id}) has format version {version}; "
            f"this blockpoint reads up to {FORMAT_VERSION}", version=version, **ctx)
    if version not in READ_VERSIONS:
        raise CheckpointCorrupt(f"header slot {slot} of lease {name!r}: format version "
                                f"{version} (a pre-release layout, not read)", **ctx)
    f = HEADER.unpack_from(mv, 0)
    (_, _, data_length, generation, step, created_at, duration_s, stored, chunks, bs, slots,
     slot_index, codec_id, comp_id, level, flags, meta_len, map_blocks, map_crc, first_map,
     length, mac, crc, depth, mac_alg, reserved, payload_mac) = f
    if version < 4:  # one u32 at 140: the depth (v3) or reserved (v2); HMAC-SHA256 only
        depth |= mac_alg << 16 | reserved << 24
        mac_alg, reserved = (MAC_HMAC_SHA256 if flags & FLAG_MAC else MAC_NONE), 0
    ctx["generation"] = generation
    if not HEADER_SIZE <= length <= len(mv) - TRAILER.size:
        raise CheckpointCorrupt(f"header slot {slot} of lease {name!r}: header length {length} "
                                "out of range", **ctx)
    covered = bytearray(mv[:length])
    covered[CRC_OFFSET:CRC_OFFSET + 4] = bytes(4)
    if crc32c(covered) != crc:
        if not any(mv[length:length + TRAILER.size]) \
                or _has_zero_sector(mv, length + TRAILER.size):
            raise TornHeaderError(f"header slot {slot} of lease {name!r} ({lease_id}): write of "
                                  f"generation {generation}'s header was cut short (never "
                                  "committed)", **ctx)
        raise CheckpointCorrupt(f"header slot {slot} of lease {name!r} ({lease_id}): header "
                                "CRC-32C mismatch", **ctx)
    problems = []
    if slot_index != slot:
        problems.append(f"slot index {slot_index} != position {slot}")
    if bs != len(mv):
        problems.append(f"block size {bs} != {len(mv)}")
    if not 2 <= slots <= MAX_SLOTS:
        problems.append(f"slot count {slots}")
    if codec_id not in _CODEC_NAMES or comp_id not in _COMPRESSION_NAMES:
        problems.append(f"codec {codec_id} / compression {comp_id} unknown")
    spilled = bool(flags & FLAG_MAP_SPILLED)
    inline_len = 0 if spilled else chunks * entry_struct(version).size
    known = FLAG_MAC | FLAG_MAP_SPILLED | (FLAG_HASHES if version >= 3 else 0)
    if flags & ~known:
        problems.append(f"unknown flags {flags:#x}")
    if version < 3 and depth:
        problems.append(f"reserved field {depth} is not 0")
    if reserved:
        problems.append(f"reserved byte 143 is {reserved}, not 0")
    if mac_alg not in MAC_IDS.values():
        problems.append(f"MAC algorithm id {mac_alg} unknown")
    elif mac_alg == MAC_GMAC and version < GMAC_VERSION:
        problems.append(f"MAC algorithm id {mac_alg} in a version {version} header "
                        f"(AES-GMAC generations are version {GMAC_VERSION})")
    elif (mac_alg != MAC_NONE) != bool(flags & FLAG_MAC):
        problems.append(f"MAC algorithm id {mac_alg} with flag bit 0 "
                        f"{'set' if flags & FLAG_MAC else 'clear'}")
    if HEADER_SIZE + meta_len + inline_len != length:
        problems.append("lengths inconsistent")
    if problems:
        raise CheckpointCorrupt(f"header slot {slot} of lease {name!r} ({lease_id}): "
                                + "; ".join(problems), **ctx)
    try:
        meta = json.loads(bytes(mv[HEADER_SIZE:HEADER_SIZE + meta_len])) if meta_len else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the limit
        raise CheckpointCorrupt(f"header slot {slot} of lease {name!r}: bad metadata: {exc}",
                                **ctx) from exc
    if not isinstance(meta, dict):  # only a forged header (its CRC verified) gets here
        raise CheckpointCorrupt(f"header slot {slot} of lease {name!r}: metadata is a JSON "
                                f"{type(meta).__name__}, not an object", **ctx)
    return Header(version=version, data_length=data_length, generation=generation, step=step,
                  created_at=created_at, duration_s=duration_s, stored_bytes=stored,
                  chunks=chunks, block_size=bs, slots=slots, slot=slot_index,
                  codec=_CODEC_NAMES[codec_id], compression=_COMPRESSION_NAMES[comp_id],
                  level=level, flags=flags, meta=meta, map_blocks=map_blocks, map_crc=map_crc,
                  first_map_block=first_map, header_length=length, mac=bytes(mac),
                  header_crc=crc, payload_mac=bytes(payload_mac), depth=depth,
                  mac_algorithm=mac_alg,
                  inline_map=bytes(mv[HEADER_SIZE + meta_len:length]) if not spilled else b"",
                  raw=bytes(mv[:length]))

