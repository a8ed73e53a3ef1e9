"""MAC algorithms (docs/FORMAT.md 2.5, 5.1): AES-GMAC by default, keyed BLAKE3 and
HMAC-SHA256 still read.

* New checkpoint generations and documents carry AES-GMAC and say so in their header;
  ``mac="blake3"`` and ``mac="hmac-sha256"`` write the others, and each restores under the
  same key.
* A version 3 header (no algorithm id: HMAC-SHA256) and a layout 1 document, rewritten by
  hand from the doc's rules, are read.
* The algorithm id is authenticated: a forger who changes it (CRC recomputed) fails the
  header MAC; an id that contradicts flag bit 0, an unknown id or a non-zero reserved byte
  is refused as damage.
* Documents (and so the LangGraph saver's threads) stay keyed BLAKE3 by default, which
  every earlier version reads; AES-GMAC checkpoints are format version 5, which a reader
  of version 4 refuses as newer and whose slots its writer does not overwrite.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import blake3
import numpy as np
import pytest

from blockstore import KeyRing, MemoryStore, SlottedDocument, crc32c
from blockstore.keys import KEY_ENV, OLD_KEYS_ENV
from blockstore.macs import MAC_BLAKE3, MAC_GMAC, MAC_HMAC_SHA256, blake3_key, gmac_key
from stages import CheckpointAuthError, CheckpointCorrupt, CheckpointedStageState, verify_lease
from stages.checkpoint import format as fmt
from stages.checkpoint.mac import _HEADER_TAG

BS = 4096


@pytest.fixture(autouse=True)
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_MAC", raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(OLD_KEYS_ENV, raising=False)


def _headers(store: MemoryStore, lease_id: str, name: str) -> dict[int, fmt.Header]:
    reader = store.open_reader(lease_id)
    out = {}
    for slot in range(2):
        block = reader.read_block(slot)
        if any(block):
            h = fmt.parse_header(block, slot=slot, lease_id=lease_id, name=name)
            out[h.generation] = h
    return out


def _reseal(block: bytearray) -> None:
    """Recompute the header CRC and trailer (what anyone with write access can do)."""
    length = struct.unpack_from("<Q", block, 96)[0]
    struct.pack_into("<I", block, fmt.CRC_OFFSET, 0)
    crc = crc32c(bytes(block[:length]))
    struct.pack_into("<I", block, fmt.CRC_OFFSET, crc)
    struct.pack_into("<4sI", block, length, b"KHCP", crc)


def test_gmac_by_default_and_older_algorithms_restore_beside_it() -> None:
    """Generation 1 HMAC-SHA256, generation 2 keyed BLAKE3, one lease: both verify under the
    key, the newest restores, and an HMAC-only lease restores through a default
    (GMAC-writing) state; a wrong key verifies neither. Generation 3 (the default) is
    AES-GMAC beside the BLAKE3 one, and both verify."""
    st = MemoryStore(BS)
    lease = st.acquire("stage")
    arr = np.arange(20_000, dtype=np.int64)
    CheckpointedStageState({"a": arr}, lease, key=b"k", mac="hmac-sha256").checkpoint(step=1)
    only_hmac = CheckpointedStageState.restore(st.open_reader(lease.lease_id), key=b"k")
    assert np.array_equal(only_hmac.state["a"], arr)
    CheckpointedStageState({"a": arr * 2}, lease, key=b"k", mac="blake3").checkpoint(step=2)
    hs = _headers(st, lease.lease_id, "stage")
    assert (hs[1].version, hs[1].mac_algorithm) == (4, MAC_HMAC_SHA256)
    assert (hs[2].version, hs[2].mac_algorithm) == (4, MAC_BLAKE3)
    assert hs[1].has_mac and hs[2].has_mac
    reader = st.open_reader(lease.lease_id)
    back = CheckpointedStageState.restore(reader, key=b"k")
    assert back.restored.step == 2 and np.array_equal(back.state["a"], arr * 2)
    assert {r.generation: r.ok for r in verify_lease(reader, key=b"k")} == {2: True, 1: True}
    wrong = {r.generation: r.status for r in verify_lease(reader, key=b"other")}
    assert all("MAC" in s for s in wrong.values()), wrong
    with pytest.raises(CheckpointAuthError):
        CheckpointedStageState.restore(reader, key=b"other")
    CheckpointedStageState({"a": arr * 3}, lease, key=b"k").checkpoint(step=3)
    hs = _headers(st, lease.lease_id, "stage")
    assert (hs[3].version, hs[3].mac_algorithm) == (5, MAC_GMAC)
    assert hs[2].mac_algorithm == MAC_BLAKE3
    back = CheckpointedStageState.restore(reader, key=b"k")
    assert back.restored.step == 3 and np.array_equal(back.state["a"], arr * 3)
    assert {r.generation: r.ok for r in verify_lease(reader, key=b"k")} == {3: True, 2: True}
    with pytest.raises(CheckpointAuthError):
        CheckpointedStageState.restore(reader, key=b"other")
    with pytest.raises(ValueError, match="mac must be one of"):
        CheckpointedStageState({}, lease, mac="sha1")


def test_gmac_generations_are_version_5_which_a_version_4_blockpoint_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An AES-GMAC generation is format version 5 and every other one version 4, so a
    blockpoint that reads up to version 4 (simulated: this module's limit lowered) refuses
    a GMAC generation as newer - restore skips it as a newer format, and its writer refuses
    to checkpoint over it (CheckpointDowngradeRefused) - instead of skipping it as damage
    and overwriting it; an unkeyed generation is version 4."""
    from stages import CheckpointDowngradeRefused
    st = MemoryStore(BS)
    lease = st.acquire("mixed")
    CheckpointedStageState({"v": 1}, lease, key=b"k", mac="blake3").checkpoint(step=1)
    CheckpointedStageState({"v": 2}, lease, key=b"k").checkpoint(step=2)
    hs = _headers(st, lease.lease_id, "mixed")
    assert (hs[1].version, hs[2].version) == (4, 5)
    plain = st.acquire("plain")
    CheckpointedStageState({"v": 0}, plain, codec="msgpack").checkpoint()
    assert _headers(st, plain.lease_id, "plain")[1].version == 4
    monkeypatch.setattr(fmt, "FORMAT_VERSION", 4)
    monkeypatch.setattr(fmt, "READ_VERSIONS", (2, 3, 4))
    back = CheckpointedStageState.restore(st.open_reader(lease.lease_id), key=b"k")
    assert back.restored.step == 1  # the GMAC generation is not this reader's to read
    assert "format version 5" in str(back.restored.skipped), \
        back.restored.skipped
    with pytest.raises(CheckpointDowngradeRefused, match="format version 5"):
        CheckpointedStageState({"v": 3}, lease, key=b"k", mac="blake3").checkpoint(step=3)
    monkeypatch.undo()
    assert CheckpointedStageState.restore(st.open_reader(lease.lease_id),
                                          key=b"k").restored.step == 2  # nothing lost


