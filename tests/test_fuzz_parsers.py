"""Fuzz every parser of stored bytes with random and mutated input (issue 9, security).

Parsers: the checkpoint header (``stages.checkpoint.format.parse_header``), the block map and payload
(``stages.checkpoint.reader.load_map``, ``read_payload``), slotted documents
(``blockstore.SlottedDocument.load``) and file-store lease records (``FileStore``'s
``lease_info`` / ``scan_leases``). Each gets random bytes and mutations of valid bytes -
with the checksums recomputed after the mutation as often as not, so the field checks
behind the CRCs are reached too (a forger can always compute a CRC). What must hold:

* only the documented exceptions (``CheckpointCorrupt`` and its subclasses; documents never
  raise for content; records raise ``StoreCorruptError``);
* bounded time (Hypothesis deadline; a pytest timeout against hangs) and bounded memory
  (``tracemalloc`` peak per example, numpy buffers included);
* whatever parses is consistent (a header's metadata is a dict, a document is a dict).

A few hundred examples per parser; the module runs in well under 30 s.
"""

from __future__ import annotations

import json
import struct
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockstore import (
    FileStore,
    LeaseReader,
    MemoryStore,
    SlottedDocument,
    StoreCorruptError,
    crc32c,
)
from stages import CheckpointCorrupt, CheckpointedStageState
from stages.checkpoint import format as fmt
from stages.checkpoint.reader import load_map, read_payload

pytestmark = pytest.mark.timeout(120)

BS = 1024
MEMORY_LIMIT = 16 * 1024 * 1024  # far above anything a 1 KiB-block lease can justify
FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def bounded_memory(limit: int = MEMORY_LIMIT) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"parsing allocated {peak} bytes"


@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[int, bytes]]:
    """A few overwrites ``(offset, bytes)`` inside a buffer of ``size`` bytes."""
    n = draw(st.integers(1, 6))
    out = []
    for _ in range(n):
        at = draw(st.integers(0, size - 1))
        out.append((at, draw(st.binary(min_size=1, max_size=min(16, size - at)))))
    return out


def _apply(buf: bytearray, muts: list[tuple[int, bytes]]) -> None:
    for at, data in muts:
        buf[at:at + len(data)] = data


# -- checkpoints: one real lease as the template ---------------------------------------------
def _template(state: Any, **options: Any) -> dict[int, bytes]:
    store = MemoryStore(BS)
    lease = store.acquire("t")
    CheckpointedStageState(state, lease, compression="none", **options).checkpoint(
        step=7, meta={"source": "fuzz"})
    return {i: lease.read_block(i) for i in range(lease.num_blocks)}


