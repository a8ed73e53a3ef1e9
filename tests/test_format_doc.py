"""docs/FORMAT.md agrees with the code: its byte tables, constants and formulas.

``tests/test_stage_format.py`` reads bytes the code wrote with structs built from the doc's
2.1, 2.2 and 5.1 tables. This module compares the doc with the code's own definitions
instead - every numbered row of every byte table against the ``struct`` formats
(``stages/checkpoint/format.py``, ``stages/checkpoint/codec.py``, ``blockstore/document.py``), the enumerations,
magics, MAC domain tags and limits quoted in the text against the constants - and follows
the doc's spilled-map and MAC rules (2.3, 2.5) by hand on a checkpoint the code wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from pathlib import Path

import blake3
import numpy as np
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blockstore import FileStore, checks, crc32c, doclog, document, file, fileroot, macs, objectlayout
from stages import CheckpointedStageState
from stages.checkpoint import codec as payload_codec
from stages.checkpoint import compress as chunk_compress
from stages.checkpoint import format as fmt
from stages.checkpoint import mac as mac_module
from stages.checkpoint import reader as checkpoint_reader

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
#: Doc type -> struct code; "bytes" and "" (reserved/unused) take their size as a count.
TYPES = {"u8": "B", "i8": "b", "u16": "H", "u32": "I", "u64": "Q", "f64": "d"}
_ROW = re.compile(r"^\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*(.*?)\s*\|$")


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", raising=False)


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _flat() -> str:
    """The doc with every run of whitespace (line breaks included) as one space."""
    return re.sub(r"\s+", " ", _text())


def _section(heading: str) -> str:
    """The text of the section whose heading line starts with ``heading``, up to the next
    heading of any level."""
    lines = _text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    out = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        out.append(line)
    return "\n".join(out)


def _heading(prefix: str) -> str:
    """The whole heading line that starts with ``prefix``."""
    return next(line for line in _text().splitlines() if line.startswith(prefix))


def _rows(heading: str) -> list[tuple[str, str, str, str]]:
    """(offset, size, type, field) of the first byte table of a section, as written."""
    rows = []
    for line in _section(heading).splitlines():
        m = _ROW.match(line)
        if m and not set(m[1]) <= set("-: ") and m[1] != "offset":
            rows.append((m[1], m[2], m[3], m[4]))
    assert rows, f"no byte table under {heading!r} in FORMAT.md"
    return rows


def _numbered(rows: list[tuple[str, str, str, str]]) -> list[tuple[int, int, str, str]]:
    """The rows whose offset and size are plain numbers (the fixed part of a structure)."""
    return [(int(o), int(s), t, f) for o, s, t, f in rows if o.isdigit() and s.isdigit()]


def _doc_layout(rows: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str]]:
    """(offset, size, struct code) per doc row; contiguity is asserted."""
    out, pos = [], 0
    for off, size, typ, field in rows:
        assert off == pos, f"FORMAT.md: {field!r} at offset {off}, expected {pos}"
        if typ == "bytes":
            code = "s"
        elif typ == "":
            code = "x"
        else:
            code = TYPES[typ]
            assert struct.calcsize("<" + code) == size, f"{field!r}: {typ} is not {size} bytes"
        out.append((off, size, code))
        pos += size
    return out


def _code_layout(st: struct.Struct) -> list[tuple[int, int, str]]:
    """(offset, size, code) per field of a little-endian, unaligned ``struct`` format."""
    f = st.format
    assert f[0] == "<", f
    out, pos = [], 0
    for count, code in re.findall(r"(\d*)([xcbB?hHiIlLqQefdsp])", f[1:]):
        n = int(count) if count else 1
        if code in "sx":
            out.append((pos, n, code))
            pos += n
            continue
        size = struct.calcsize("<" + code)
        for _ in range(n):
            out.append((pos, size, code))
            pos += size
    assert pos == st.size
    return out


def _field_offset(rows: list[tuple[int, int, str, str]], prefix: str) -> int:
    matches = [off for off, _, _, field in rows if field.startswith(prefix)]
    assert len(matches) == 1, f"FORMAT.md: {len(matches)} rows start with {prefix!r}"
    return matches[0]


# -- byte tables against the struct formats ------------------------------------------------
def test_header_table_is_the_header_struct() -> None:
    rows = _numbered(_rows("### 2.1 Header block"))
    assert _doc_layout(rows) == _code_layout(fmt.HEADER)
    assert sum(size for _, size, _, _ in rows) == fmt.HEADER_SIZE == 176
    assert _field_offset(rows, "header MAC") == fmt.MAC_OFFSET
    assert _field_offset(rows, "header CRC-32C") == fmt.CRC_OFFSET
    assert _field_offset(rows, "payload MAC") == fmt.PAYLOAD_MAC_OFFSET
    assert _field_offset(rows, "magic") == 0
    assert re.search(r"`(\w+)`", rows[0][3])[1].encode() == fmt.MAGIC


def test_header_variable_rows_and_trailer() -> None:
    rows = _rows("### 2.1 Header block")
    symbolic = {o: (s, t, f) for o, s, t, f in rows if not o.isdigit()}
    assert int(next(o for o, _, _, f in rows if f.startswith("metadata:"))) == fmt.HEADER_SIZE
    assert symbolic["176 + M"][0] == "E × N"
    # The trailer: magic at H, CRC copy at H + 4, then the unused rest of the block.
    assert symbolic["H"][:2] == ("4", "bytes")
    assert re.search(r"`(\w+)`", symbolic["H"][2])[1].encode() == fmt.TRAILER_MAGIC
    assert symbolic["H + 4"][:2] == ("4", "u32")
    assert _code_layout(fmt.TRAILER) == [(0, 4, "s"), (4, 4, "I")]
    assert symbolic[f"H + {fmt.TRAILER.size}"][0] == f"B − H − {fmt.TRAILER.size}"
    # H's range check (header check 3) and the header length formula.
    flat = _flat()
    assert f"{fmt.HEADER_SIZE} <= H <= B − {fmt.TRAILER.size}" in flat
    assert f"H = {fmt.HEADER_SIZE} + M + (flag bit 1 set ? 0 : E × N)" in flat


def test_entry_table_is_the_entry_struct_and_v2_its_prefix() -> None:
    heading = "### 2.2 Block map entry"
    rows = _numbered(_rows(heading))
    assert _doc_layout(rows) == _code_layout(fmt.ENTRY)
    size = int(re.search(r"\((\d+) bytes", _heading(heading))[1])
    assert size == fmt.ENTRY.size == 48
    v2 = [r for r in rows if r[0] < fmt.ENTRY_V2.size]
    assert _doc_layout(v2) == _code_layout(fmt.ENTRY_V2)
    assert "Version 2 entries end at offset 32" in _flat()
    assert fmt.ENTRY_V2.size == 32
    flat = _flat()
    assert fmt.entry_struct(4).size == fmt.entry_struct(3).size
    assert (f"E = {fmt.entry_struct(3).size} for versions 3, 4 and 5, E = "
            f"{fmt.entry_struct(2).size} for version 2") in flat
    assert fmt.HASH_SIZE == next(s for o, s, _, f in rows if f.startswith("content hash"))


def test_map_block_table_is_the_mapblock_struct() -> None:
    rows = _rows("### 2.3 Spilled map block")
    fixed = _numbered(rows)
    assert _doc_layout(fixed) == _code_layout(fmt.MAPBLOCK)
    symbolic = {o: s for o, s, _, _ in rows if not o.isdigit()}
    assert int(next(o for o, s, _, _ in rows if s == "E × c")) == fmt.MAPBLOCK.size
    assert symbolic[f"{fmt.MAPBLOCK.size} + E × c"] == f"B − {fmt.MAPBLOCK.size} − E c"


def test_map_formulas_match_the_code() -> None:
    flat = _flat()
    # epb = floor((B − 16) / E): entries per map block, per version.
    m = re.search(r"epb = floor\(\(B − (\d+)\) / E\)", flat)
    assert m and int(m[1]) == fmt.MAPBLOCK.size
    map_head = int(m[1])
    # Spill condition in the 2.3 heading: head + M + E N + trailer > B.
    m = re.search(r"### 2\.3 Spilled map block \(when (\d+) \+ M \+ E × N \+ (\d+) > B\)",
                  _text())
    assert m, "2.3 heading no longer states the spill condition"
    head, trailer = int(m[1]), int(m[2])
    assert (head, trailer) == (fmt.HEADER_SIZE, fmt.TRAILER.size)
    for bs in (512, 1000, 1500, 4096, 65536):
        for version in (2, 3):
            e = fmt.entry_struct(version).size
            assert fmt.entries_per_map_block(bs, version) == (bs - map_head) // e
        for meta_len in (0, 17, 300):
            for n in (1, 5, 20, 80, 81, 82, 1300):
                spills = head + meta_len + fmt.ENTRY.size * n + trailer > bs
                assert fmt.inline_fits(bs, meta_len, n) is not spills, (bs, meta_len, n)


def test_payload_table_is_the_segment_table() -> None:
    rows = _rows("### 2.4 Payload")
    fixed = _numbered(rows)
    assert _doc_layout(fixed) == _code_layout(payload_codec._TABLE_HEAD)
    seg = next(r for r in rows if r[0] == str(payload_codec._TABLE_HEAD.size))
    m = re.fullmatch(r"(\d+) × S", seg[1])
    assert m and int(m[1]) == payload_codec._TABLE_ENTRY.size
    codes = "".join(TYPES[t.strip()] for t in seg[2].strip("()").split(","))
    assert payload_codec._TABLE_ENTRY.format == "<" + codes
    flat = _flat()
    assert f"segments at {payload_codec.ALIGN}-byte aligned offsets" in flat
    assert f"rounded up to a multiple of {payload_codec.ALIGN}" in flat
    assert "Buffers under 4 KiB stay in-band" in flat and payload_codec.OUT_OF_BAND_MIN == 4096
    m = re.search(r"\*\*extension type (\d+)\*\*", flat)
    assert m and int(m[1]) == payload_codec._NDARRAY_EXT
    m = re.search(r"Only dtype kinds (.*?) without fields", flat)
    assert m and set(re.findall(r"`(\w)`", m[1])) == set(payload_codec._SAFE_KINDS)


def test_document_table_is_the_document_struct() -> None:
    heading = "### 5.1 Document slot header"
    rows = _numbered(_rows(heading))
    layout = _code_layout(document._HEAD)
    layout += [(document._HEAD.size + o, s, c) for o, s, c in _code_layout(document._HEAD_CRC)]
    assert _doc_layout(rows) == layout
    assert f"({document.HEADER_SIZE} bytes" in _heading(heading)
    assert _field_offset(rows, "MAC of") == document._MAC_AT
    assert _field_offset(rows, "MAC algorithm id") == 52
    assert re.search(r"`(\w+)`", rows[0][3])[1].encode() == document.DOCUMENT_MAGIC
    assert f"bytes `[0, {document._MAC_AT})`" in rows[-2][3]


def test_log_record_table_is_the_record_struct() -> None:
    heading = "#### Log record"
    rows = _numbered(_rows(heading))
    layout = _code_layout(doclog._REC)
    layout += [(doclog._REC.size + o, s, c) for o, s, c in _code_layout(doclog._REC_CRC)]
    assert _doc_layout(rows) == layout
    assert f"({doclog.RECORD_HEADER_SIZE}-byte header" in _heading(heading)
    assert _field_offset(rows, "MAC of") == doclog._MAC_AT
    assert re.search(r"`(\w+)`", rows[0][3])[1].encode() == doclog.RECORD_MAGIC
    assert f"(`{doclog.RECORD_VERSION}`)" in rows[1][3]
    assert f"bytes `[0, {doclog._MAC_AT})`" in rows[-2][3]
    m = re.search(r"C_L = `([^`]+)`", rows[-2][3])
    assert m and m[1] == macs.CONTEXTS["document log"]
    m = re.search(r"HMAC-SHA256\(key, `([^`]+)` ‖ `0x00`", rows[-2][3])
    assert m and m[1].encode() + b"\0" == doclog.HMAC_TAG
    from blockpoint_langgraph import storage
    flat = _flat()
    assert "L = max(16, min(1024, 262144 / B))" in flat
    assert [storage.log_blocks(b) for b in (512, 4096, 65536, 1 << 20)] == [
        max(16, min(1024, 262144 // b)) for b in (512, 4096, 65536, 1 << 20)]
    assert "block 3 .. 3 + L - 1" in flat and storage.SLOTS == 3


# -- enumerations, magics and limits quoted in the text ----------------------------------
def _row_field(heading: str, offset: int) -> str:
    return next(f for o, _, _, f in _numbered(_rows(heading)) if o == offset)


def test_enumerations_match_the_code() -> None:
    h = "### 2.1 Header block"
    codecs = {name: int(v) for v, name in re.findall(r"(\d+) = (\w+)", _row_field(h, 72))}
    assert codecs == fmt.CODECS
    comp = {name: int(v) for v, name in re.findall(r"(\d+) = (\w+)", _row_field(h, 73))}
    assert comp == fmt.COMPRESSIONS
    flags = {text: 1 << int(bit) for bit, text in
             re.findall(r"bit (\d+) = ([^,;(]+?)(?: \(|,|;)", _row_field(h, 75))}
    assert flags == {"MAC present": fmt.FLAG_MAC, "map spilled": fmt.FLAG_MAP_SPILLED,
                     "entries carry content hashes": fmt.FLAG_HASHES}
    chunk = {name: int(v) for v, name in
             re.findall(r"(\d+) = (\w+)", _row_field("### 2.2 Block map entry", 24))}
    assert chunk == {"raw": fmt.CHUNK_RAW, "zstd": fmt.CHUNK_ZSTD}
    versions = re.findall(r"`(\d+)`", _row_field(h, 4))
    assert int(versions[0]) == fmt.FORMAT_VERSION
    assert tuple(sorted(int(v) for v in versions)) == fmt.READ_VERSIONS
    assert f"2 <= K <= {fmt.MAX_SLOTS}" in _flat()


def test_mac_domain_tags_match_the_code() -> None:
    flat = _flat()
    for name, tag in (("T_P", mac_module._PAYLOAD_TAG), ("T_H", mac_module._HEADER_TAG)):
        m = re.search(name + r" = `([^`]+)` ‖ `0x00` \((\d+) bytes\)", flat)
        assert m, f"FORMAT.md 2.5 no longer defines {name}"
        assert m[1].encode("ascii") + b"\0" == tag
        assert int(m[2]) == len(tag)
    # Keyed BLAKE3's key-derivation contexts, one per purpose.
    for name, purpose in (("C_P", "checkpoint payload"), ("C_H", "checkpoint header"),
                          ("C_D", "document")):
        m = re.search(name + r" = `([^`]+)`", flat)
        assert m, f"FORMAT.md 2.5 no longer defines {name}"
        assert m[1] == macs.CONTEXTS[purpose]
    assert len(set(macs.CONTEXTS.values())) == len(macs.CONTEXTS)


def _id_table(heading: str, title: str) -> dict[str, int]:
    """The two-column ``| id | <title> |`` table of a section: name -> id."""
    lines = _section(heading).splitlines()
    start = next(i for i, line in enumerate(lines)
                 if re.match(r"^\s*\|\s*id\s*\|\s*" + re.escape(title) + r"\s*\|$", line))
    out = {}
    for line in lines[start + 2:]:
        m = re.match(r"^\s*\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|$", line)
        if not m:
            break
        out[m[2]] = int(m[1])
    assert out, f"no id table {title!r} under {heading!r}"
    return out


def test_mac_algorithm_ids_match_the_code() -> None:
    """The id table of 2.5, the header row at 142 and the document row at 52 name the same
    ids as the code, and every algorithm a writer can be configured with has one."""
    table = _id_table("### 2.5 Integrity and authentication", "MAC algorithm")
    assert table == fmt.MAC_IDS
    assert table == {"none": macs.MAC_NONE, "HMAC-SHA256": macs.MAC_HMAC_SHA256,
                     "keyed BLAKE3": macs.MAC_BLAKE3, "AES-GMAC": macs.MAC_GMAC}
    assert set(macs.MAC_ALGORITHMS.values()) == set(table.values()) - {macs.MAC_NONE}
    for heading, offset in (("### 2.1 Header block", 142),
                            ("### 5.1 Document slot header", 52)):
        text = _row_field(heading, offset)
        assert text.startswith("MAC algorithm id (2.5)")
        row = {name.strip(): int(v) for v, name in re.findall(r"(\d+) = ([\w -]+?)[;,]", text)}
        assert row == table, (heading, row)
    # The default is the one the doc says writers write by default.
    assert f"Writers write {'AES-GMAC'} ({macs.algorithm_id(macs.DEFAULT_MAC)}) by " \
           "default" in _flat()
    # The document layout versions: written and read.
    versions = re.findall(r"`(\d+)`", _row_field("### 5.1 Document slot header", 4))
    assert int(versions[0]) == document.DOCUMENT_VERSION
    assert tuple(sorted(int(v) for v in versions)) == document.READ_VERSIONS


def test_limits_quoted_in_the_text_match_the_code() -> None:
    flat = _flat()
    assert f"[{checks.MIN_BLOCK_SIZE}, {checks.MAX_BLOCK_SIZE}]" in flat
    assert f'`format` is not `"{fileroot.FORMAT_NAME}"`' in flat
    assert f"A `version` greater than {fileroot.FORMAT_VERSION} MUST be refused" in flat
    assert file.MAX_RECORD_BYTES == 64 * 1024 and "at most 64 KiB" in flat
    assert f'"format": "{objectlayout.META_FORMAT}", "version": {objectlayout.VERSION}' in flat
    assert f'`"{objectlayout.RECORD_FORMAT}"`' in flat
    # The sector rule and the first-sector rule (2.1).
    assert f"[s, min(s + {fmt.SECTOR}, H + 8))" in flat
    assert f"bytes [0, {fmt.SECTOR}) are all zero" in flat
    assert "is at least 4 bytes long and all zeros" in flat
    # zstd chunks: the smallest frame and the "auto" probe.
    assert f"ranges of at least {checkpoint_reader.MIN_ZSTD_FRAME} bytes" in flat
    assert f"stored length < {checkpoint_reader.MIN_ZSTD_FRAME}" in flat
    assert chunk_compress.PROBE_BYTES == 8192 and "an 8 KiB sample" in flat
    assert f"{round(chunk_compress.PROBE_RATIO * 100)} % of its size" in flat
    assert "longer than 16 KiB" in flat and 2 * chunk_compress.PROBE_BYTES == 16 * 1024


def test_sections_are_numbered_once_and_in_order() -> None:
    top, subs = [], []
    for line in _text().splitlines():
        if m := re.match(r"^## (\d+)\. ", line):
            top.append(int(m[1]))
        elif m := re.match(r"^### (\d+)\.(\d+) ", line):
            subs.append((int(m[1]), int(m[2])))
    assert top == list(range(1, len(top) + 1)), top
    for major in {s for s, _ in subs}:
        minors = [n for s, n in subs if s == major]
        assert minors == list(range(1, len(minors) + 1)), (major, minors)
        assert major in top


# -- the rules of 2.3 and 2.5, followed by hand on bytes the code wrote --------------------
def _header(block: bytes) -> dict[str, object]:
    rows = _numbered(_rows("### 2.1 Header block"))
    st = struct.Struct("<" + "".join(f"{s}{c}" if c in "sx" else c
                                     for _, s, c in _doc_layout(rows)))
    names = [f.split(":")[0].split(" (")[0] for _, _, t, f in rows]
    return dict(zip(names, st.unpack_from(block, 0)))


@pytest.mark.parametrize("mac", ["aes-gmac", "blake3", "hmac-sha256"])
def test_spilled_map_and_macs_follow_the_doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            mac: str) -> None:
    """A spilled, MACed checkpoint (key from the environment, non-ASCII key and lease name)
    read with nothing but the doc's rules: the chain is exactly n blocks with a 0 next in
    the last, each block's own CRC is over its used bytes with that field zeroed, the map
    CRC is one running CRC over the used bytes as stored, stored bytes is the sum of the
    stored lengths, and both MACs are the doc's - AES-GMAC or keyed BLAKE3 under the keys
    derived from the key's UTF-8 bytes, or HMAC-SHA256 under those bytes - with the
    header's id."""
    key = "clé-ключ"
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", key)
    bs, name = 1024, "fmt/ünïcode"
    rng = np.random.default_rng(3)
    state = {"noise": rng.random(4000), "zeros": np.zeros(30000), "tag": "x"}
    with FileStore(tmp_path / "s", bs) as store, store.acquire(name) as lease:
        css = CheckpointedStageState(state, lease, compression="auto", mac=mac)
        css.checkpoint(step=2, meta={"k": 1})
        lease_id = lease.lease_id
        raw = (tmp_path / "s" / "leases" / f"{lease_id}.dat").read_bytes()
    block = raw[:bs]
    f = _header(block)
    assert f["flags"] == fmt.FLAG_MAC | fmt.FLAG_MAP_SPILLED
    n_chunks, meta_len, length = f["chunk count N"], f["metadata length M"], \
        f["header length H = 176 + M +"]
    assert length == 176 + meta_len  # spilled: no entries in the header
    e = 48
    epb = (bs - 16) // e
    n = f["map block count"]
    assert n == -(-n_chunks // epb)
    entry = struct.Struct("<QIIIIB7x16s")
    nxt, running, entries = f["first map block"], 0, []
    for j in range(1, n + 1):
        blk = raw[nxt * bs:(nxt + 1) * bs]
        following, count, own = struct.unpack_from("<QII", blk, 0)
        assert count == (epb if j < n else n_chunks - (n - 1) * epb)
        used = blk[:16 + e * count]
        zeroed = bytearray(used)
        zeroed[12:16] = bytes(4)
        assert crc32c(bytes(zeroed)) == own
        running = crc32c(used, running)  # as stored: its own CRC field included
        entries += [entry.unpack_from(used, 16 + e * i) for i in range(count)]
        assert not any(blk[16 + e * count:])  # the unused tail
        if j == n:
            assert following == 0
        nxt = following
    assert running == f["map CRC-32C"]
    assert len(entries) == n_chunks
    assert f["stored bytes"] == sum(x[2] for x in entries)
    payload = bytearray()
    kinds = set()
    for phys, off, stored, rawlen, crc, flags, _ in entries:
        data = raw[phys * bs + off:phys * bs + off + stored]
        assert crc32c(data) == crc
        kinds.add(flags)
        if flags == 1:
            params = zstandard.get_frame_parameters(data)
            assert params.content_size == rawlen and params.dict_id == 0
            data = zstandard.ZstdDecompressor().decompress(data)
        assert len(data) == rawlen
        payload += data
    assert kinds == {0, 1}  # both chunk kinds were exercised
    assert len(payload) == f["data length"]
    flat = _flat()
    k = key.encode("utf-8")
    ident = lease_id.encode("ascii") + b"\0" + name.encode("utf-8") + b"\0"
    covered = bytearray(block[:length])
    covered[104:140] = bytes(36)
    header_input = struct.pack("<I", len(ident)) + ident + bytes(covered)
    ids = _id_table("### 2.5 Integrity and authentication", "MAC algorithm")
    if mac == "blake3":
        assert f["MAC algorithm id"] == ids["keyed BLAKE3"]
        k_p = blake3.blake3(k, derive_key_context=re.search(r"C_P = `([^`]+)`", flat)[1])
        k_h = blake3.blake3(k, derive_key_context=re.search(r"C_H = `([^`]+)`", flat)[1])
        payload_mac = blake3.blake3(bytes(payload), key=k_p.digest()).digest()
        header_mac = blake3.blake3(header_input, key=k_h.digest()).digest()
    elif mac == "aes-gmac":
        assert f["MAC algorithm id"] == ids["AES-GMAC"]

        def gmac(context: str, message: bytes, stored: bytes) -> bytes:
            # The doc's GMAC, written from 2.5 with the one-shot AEAD: the salt S is the
            # stored MAC's first 16 bytes; the tag is AES-256-GCM's over an empty plaintext.
            k_g = blake3.blake3(k, derive_key_context=context).digest()
            salt = stored[:16]
            k_m = blake3.blake3(salt, key=k_g).digest()
            return salt + AESGCM(k_m).encrypt(bytes(12), b"", message)

        g_p = re.search(r"G_P = `([^`]+)`", flat)[1]
        g_h = re.search(r"G_H = `([^`]+)`", flat)[1]
        payload_mac = gmac(g_p, bytes(payload), f["payload MAC"])
        header_mac = gmac(g_h, header_input, f["header MAC"])
        assert f["payload MAC"][:16] != f["header MAC"][:16]  # a salt of each MAC's own
    else:
        assert f["MAC algorithm id"] == ids["HMAC-SHA256"]
        t_p = re.search(r"T_P = `([^`]+)`", flat)[1].encode() + b"\0"
        t_h = re.search(r"T_H = `([^`]+)`", flat)[1].encode() + b"\0"
        payload_mac = hmac.new(k, t_p + bytes(payload), hashlib.sha256).digest()
        header_mac = hmac.new(k, t_h + header_input, hashlib.sha256).digest()
    assert payload_mac == f["payload MAC"]
    assert header_mac == f["header MAC"]


def test_stored_bytes_count_reused_chunks(tmp_path: Path) -> None:
    """FORMAT.md 2.1: stored bytes sums the stored lengths of all N entries, shared ones
    included (an incremental generation that rewrote one chunk reports the full sum)."""
    bs = 4096
    arr = np.random.default_rng(4).integers(0, 256, 12 * bs, dtype=np.uint8)
    with FileStore(tmp_path / "s", bs) as store, store.acquire("inc") as lease:
        css = CheckpointedStageState({"a": arr}, lease, incremental=True, compression="none")
        first = css.checkpoint()
        arr[0] ^= 1
        second = css.checkpoint()
        raw = (tmp_path / "s" / "leases" / f"{lease.lease_id}.dat").read_bytes()
    assert second.chunks_written == 1 and second.chunks_reused > 0
    f = _header(raw[bs:2 * bs])
    assert f["generation"] == 2 and f["incremental depth"] == 1
    assert f["stored bytes"] == second.stored_bytes == first.stored_bytes
    assert "shared (reused) chunks included" in _row_field("### 2.1 Header block", 48)