def test_the_mac_of_new_generations_can_be_set_for_a_staged_upgrade(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """$BLOCKPOINT_CHECKPOINT_MAC picks the algorithm where the code gives none (so stage
    actors and pipelines follow it); an explicit ``mac=`` wins; a bad name is refused naming
    the variable (nothing written)."""
    from stages.checkpoint.mac import MAC_ENV
    st = MemoryStore(BS)
    lease = st.acquire("env")
    monkeypatch.setenv(MAC_ENV, " blake3 ")
    CheckpointedStageState({"v": 1}, lease, key=b"k").checkpoint(step=1)
    CheckpointedStageState({"v": 2}, lease, key=b"k", mac="aes-gmac").checkpoint(step=2)
    hs = _headers(st, lease.lease_id, "env")
    assert [(hs[g].version, hs[g].mac_algorithm) for g in (1, 2)] == [(4, MAC_BLAKE3),
                                                                       (5, MAC_GMAC)]
    monkeypatch.setenv(MAC_ENV, "sha1")
    with pytest.raises(ValueError, match=r"\$BLOCKPOINT_CHECKPOINT_MAC must be one of .*'sha1'"):
        CheckpointedStageState({"v": 3}, lease, key=b"k")
    monkeypatch.setenv(MAC_ENV, "")
    CheckpointedStageState({"v": 3}, lease, key=b"k").checkpoint(step=3)
    assert _headers(st, lease.lease_id, "env")[3].mac_algorithm == MAC_GMAC


def test_a_gmac_id_in_a_version_4_header_is_damage() -> None:
    st = MemoryStore(BS)
    lid, block = _keyed_block(st)
    assert (struct.unpack_from("<I", block, 4)[0], block[142]) == (5, MAC_GMAC)
    struct.pack_into("<I", block, 4, 4)
    _reseal(block)
    with pytest.raises(CheckpointCorrupt, match="MAC algorithm id 3 in a version 4 header"):
        fmt.parse_header(block, slot=0, lease_id=lid, name="forge")


def test_a_version_3_hmac_generation_is_restored() -> None:
    """A header rewritten into version 3 by the doc's rules (one u32 depth at 140, no id,
    HMAC-SHA256 over T_H, the lease identity and the covered bytes) restores under the key
    and keeps its depth; the payload MAC is the same in both versions."""
    st = MemoryStore(BS)
    lease = st.acquire("old")
    arr = np.random.default_rng(1).integers(0, 256, 6 * BS, dtype=np.uint8)
    css = CheckpointedStageState({"a": arr}, lease, key=b"key", mac="hmac-sha256",
                                 incremental=True, compression="none")
    css.checkpoint()
    arr[0] ^= 1
    assert css.checkpoint().depth == 1  # generation 2, slot 1
    block = bytearray(lease.read_block(1))
    assert block[142] == MAC_HMAC_SHA256
    struct.pack_into("<I", block, 4, 3)
    struct.pack_into("<I", block, 140, 1)  # v3: the u32 depth; no id, no reserved byte
    length = struct.unpack_from("<Q", block, 96)[0]
    covered = bytearray(block[:length])
    covered[104:140] = bytes(36)
    ident = lease.lease_id.encode() + b"\0old\0"
    block[104:136] = hmac.new(b"key", _HEADER_TAG + struct.pack("<I", len(ident)) + ident
                              + bytes(covered), hashlib.sha256).digest()
    _reseal(block)
    lease.write_blocks({1: block})
    lease.flush()
    h = fmt.parse_header(block, slot=1, lease_id=lease.lease_id, name="old")
    assert (h.version, h.depth, h.mac_algorithm) == (3, 1, MAC_HMAC_SHA256)
    back = CheckpointedStageState.restore(st.open_reader(lease.lease_id), key=b"key")
    assert back.restored.generation == 2 and back.restored.info.depth == 1
    assert np.array_equal(back.state["a"], arr)
    assert back.restored.skipped == ()


def _keyed_block(st: MemoryStore) -> tuple[str, bytearray]:
    lease = st.acquire("forge")
    CheckpointedStageState({"v": list(range(100))}, lease, key=b"key").checkpoint()
    return lease.lease_id, bytearray(lease.read_block(0))


def test_the_algorithm_id_is_covered_by_the_header_mac() -> None:
    """Relabelling a GMAC generation as HMAC-SHA256 (CRC recomputed, no key) fails the
    header MAC before anything it points to is read."""
    st = MemoryStore(BS)
    lid, block = _keyed_block(st)
    assert block[142] == MAC_GMAC
    block[142] = MAC_HMAC_SHA256
    _reseal(block)
    lease = st.acquire("forge", steal=True)
    lease.write_blocks({0: block})
    lease.flush()
    with pytest.raises(CheckpointAuthError, match="header MAC mismatch"):
        CheckpointedStageState.restore(st.open_reader(lid), key=b"key")


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.__setitem__(75, b[75] & ~fmt.FLAG_MAC), "MAC algorithm id 3 with flag bit 0 clear"),
    (lambda b: b.__setitem__(142, 9), "MAC algorithm id 9 unknown"),
    (lambda b: b.__setitem__(143, 1), "reserved byte 143 is 1"),
])
def test_an_inconsistent_algorithm_field_is_damage(edit, message: str) -> None:
    st = MemoryStore(BS)
    lid, block = _keyed_block(st)
    edit(block)
    _reseal(block)
    with pytest.raises(CheckpointCorrupt, match=message):
        fmt.parse_header(block, slot=0, lease_id=lid, name="forge")