# Spilled map (200 chunks > 31 entries per map block), and an inline, zstd-packed one.
SPILLED = _template({"a": np.arange(200 * BS // 8, dtype=np.int64)})
PACKED = _template({"z": np.zeros(40 * BS, np.uint8)}, codec="pickle")


def _lease_of(blocks: dict[int, bytes]) -> LeaseReader:
    store = MemoryStore(BS)
    lease = store.acquire("t", num_blocks=len(blocks))
    lease.write_blocks(blocks)
    return lease


def _first_header(blocks: dict[int, bytes]) -> int:
    return next(i for i in (0, 1) if blocks[i][:4] == fmt.MAGIC)


def _reseal(block: bytearray) -> None:
    """Recompute the header CRC (and trailer) as a forger would; no-op if length is wild."""
    (length,) = struct.unpack_from("<Q", block, 96)
    if fmt.HEADER_SIZE <= length <= len(block) - fmt.TRAILER.size:
        fmt.seal_header(block, None)


def _parse_or_corrupt(block: bytes | bytearray, slot: int) -> fmt.Header | None:
    try:
        h = fmt.parse_header(block, slot=slot, lease_id="0" * 32, name="t")
    except CheckpointCorrupt:
        return None
    assert isinstance(h.meta, dict), h.meta
    return h


@FUZZ
@given(st.binary(min_size=0, max_size=2 * BS))
def test_header_random_bytes(data: bytes) -> None:
    with bounded_memory():
        _parse_or_corrupt(data, 0)
        _parse_or_corrupt(fmt.MAGIC + struct.pack("<I", fmt.FORMAT_VERSION) + data, 0)


@FUZZ
@given(st.sampled_from([SPILLED, PACKED]), st.data(), st.booleans())
def test_header_mutated(blocks: dict[int, bytes], data: st.DataObject, reseal: bool) -> None:
    slot = _first_header(blocks)
    block = bytearray(blocks[slot])
    _apply(block, data.draw(mutations(fmt.HEADER_SIZE + 64)))
    if reseal:
        _reseal(block)
    with bounded_memory():
        _parse_or_corrupt(block, slot)


@pytest.mark.parametrize("meta", [b"[1]", b'"text"', b"1e999", b"null", b"[" * 20_000,
                                  b'{"a":' * 10_000])
def test_header_metadata_that_is_not_an_object(meta: bytes) -> None:
    """A forged header (CRC recomputed) whose metadata parses as something else, or nests
    past the recursion limit: refused as corrupt, never returned or raised as another error."""
    block = fmt.pack_header(
        data_length=0, generation=1, step=0, created_at=0.0, duration_s=0.0, stored_bytes=0,
        chunks=0, block_size=64 * 1024, slots=2, slot=0, codec="pickle", compression="none",
        level=0, mac_algorithm=0, meta=meta, map_blocks=0, map_crc=0, first_map_block=0,
        inline_map=b"")
    fmt.seal_header(block, None)
    with pytest.raises(CheckpointCorrupt, match="metadata"):
        fmt.parse_header(block, slot=0)


@FUZZ
@given(st.sampled_from([SPILLED, PACKED]), st.data(), st.booleans(),
       st.sampled_from(["map", "header", "both"]))
def test_map_and_payload_mutated(blocks: dict[int, bytes], data: st.DataObject, reseal: bool,
                                 where: str) -> None:
    """Forged maps and headers (CRCs recomputed): bounded work, only CheckpointCorrupt."""
    blocks = dict(blocks)
    slot = _first_header(blocks)
    header = bytearray(blocks[slot])
    h = fmt.parse_header(header, slot=slot, lease_id="0" * 32, name="t")
    map_blocks = []
    nxt = h.first_map_block
    for _ in range(h.map_blocks):
        map_blocks.append(nxt)
        nxt = struct.unpack_from("<Q", blocks[nxt], 0)[0]
    if where in ("map", "both") and map_blocks:
        target = data.draw(st.sampled_from(map_blocks))
        blk = bytearray(blocks[target])
        _apply(blk, data.draw(mutations(BS)))
        if reseal:  # the map block's own CRC and the header's map CRC, recomputed
            nxt_, count, _ = fmt.MAPBLOCK.unpack_from(blk, 0)
            count = min(count, fmt.entries_per_map_block(BS))
            fmt.MAPBLOCK.pack_into(blk, 0, nxt_, count, 0)
            fmt.MAPBLOCK.pack_into(blk, 0, nxt_, count,
                                   crc32c(blk[:fmt.MAPBLOCK.size + count * fmt.ENTRY.size]))
        blocks[target] = bytes(blk)
        if reseal:
            crc = 0
            for b in map_blocks:
                _, count, _ = fmt.MAPBLOCK.unpack_from(blocks[b], 0)
                crc = crc32c(blocks[b][:fmt.MAPBLOCK.size + count * fmt.ENTRY.size], crc)
            struct.pack_into("<I", header, 84, crc)
    if where in ("header", "both") or not map_blocks:
        # The fields that steer the reader: data length, chunk count, map block count, CRC,
        # first map block; or anywhere in the inline map.
        fields = data.draw(st.lists(st.sampled_from([(8, "<Q"), (56, "<Q"), (80, "<I"),
                                                     (84, "<I"), (88, "<Q")]), max_size=3))
        for off, code in fields:
            limit = 2 ** (8 * struct.calcsize(code)) - 1
            value = data.draw(st.one_of(st.integers(0, 3 * len(blocks)),
                                        st.integers(0, limit)))
            struct.pack_into(code, header, off, value)
        if not h.spilled:
            _apply(header, [(at, b) for at, b in data.draw(mutations(BS))
                            if at >= h.header_length - h.chunks * fmt.ENTRY.size])
            struct.pack_into("<I", header, 84,
                             crc32c(header[h.header_length - h.chunks * fmt.ENTRY.size:
                                           h.header_length]))
    if reseal:
        _reseal(header)
    blocks[slot] = bytes(header)
    reader = _lease_of(blocks)
    with bounded_memory():
        forged = _parse_or_corrupt(blocks[slot], slot)
        if forged is None:
            return
        try:
            entries, _ = load_map(reader, forged)
            buf = read_payload(reader, forged, entries, key=None)
        except CheckpointCorrupt:
            return
        assert len(buf) == forged.data_length <= forged.chunks * BS


@FUZZ
@given(st.binary(min_size=0, max_size=BS), st.integers(0, 8))
def test_map_random_blocks(data: bytes, spill_to: int) -> None:
    """A valid header pointing at random map blocks."""
    blocks = dict(SPILLED)
    slot = _first_header(blocks)
    h = fmt.parse_header(blocks[slot], slot=slot, lease_id="0" * 32, name="t")
    first = h.first_map_block
    blocks[first] = data.ljust(BS, b"\0")
    reader = _lease_of(blocks)
    with bounded_memory():
        try:
            load_map(reader, h)
        except CheckpointCorrupt:
            pass


# -- documents --------------------------------------------------------------------------------
def _document_template() -> dict[int, bytes]:
    store = MemoryStore(BS)
    lease = store.acquire("d")
    doc = SlottedDocument(lease, kind=b"FUZZ", version=1, slots=2)
    doc.save({"n": 1, "items": list(range(300))})
    doc.save({"n": 2, "items": list(range(10))})
    return {i: lease.read_block(i) for i in range(lease.num_blocks)}


DOCUMENT = _document_template()
DOC_HEAD = struct.Struct("<4sI4sIQQQIHHII32s")


def _load_document(blocks: dict[int, bytes]) -> None:
    reader = _lease_of(blocks)
    with bounded_memory():
        found = SlottedDocument(reader, kind=b"FUZZ", version=1, slots=2).load()
    assert found.document is None or isinstance(found.document, dict)
    assert (found.document is None) == (found.generation is None)


@FUZZ
@given(st.data(), st.booleans(), st.booleans())
def test_document_mutated(data: st.DataObject, reseal: bool, payload: bool) -> None:
    blocks = dict(DOCUMENT)
    which = data.draw(st.sampled_from(sorted(blocks) if payload else [0, 1]))
    blk = bytearray(blocks[which])
    _apply(blk, data.draw(mutations(BS if payload else 92)))
    if reseal and which < 2:
        # A forger recomputes the payload CRC of what the header points at, then the header's.
        fields = list(DOC_HEAD.unpack_from(blk, 0))
        length, first = fields[5], fields[6]
        if length <= BS * len(blocks) and first < len(blocks):
            raw = b"".join(blocks[i] for i in range(first, len(blocks)))[:length]
            fields[7] = crc32c(raw)
            DOC_HEAD.pack_into(blk, 0, *fields)
        struct.pack_into("<I", blk, DOC_HEAD.size, crc32c(blk[:DOC_HEAD.size]))
    blocks[which] = bytes(blk)
    _load_document(blocks)


@pytest.mark.parametrize("payload", [b"[" * 50_000, b"[1]", b"\xff\xfe"])
def test_document_payload_that_is_not_an_object(payload: bytes) -> None:
    """A forged slot (both CRCs recomputed) whose payload is not a JSON object, or nests
    past the recursion limit: skipped with a reason, never raised."""
    blocks = dict(DOCUMENT)
    n = -(-len(payload) // BS)
    first = max(blocks) + 1
    for i in range(n):
        blocks[first + i] = payload[i * BS:(i + 1) * BS].ljust(BS, b"\0")
    blk = bytearray(blocks[0])
    fields = list(DOC_HEAD.unpack_from(blk, 0))
    fields[4], fields[5], fields[6], fields[7] = 99, len(payload), first, crc32c(payload)
    DOC_HEAD.pack_into(blk, 0, *fields)
    struct.pack_into("<I", blk, DOC_HEAD.size, crc32c(blk[:DOC_HEAD.size]))
    blocks[0] = bytes(blk)
    reader = _lease_of(blocks)
    found = SlottedDocument(reader, kind=b"FUZZ", version=1, slots=2).load()
    assert found.document is not None and found.document["n"] in (1, 2)  # the other slot
    assert [s.generation for s in found.skipped] == [99]
    assert "JSON" in found.skipped[0].reason


@FUZZ
@given(st.binary(min_size=0, max_size=BS), st.binary(min_size=0, max_size=BS))
def test_document_random_slots(a: bytes, b: bytes) -> None:
    blocks = dict(DOCUMENT)
    blocks[0], blocks[1] = a.ljust(BS, b"\0"), b.ljust(BS, b"\0")
    _load_document(blocks)


# -- lease records ----------------------------------------------------------------------------
_RECORDS = tempfile.TemporaryDirectory(prefix="bpfuzz")
RECORD_STORE = FileStore(Path(_RECORDS.name) / "s", BS)
RECORD_LEASE = RECORD_STORE.acquire("fuzzed", num_blocks=3).lease_id
RECORD_PATH = Path(_RECORDS.name) / "s" / "leases" / f"{RECORD_LEASE}.json"
RECORD = RECORD_PATH.read_bytes()
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from([1e308, -1e308, 2 ** 70, -(2 ** 70)]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6)


def _read_record(raw: bytes) -> None:
    RECORD_PATH.write_bytes(raw)
    try:
        with bounded_memory():
            try:
                info = RECORD_STORE.lease_info(RECORD_LEASE)
            except StoreCorruptError:
                info = None
            scan = RECORD_STORE.scan_leases()  # never raises for a damaged record
        if info is not None:
            assert info.lease_id == RECORD_LEASE and info.num_blocks >= 0 and info.epoch >= 1
            assert isinstance(info.name, str) and info.block_size == BS
            assert [i.lease_id for i in scan.leases] == [RECORD_LEASE]
        else:
            assert len(scan.unreadable) == 1 and not scan.leases
    finally:
        RECORD_PATH.write_bytes(RECORD)


@FUZZ
@given(st.binary(max_size=512))
def test_record_random_bytes(raw: bytes) -> None:
    _read_record(raw)


@FUZZ
@given(st.data())
def test_record_mutated(data: st.DataObject) -> None:
    raw = bytearray(RECORD)
    _apply(raw, data.draw(mutations(len(raw))))
    _read_record(bytes(raw))


@FUZZ
@given(st.sampled_from(sorted(json.loads(RECORD))), JSON_VALUES)
def test_record_fields_of_any_json_type(field: str, value: object) -> None:
    doc = json.loads(RECORD)
    doc[field] = value
    _read_record(json.dumps(doc).encode())


def test_record_deeply_nested_and_huge() -> None:
    _read_record(b"[" * 100_000)
    _read_record(b'{"epoch": ' + b"9" * 5000 + b"}")
    _read_record(b" " * (1 << 20) + RECORD)  # a record file grown huge is refused, not read


def teardown_module(module: object) -> None:
    RECORD_STORE.close()
    _RECORDS.cleanup()
