"""docs/FORMAT.md matches the bytes: a header and a map entry parsed with ``struct`` from the
doc's own tables, on a checkpoint written by the code."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard

from blockstore import FileStore, crc32c
from stages import CheckpointedStageState

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
TYPES = {"u8": "B", "i8": "b", "u16": "H", "u32": "I", "u64": "Q", "f64": "d"}


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)


def _table(section: str) -> list[tuple[int, int, str, str]]:
    """Rows (offset, size, type, field) of the first table under ``section`` in FORMAT.md."""
    text = DOC.read_text()
    start = text.index(section)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("###") or line.startswith("## "):
            break
        m = re.match(r"\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\w]*)\s*\|\s*(.*?)\s*\|$", line)
        if m:
            rows.append((int(m[1]), int(m[2]), m[3], m[4]))
    return rows


def _struct_of(rows: list[tuple[int, int, str, str]]) -> tuple[struct.Struct, list[str]]:
    fmt, names, pos = "<", [], 0
    for off, size, typ, field in rows:
        assert off == pos, f"FORMAT.md table gap at offset {off} (expected {pos})"
        if typ == "bytes" or not typ:
            fmt += f"{size}s" if typ == "bytes" else f"{size}x"
        else:
            fmt += TYPES[typ]
        if typ:
            names.append(field.split(":")[0].split(" (")[0].strip())
        pos += size
    s = struct.Struct(fmt)
    assert s.size == pos
    return s, names


def test_header_parsed_per_format_md(tmp_path: Path) -> None:
    fixed = [r for r in _table("### 2.1 Header block") if r[0] < 176 and r[1] < 100]
    header, names = _struct_of(fixed)
    assert header.size == 176
    entry, _ = _struct_of(_table("### 2.2 Block map entry"))
    assert entry.size == 48
    bs = 4096
    arr = np.random.default_rng(0).random(3000)
    with FileStore(tmp_path / "s", bs) as store, store.acquire("fmt") as lease:
        css = CheckpointedStageState({"arr": arr}, lease, retention=3)
        info = css.checkpoint(step=9, meta={"source_position": 1234})
        raw = (tmp_path / "s" / "leases" / f"{lease.lease_id}.dat").read_bytes()
    block = raw[:bs]  # generation 1 is in slot 0
    f = dict(zip(names, header.unpack_from(block, 0)))
    assert f["magic `PCHK`"] == b"PCHK"
    assert f["format version"] == 4
    assert f["data length"] == info.data_length
    assert f["generation"] == 1 and f["step"] == 9
    assert f["created_at"] == pytest.approx(info.created_at)
    assert f["stored bytes"] == info.stored_bytes
    assert f["block size B"] == bs and f["slot count K"] == 3
    assert f["slot index of this header"] == 0
    assert f["codec"] == 1 and f["compression setting"] == 2 and f["zstd level"] == 3
    assert f["flags"] == 0 and f["map block count"] == 0
    m, n = f["metadata length M"], f["chunk count N"]
    assert json.loads(block[176:176 + m]) == {"source_position": 1234}
    length = f["header length H = 176 + M +"]
    assert length == 176 + m + 48 * n
    assert f["incremental depth"] == 0
    assert f["MAC algorithm id"] == 0 and f["reserved"] == 0
    assert f["payload MAC"] == bytes(32)  # no key: no MACs
    covered = bytearray(block[:length])
    covered[136:140] = bytes(4)
    crc = f["header CRC-32C over bytes `[0, H)` with this field zeroed"]
    assert crc32c(bytes(covered)) == crc
    assert block[length:length + 4] == b"KHCP"  # the trailer (FORMAT.md 2.1)
    assert struct.unpack_from("<I", block, length + 4)[0] == crc
    entries = [entry.unpack_from(block, 176 + m + 48 * i) for i in range(n)]
    inline = block[176 + m:length]
    assert crc32c(inline) == f["map CRC-32C"]
    total = 0
    for phys, off, stored, rawlen, crc, flags, digest in entries:
        assert phys >= 3
        assert crc32c(raw[phys * bs + off:phys * bs + off + stored]) == crc
        assert flags in (0, 1)
        assert digest == bytes(16)  # not incremental: no content hashes (flag bit 2 clear)
        total += rawlen
    assert total == info.data_length
    # the payload starts with its segment table (FORMAT.md 2.4): pickle stream + 1 buffer
    phys, off, stored, rawlen, _, flags, _ = entries[0]
    chunk = raw[phys * bs + off:phys * bs + off + stored]
    if flags == 1:
        chunk = zstandard.ZstdDecompressor().decompress(chunk, max_output_size=rawlen)
    count, reserved = struct.unpack_from("<II", chunk, 0)
    assert (count, reserved) == (2, 0)
    (off1, len1) = struct.unpack_from("<QQ", chunk, 8 + 16)
    assert len1 == arr.nbytes and off1 % 64 == 0


def test_incremental_entries_parsed_per_format_md(tmp_path: Path) -> None:
    """Version 4 with content hashes (flag bit 2): each entry's hash is XXH3-128 of the raw
    chunk; the second generation's unchanged chunks are the first's entries, byte for byte,
    and its header says depth 1 (FORMAT.md 2.1, 2.2, 4)."""
    import xxhash

    fixed = [r for r in _table("### 2.1 Header block") if r[0] < 176 and r[1] < 100]
    header, names = _struct_of(fixed)
    entry, _ = _struct_of(_table("### 2.2 Block map entry"))
    bs = 4096
    arr = np.random.default_rng(1).integers(0, 256, 10 * bs, dtype=np.uint8)
    with FileStore(tmp_path / "s", bs) as store, store.acquire("fmt") as lease:
        css = CheckpointedStageState({"arr": arr}, lease, incremental=True, compression="none")
        css.checkpoint()
        arr[5 * bs] ^= 1  # one chunk changes
        info = css.checkpoint()
        raw = (tmp_path / "s" / "leases" / f"{lease.lease_id}.dat").read_bytes()
    assert info.depth == 1 and info.chunks_written == 1  # one byte: one chunk rewritten
    maps = []
    for slot in (0, 1):
        block = raw[slot * bs:(slot + 1) * bs]
        f = dict(zip(names, header.unpack_from(block, 0)))
        assert f["format version"] == 4 and f["flags"] == 4
        assert f["incremental depth"] == slot  # generation 1 full, generation 2 reuses
        m, n = f["metadata length M"], f["chunk count N"]
        es = [entry.unpack_from(block, 176 + m + 48 * i) for i in range(n)]
        for phys, off, stored, rawlen, crc, flags, digest in es:
            assert flags == 0 and stored == rawlen
            assert digest == xxhash.xxh3_128_digest(raw[phys * bs:phys * bs + rawlen])
        maps.append(es)
    shared = [a for a, b in zip(maps[0], maps[1]) if a == b]
    assert len(shared) == len(maps[0]) - 1
    assert info.chunks_reused == len(shared)


@pytest.mark.parametrize("mac", ["blake3", "hmac-sha256"])
def test_document_header_parsed_per_format_md(tmp_path: Path, mac: str) -> None:
    """FORMAT.md 5.1 describes the bytes a slotted document writes (both slots), with
    either MAC algorithm (2.5: keyed BLAKE3 under the derived document key, HMAC-SHA256)."""
    import hashlib
    import hmac

    import blake3

    from blockstore import SlottedDocument

    header, names = _struct_of(_table("### 5.1 Document slot header"))
    assert header.size == 92
    bs = 512
    key = b"format-key"
    docs = [{"a": 1}, {"b": "x" * 700}]
    context = re.search(r"C_D = `([^`]+)`", re.sub(r"\s+", " ", DOC.read_text()))[1]
    with FileStore(tmp_path / "s", bs) as store, store.acquire("doc") as lease:
        d = SlottedDocument(lease, kind=b"TEST", version=7, slots=2, key=key, mac=mac)
        for doc in docs:
            d.save(doc)
        lease_id = lease.lease_id
        raw = (tmp_path / "s" / "leases" / f"{lease_id}.dat").read_bytes()
    for slot, doc in enumerate(docs):
        f = dict(zip(names, header.unpack_from(raw, slot * bs)))
        assert f["magic `BPDC`"] == b"BPDC" and f["layout version"] == 2
        assert f["kind"] == b"TEST" and f["kind version"] == 7
        assert f["generation"] == slot + 1
        assert f["slot count K"] == 2 and f["slot index of this header"] == slot
        assert f["flags"] == 1 and f["MAC algorithm id"] == (2 if mac == "blake3" else 1)
        first, length = f["first payload block"], f["payload length in bytes"]
        assert first >= 2
        payload = raw[first * bs:first * bs + length]
        assert json.loads(payload) == doc
        assert payload == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        assert crc32c(payload) == f["payload CRC-32C"]
        block = raw[slot * bs:slot * bs + 92]
        m = block[:56] + lease_id.encode() + payload
        if mac == "blake3":
            k_d = blake3.blake3(key, derive_key_context=context).digest()
            expect = blake3.blake3(m, key=k_d).digest()
        else:
            expect = hmac.new(key, m, hashlib.sha256).digest()
        assert f["MAC of M = bytes `[0, 56)` ‖ the lease id"] == expect
        assert crc32c(block[:88]) == f["header CRC-32C over bytes `[0, 88)`"]