def test_a_header_that_claims_no_mac_is_refused_under_a_key() -> None:
    """Stripping the MAC (id 0, flag clear, CRC recomputed) is refused by a keyed reader."""
    st = MemoryStore(BS)
    lid, block = _keyed_block(st)
    block[75] &= ~fmt.FLAG_MAC
    block[142] = 0
    _reseal(block)
    lease = st.acquire("forge", steal=True)
    lease.write_blocks({0: block})
    lease.flush()
    with pytest.raises(CheckpointAuthError, match="has no MAC"):
        CheckpointedStageState.restore(st.open_reader(lid), key=b"key")


# -- documents ---------------------------------------------------------------------------
def _doc_head(st: MemoryStore, name: str) -> bytearray:
    return bytearray(st.open_reader(name).read_block(0)[:92])


def test_documents_default_to_blake3_and_read_gmac_hmac_and_layout_1() -> None:
    st = MemoryStore(BS)
    with SlottedDocument(st.acquire("gm"), kind=b"TEST", version=1, key=b"K",
                         mac="aes-gmac") as d:
        d.save({"n": 0})
    gm = _doc_head(st, "gm")
    assert struct.unpack_from("<I", gm, 52)[0] == MAC_GMAC
    # AES-GMAC under a key derived from K and the salt that opens the MAC (FORMAT.md 2.5)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    lid = st.open_reader("gm").lease_id
    payload = bytes(st.open_reader("gm").read_block(2)[:struct.unpack_from("<Q", gm, 24)[0]])
    salt = bytes(gm[56:72])
    k_m = blake3.blake3(salt, key=gmac_key(b"K", "document")).digest()
    assert bytes(gm[56:88]) == salt + AESGCM(k_m).encrypt(
        bytes(12), b"", bytes(gm[:56]) + lid.encode() + payload)
    with SlottedDocument(st.acquire("b3"), kind=b"TEST", version=1, key=b"K") as d:
        d.save({"n": 1})
    with SlottedDocument(st.acquire("hm"), kind=b"TEST", version=1, key=b"K",
                         mac="hmac-sha256") as d:
        d.save({"n": 2})
    b3, hm = _doc_head(st, "b3"), _doc_head(st, "hm")
    assert struct.unpack_from("<II", b3, 4)[0] == 2 and struct.unpack_from("<I", b3, 52)[0] == 2
    assert struct.unpack_from("<I", hm, 52)[0] == 1
    # keyed BLAKE3 under the document key derived from K (FORMAT.md 2.5, 5.1)
    lid = st.open_reader("b3").lease_id
    payload = bytes(st.open_reader("b3").read_block(2)[:struct.unpack_from("<Q", b3, 24)[0]])
    assert bytes(b3[56:88]) == blake3.blake3(bytes(b3[:56]) + lid.encode() + payload,
                                             key=blake3_key(b"K", "document")).digest()
    for name, n in (("gm", 0), ("b3", 1), ("hm", 2)):
        reader = st.open_reader(name)
        assert SlottedDocument(reader, kind=b"TEST", version=1, key=b"K").load().document \
            == {"n": n}
        assert SlottedDocument(reader, kind=b"TEST", version=1, key=KeyRing(b"new", (b"K",))
                               ).load().document == {"n": n}
        miss = SlottedDocument(reader, kind=b"TEST", version=1, key=b"other").load()
        assert miss.document is None and "MAC mismatch" in miss.skipped[0].reason
    # Layout version 1, by the doc: the u32 at 52 reserved, the MAC HMAC-SHA256.
    lease = st.acquire("hm", steal=True)
    head = bytearray(hm)
    struct.pack_into("<I", head, 4, 1)
    struct.pack_into("<I", head, 52, 0)
    hlen = struct.unpack_from("<Q", head, 24)[0]
    payload = bytes(lease.read_block(2)[:hlen])
    head[56:88] = hmac.new(b"K", bytes(head[:56]) + lease.lease_id.encode() + payload,
                           hashlib.sha256).digest()
    struct.pack_into("<I", head, 88, crc32c(bytes(head[:88])))
    lease.write_blocks({0: bytes(head)})
    lease.flush()
    reader = st.open_reader("hm")
    assert SlottedDocument(reader, kind=b"TEST", version=1, key=b"K").load().document == {"n": 2}
    # ... and a layout 1 header with the u32 at 52 set is refused, not read as an id.
    struct.pack_into("<I", head, 52, 2)
    struct.pack_into("<I", head, 88, crc32c(bytes(head[:88])))
    lease.write_blocks({0: bytes(head)})
    lease.flush()
    got = SlottedDocument(reader, kind=b"TEST", version=1, key=b"K").load()
    assert got.document is None and "reserved field" in got.skipped[0].reason


def test_document_algorithm_id_is_covered_by_its_mac() -> None:
    st = MemoryStore(BS)
    with SlottedDocument(st.acquire("d"), kind=b"TEST", version=1, key=b"K") as d:
        d.save({"n": 1})
    lease = st.acquire("d", steal=True)
    head = _doc_head(st, "d")
    struct.pack_into("<I", head, 52, MAC_HMAC_SHA256)
    struct.pack_into("<I", head, 88, crc32c(bytes(head[:88])))
    lease.write_blocks({0: bytes(head)})
    lease.flush()
    got = SlottedDocument(st.open_reader("d"), kind=b"TEST", version=1, key=b"K").load()
    assert got.document is None and "MAC mismatch" in got.skipped[0].reason


def test_langgraph_thread_documents_are_keyed_blake3() -> None:
    from langgraph.checkpoint.conformance.test_utils import (
        generate_checkpoint,
        generate_config,
        generate_metadata,
    )

    from blockpoint_langgraph import BlockpointSaver
    from blockpoint_langgraph.errors import ThreadAuthError

    st = MemoryStore(BS)
    with BlockpointSaver(st, key=b"K") as saver:
        cp = generate_checkpoint(channel_values={"x": 1}, channel_versions={"x": 1})
        saver.put(generate_config("t"), cp, generate_metadata(step=1), {"x": 1})
    name = next(i.name for i in st.list_leases() if i.name.startswith("langgraph/"))
    head = _doc_head(st, name)
    assert struct.unpack_from("<II", head, 48) == (1, MAC_BLAKE3)  # flags, MAC algorithm
    with BlockpointSaver(st, key=b"K") as reader:
        assert reader.get_tuple(generate_config("t")).checkpoint["id"] == cp["id"]
    with BlockpointSaver(st, key=b"other") as reader:  # a wrong key is an error, not empty
        with pytest.raises(ThreadAuthError):
            reader.get_tuple(generate_config("t"))


def test_keyed_restore_names_a_damaged_raw_block_as_a_crc_failure() -> None:
    """With a key the raw chunks' CRCs are checked only when the payload MAC fails; a flipped
    bit in a raw block is still reported as that block's CRC failure, not as forgery, by
    restore and by verify."""
    st = MemoryStore(BS)
    lease = st.acquire("dmg")
    arr = np.random.default_rng(2).integers(0, 256, 8 * BS, dtype=np.uint8)
    css = CheckpointedStageState({"a": arr}, lease, key=b"k", compression="none")
    css.checkpoint()
    reader = st.open_reader(lease.lease_id)
    h = _headers(st, lease.lease_id, "dmg")[1]
    from stages.checkpoint.reader import load_map
    entries, _ = load_map(reader, h)
    victim = entries[3].block
    block = bytearray(lease.read_block(victim))
    block[100] ^= 0x10
    lease.write_blocks({victim: block})
    lease.flush()
    with pytest.raises(CheckpointCorrupt, match=f"data block {victim} fails its CRC-32C") as exc:
        CheckpointedStageState.restore(reader, key=b"k")
    assert not isinstance(exc.value, CheckpointAuthError) and exc.value.block == victim
    (report,) = [r for r in verify_lease(reader, key=b"k") if r.generation == 1]
    assert report.block == victim and "CRC-32C" in report.status
