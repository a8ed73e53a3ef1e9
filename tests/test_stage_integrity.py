"""Integrity (A3, A4) and authentication: flipped bits, bad headers, truncation, MACs.

Bits are flipped in the store's raw data file, the way disk or transport corruption would
look to a reader; every flip is inside bytes the format covers (header, block map, stored
chunk), since bytes no map entry covers are never read.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from blockstore import FileStore, crc32c
from stages import (
    BadMagicError,
    CheckpointAuthError,
    CheckpointCorrupt,
    CheckpointDowngradeRefused,
    CheckpointedStageState,
    CheckpointFailed,
    NoCheckpointError,
    TruncatedCheckpointError,
    UnsupportedFormatError,
    verify_lease,
)
from stages.checkpoint import format as fmt
from stages.checkpoint.reader import load_map, scan_slots

BS = 1024


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)


def _state(tag: int) -> dict:
    rng = np.random.default_rng(tag)
    noise = rng.integers(0, 256, 30 * BS, dtype=np.uint8)
    runs = np.full(20 * BS, tag, dtype=np.uint8)
    return {"tag": tag, "noise": noise, "runs": runs}


def _same(a: dict, b: dict) -> bool:
    return (a["tag"] == b["tag"] and np.array_equal(a["noise"], b["noise"])
            and np.array_equal(a["runs"], b["runs"]))


class Lab:
    """A store with two committed generations and access to its raw data file."""

    def __init__(self, root: Path, **opts: object) -> None:
        self.root = root
        self.store = FileStore(root, BS)
        self.lease = self.store.acquire("stage")
        self.css = CheckpointedStageState(_state(1), self.lease, **opts)
        self.css.checkpoint(step=1)
        self.css.state = _state(2)
        self.css.checkpoint(step=2)
        self.dat = root / "leases" / f"{self.lease.lease_id}.dat"

    def reader(self):
        return self.store.open_reader("stage")

    def covered(self) -> dict[int, list[tuple[int, int, int]]]:
        """generation -> [(block, lo, hi)] of every byte range the generation relies on."""
        _, scans = scan_slots(self.reader())
        out: dict[int, list[tuple[int, int, int]]] = {}
        for s in scans:
            h = s.header
            assert h is not None
            ranges = [(s.slot, 0, h.header_length)]
            entries, map_blocks = load_map(self.reader(), h)
            for mb in map_blocks:
                count = struct.unpack_from("<I", self.read(mb, 8, 4))[0]
                ranges.append((mb, 0, fmt.MAPBLOCK.size + count * fmt.ENTRY.size))
            ranges += [(e.block, e.offset, e.offset + e.stored) for e in entries]
            out[h.generation] = ranges
        return out

    def read(self, block: int, pos: int, n: int) -> bytes:
        with open(self.dat, "rb") as f:
            f.seek(block * BS + pos)
            return f.read(n)

    def write(self, block: int, pos: int, data: bytes) -> None:
        with open(self.dat, "r+b") as f:
            f.seek(block * BS + pos)
            f.write(data)

    def flip(self, block: int, pos: int, bit: int = 0) -> None:
        b = self.read(block, pos, 1)[0]
        self.write(block, pos, bytes([b ^ (1 << bit)]))


def test_every_single_bit_flip_is_detected_and_falls_back(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "s")
    cov = lab.covered()
    assert sorted(cov) == [1, 2]
    kinds = {"zstd": 0, "raw": 0, "map": 0}
    _, scans = scan_slots(lab.reader())
    for s in scans:
        entries, maps = load_map(lab.reader(), s.header)
        kinds["map"] += len(maps)
        kinds["zstd"] += sum(e.flags == fmt.CHUNK_ZSTD for e in entries)
        kinds["raw"] += sum(e.flags == fmt.CHUNK_RAW for e in entries)
    assert all(kinds.values()), kinds  # raw, packed zstd chunks and spilled map blocks
    rng = np.random.default_rng(0)
    seen_blocks: set[int] = set()
    for gen, other in ((2, 1), (1, 2)):
        for block, lo, hi in cov[gen]:
            if block in seen_blocks and block >= 2:
                continue  # a packed block holds several chunks; once per block is enough
            seen_blocks.add(block)
            pos, bit = int(rng.integers(lo, hi)), int(rng.integers(0, 8))
            lab.flip(block, pos, bit)
            try:
                back = CheckpointedStageState.restore(lab.reader())
                assert _same(back.state, _state(other)), (gen, block, pos)
                if gen == 2:  # the newest failed: fallback, and the report says so
                    assert back.restored.generation == 1
                    assert back.restored.skipped and back.restored.skipped[0][0] in (2, None)
                reports = {r.generation: r for r in verify_lease(lab.reader())}
                bad = [r for r in verify_lease(lab.reader()) if r.corrupt]
                assert len(bad) == 1, (gen, block, bad)
                assert bad[0].block == block
                assert reports.get(other) is not None and reports[other].ok
            finally:
                lab.flip(block, pos, bit)
    assert CheckpointedStageState.restore(lab.reader()).restored.generation == 2


def test_all_generations_bad_names_lease_generation_block(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "s")
    cov = lab.covered()
    # flip a bit in a data chunk of each generation
    targets = {g: cov[g][-1] for g in (1, 2)}
    for _, (block, lo, _hi) in targets.items():
        lab.flip(block, lo)
    with pytest.raises(CheckpointCorrupt) as ei:
        CheckpointedStageState.restore(lab.reader())
    err = ei.value
    assert err.lease_id == lab.lease.lease_id and err.name == "stage"
    assert err.generation == 2 and err.block == targets[2][0]
    assert "stage" in str(err) and f"block {targets[2][0]}" in str(err)
    assert [g for g, _ in err.skipped] == [2, 1]


def test_wrong_magic(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "s")
    lab.write(0, 0, b"XXXX")
    back = CheckpointedStageState.restore(lab.reader())  # one slot left
    assert back.restored.skipped and "magic" in back.restored.skipped[0][1]
    lab.write(1, 0, b"JUNK")
    with pytest.raises(BadMagicError):
        CheckpointedStageState.restore(lab.reader())


def test_newer_version(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "s")
    newest = max(range(2), key=lambda s: struct.unpack("<Q", lab.read(s, 16, 8))[0])
    newer = fmt.FORMAT_VERSION + 1
    lab.write(newest, 4, struct.pack("<I", newer))
    back = CheckpointedStageState.restore(lab.reader())
    assert back.restored.generation == 1
    assert f"version {newer}" in back.restored.skipped[0][1]
    lab.write(1 - newest, 4, struct.pack("<I", 7))
    with pytest.raises(UnsupportedFormatError) as ei:
        CheckpointedStageState.restore(lab.reader())
    assert ei.value.version in (newer, 7)


def test_restore_reports_the_most_informative_failure(tmp_path: Path) -> None:
    """A torn slot (an interrupted commit) or a damaged older generation must not hide that
    the lease holds a newer format version: that is the error that says what to do."""
    lab = Lab(tmp_path / "s")
    newest = max(range(2), key=lambda s: struct.unpack("<Q", lab.read(s, 16, 8))[0])
    newer = fmt.FORMAT_VERSION + 1
    lab.write(newest, 4, struct.pack("<I", newer))
    older = 1 - newest
    assert (older, newest) == (0, 1)  # the torn slot comes first in slot order
    # Slot 0: a header write that lost its first sector (uncommitted) ...
    lab.write(older, 0, bytes(512))
    lab.write(older, 600, b"\x01")  # ... while a later one landed
    with pytest.raises(UnsupportedFormatError, match=f"version {newer}") as ei:
        CheckpointedStageState.restore(lab.reader())
    assert ei.value.version == newer and ei.value.slot == newest
    assert len(ei.value.skipped) == 2
    # ... or an older generation whose data fails its CRC (damage): the newer version wins.
    lab2 = Lab(tmp_path / "t")
    _, scans = scan_slots(lab2.reader())
    old_h = next(s.header for s in scans if s.header and s.header.generation == 1)
    first = load_map(lab2.reader(), old_h)[0][0]
    lab2.flip(first.block, first.offset)
    lab2.write(1 - old_h.slot, 4, struct.pack("<I", newer))
    with pytest.raises(UnsupportedFormatError) as ei:
        CheckpointedStageState.restore(lab2.reader())
    assert ei.value.version == newer
    assert any("CRC" in why for _, why in ei.value.skipped), ei.value.skipped


def test_an_older_writer_refuses_to_overwrite_a_newer_version(tmp_path: Path) -> None:
    """A newer blockpoint wrote the newest generation (its version is all this one can read
    of it): restore falls back, but a checkpoint - after that restore or from a fresh
    object - is refused and leaves every byte of the lease as it was (no downgrade loss)."""
    lab = Lab(tmp_path / "s")
    newest = max(range(2), key=lambda s: struct.unpack("<Q", lab.read(s, 16, 8))[0])
    newer = fmt.FORMAT_VERSION + 1
    lab.write(newest, 4, struct.pack("<I", newer))
    before = lab.dat.read_bytes()
    back = CheckpointedStageState.restore(lab.lease)
    assert back.restored.generation == 1
    for css in (back, CheckpointedStageState(_state(9), lab.lease, retention=3)):
        with pytest.raises(CheckpointDowngradeRefused, match=f"format version {newer}") as ei:
            css.checkpoint(step=9)
        assert isinstance(ei.value, CheckpointFailed)
        assert (ei.value.version, ei.value.slot, ei.value.lease_id) == (
            newer, newest, lab.lease.lease_id)
        assert lab.dat.read_bytes() == before
    lab.lease.release()


def test_truncated_lease(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "s")
    lab.lease.resize(6)
    with pytest.raises(TruncatedCheckpointError) as ei:
        CheckpointedStageState.restore(lab.reader())
    assert ei.value.block is not None and ei.value.block >= 6
    assert all("beyond the lease" in r.status for r in verify_lease(lab.reader()))


def test_empty_lease(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as store:
        store.acquire("zero")
        with pytest.raises(NoCheckpointError) as ei:
            CheckpointedStageState.restore(store.open_reader("zero"))
        assert isinstance(ei.value, LookupError)
        store.acquire("zeros", num_blocks=8)
        with pytest.raises(NoCheckpointError):
            CheckpointedStageState.restore(store.open_reader("zeros"))
        with pytest.raises(NoCheckpointError):
            verify_lease(store.open_reader("zeros"))


class Canary:
    """Unpickling this records it: proves a refused restore ran no pickle code."""

    loaded: list[int] = []

    def __reduce__(self):
        return (_canary, (1,))


def _canary(x: int) -> Canary:
    Canary.loaded.append(x)
    return Canary()


def test_mac_wrong_key_missing_mac_and_env(tmp_path: Path, monkeypatch) -> None:
    with FileStore(tmp_path / "s", BS) as store:
        lease = store.acquire("m")
        CheckpointedStageState({"c": Canary(), "v": 1}, lease, key=b"k1").checkpoint()
        Canary.loaded.clear()
        with pytest.raises(CheckpointAuthError):
            CheckpointedStageState.restore(store.open_reader("m"), key=b"k2")
        assert Canary.loaded == []
        ok = CheckpointedStageState.restore(store.open_reader("m"), key=b"k1")
        assert ok.state["v"] == 1 and Canary.loaded == [1]
        # no key configured: the MAC is not checked, the checkpoint still restores
        assert CheckpointedStageState.restore(store.open_reader("m")).state["v"] == 1
        # env key: a checkpoint written without a MAC is refused when a key is configured
        plain = store.acquire("plain")
        CheckpointedStageState({"c": Canary()}, plain).checkpoint()
        monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", "k1")
        Canary.loaded.clear()
        with pytest.raises(CheckpointAuthError, match="no MAC"):
            CheckpointedStageState.restore(store.open_reader("plain"))
        assert Canary.loaded == []
        assert CheckpointedStageState.restore(store.open_reader("m")).state["v"] == 1
        monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", "other")
        with pytest.raises(CheckpointAuthError):
            CheckpointedStageState.restore(store.open_reader("m"))


def test_mac_catches_tampering_with_recomputed_crcs(tmp_path: Path) -> None:
    """An attacker who fixes every CRC still cannot get data past the MAC."""
    with FileStore(tmp_path / "s", BS) as store:
        lease = store.acquire("t")
        payload = np.zeros(100, dtype=np.uint8)
        css = CheckpointedStageState({"x": b"A" * 200, "p": payload}, lease, key=b"secret",
                                     compression="none", retention=2)
        css.checkpoint()
        dat = tmp_path / "s" / "leases" / f"{lease.lease_id}.dat"
        _, scans = scan_slots(store.open_reader("t"))
        h = scans[0].header
        entries, _ = load_map(store.open_reader("t"), h)
        e = entries[0]
        raw = bytearray(dat.read_bytes())
        chunk = bytearray(raw[e.block * BS:e.block * BS + e.stored])
        i = chunk.find(b"A" * 200)
        chunk[i:i + 200] = b"B" * 200
        raw[e.block * BS:e.block * BS + e.stored] = chunk
        fixed = [x._replace(crc=crc32c(bytes(chunk))) if x is e else x for x in entries]
        inline = fmt.pack_entries(fixed)
        block = bytearray(raw[0:BS])
        meta_len = struct.unpack_from("<I", block, 76)[0]
        block[fmt.HEADER_SIZE + meta_len:fmt.HEADER_SIZE + meta_len + len(inline)] = inline
        struct.pack_into("<I", block, 84, crc32c(inline))
        mac = bytes(block[104:136])
        fmt.seal_header(block, mac)
        raw[0:BS] = block
        dat.write_bytes(bytes(raw))
        tampered = CheckpointedStageState.restore(store.open_reader("t"))  # CRCs pass...
        assert tampered.state["x"] == b"B" * 200
        with pytest.raises(CheckpointAuthError, match="MAC mismatch"):  # ...the MAC does not
            CheckpointedStageState.restore(store.open_reader("t"), key=b"secret")


# ----------------------------------------------------------- forged headers (issue 9, defect 4)


def _forge(block: bytearray, **fields: int) -> bytearray:
    """Rewrite fixed header fields (by FORMAT.md offset) and re-seal the CRC, as an attacker
    without the key can."""
    offsets = {"data_length": (8, "<Q"), "chunks": (56, "<Q"), "flags": (75, "<B"),
               "map_blocks": (80, "<I"), "map_crc": (84, "<I"), "first_map": (88, "<Q"),
               "length": (96, "<Q")}
    for name, value in fields.items():
        off, f = offsets[name]
        struct.pack_into(f, block, off, value)
    return fmt.seal_header(block, bytes(block[104:136]))


def _spilled_lab(root: Path, *, key: bytes | None = None) -> tuple[FileStore, Path, int]:
    """A committed generation with a spilled map (1 KiB blocks, many chunks)."""
    store = FileStore(root, BS)
    lease = store.acquire("forge")
    css = CheckpointedStageState({"a": np.random.default_rng(1).integers(
        0, 256, 60 * BS, dtype=np.uint8)}, lease, compression="none", key=key)
    css.checkpoint()
    lease.release()
    dat = root / "leases" / f"{lease.lease_id}.dat"
    _, scans = scan_slots(store.open_reader("forge"))
    slot = next(s.slot for s in scans if s.header is not None)
    assert scans[slot].header.spilled
    return store, dat, slot


@pytest.mark.timeout(30)
def test_self_referencing_map_block_is_refused_not_followed_forever(tmp_path: Path) -> None:
    store, dat, slot = _spilled_lab(tmp_path / "s")
    raw = bytearray(dat.read_bytes())
    _, scans = scan_slots(store.open_reader("forge"))
    first = scans[slot].header.first_map_block
    # The first map block points at itself; the header claims 2**32-1 map blocks.
    mb = bytearray(raw[first * BS:(first + 1) * BS])
    count = struct.unpack_from("<I", mb, 8)[0]
    struct.pack_into("<Q", mb, 0, first)
    struct.pack_into("<I", mb, 12, 0)
    struct.pack_into("<I", mb, 12, crc32c(bytes(mb[:fmt.MAPBLOCK.size + count * fmt.ENTRY.size])))
    raw[first * BS:(first + 1) * BS] = mb
    for claimed in (2, 2 ** 32 - 1):
        block = _forge(bytearray(raw[slot * BS:(slot + 1) * BS]), map_blocks=claimed,
                       chunks=claimed * fmt.entries_per_map_block(BS))
        raw[slot * BS:(slot + 1) * BS] = block
        dat.write_bytes(bytes(raw))
        with pytest.raises(CheckpointCorrupt, match="loops|claims") as err:
            CheckpointedStageState.restore(store.open_reader("forge"))
        assert not isinstance(err.value, CheckpointAuthError)
        assert any(r.corrupt for r in verify_lease(store.open_reader("forge")))
    store.close()


@pytest.mark.timeout(30)
def test_forged_data_length_is_refused_before_any_allocation(tmp_path: Path) -> None:
    """A 3-block lease claiming a 31 GiB payload, or chunks sharing one block: specific
    errors, before the payload buffer is allocated."""
    root = tmp_path / "s"
    with FileStore(root, 4096) as store:
        lease = store.acquire("tiny")
        CheckpointedStageState({"v": b"x" * 5000}, lease, compression="none").checkpoint()
        dat = root / "leases" / f"{lease.lease_id}.dat"
        good = bytearray(dat.read_bytes())
        _, scans = scan_slots(store.open_reader("tiny"))
        h = next(s.header for s in scans if s.header is not None)
        entries = load_map(store.open_reader("tiny"), h)[0]
        assert len(entries) == 2 and entries[0].raw == 4096
        hs = slice(h.slot * 4096, (h.slot + 1) * 4096)
        raw = bytearray(good)
        raw[hs] = _forge(bytearray(good[hs]), data_length=31 * 2 ** 30)
        dat.write_bytes(bytes(raw))
        with pytest.raises(CheckpointCorrupt, match="covers"):
            CheckpointedStageState.restore(store.open_reader("tiny"))
        # Both chunks name the first data block (raw length 4096 each): refused as such.
        block = bytearray(good[hs])
        meta_len = struct.unpack_from("<I", block, 76)[0]
        twice = fmt.pack_entries([entries[0], entries[0]])
        at = fmt.HEADER_SIZE + meta_len
        block[at:at + len(twice)] = twice
        raw[hs] = _forge(block, data_length=2 * 4096, map_crc=crc32c(twice))
        dat.write_bytes(bytes(raw))
        with pytest.raises(CheckpointCorrupt, match="more than one chunk"):
            CheckpointedStageState.restore(store.open_reader("tiny"))


def test_mac_binds_a_checkpoint_to_its_lease(tmp_path: Path) -> None:
    """A valid authenticated checkpoint copied into another lease is refused there."""
    with FileStore(tmp_path / "s", BS) as store:
        a, b = store.acquire("stage-a"), store.acquire("stage-b")
        CheckpointedStageState({"who": "b"}, b, key=b"k").checkpoint()
        CheckpointedStageState({"who": "a"}, a, key=b"k").checkpoint()
        for lease in (a, b):
            lease.release()
        dat = {n: tmp_path / "s" / "leases" / f"{ls.lease_id}.dat"
               for n, ls in (("a", a), ("b", b))}
        dat["b"].write_bytes(dat["a"].read_bytes())       # replay a's checkpoint into b
        assert CheckpointedStageState.restore(store.open_reader("stage-b")).state == {"who": "a"}
        with pytest.raises(CheckpointAuthError, match="another lease"):
            CheckpointedStageState.restore(store.open_reader("stage-b"), key=b"k")
        assert CheckpointedStageState.restore(store.open_reader("stage-a"),
                                              key=b"k").state == {"who": "a"}


@pytest.mark.timeout(30)
def test_header_mac_is_checked_before_the_map_is_followed(tmp_path: Path) -> None:
    """With a key, a forged header is refused by its MAC, before its (looping) map is read."""
    store, dat, slot = _spilled_lab(tmp_path / "s", key=b"k")
    raw = bytearray(dat.read_bytes())
    block = _forge(bytearray(raw[slot * BS:(slot + 1) * BS]), map_blocks=2 ** 32 - 1,
                   first_map=slot)            # points the map at a header slot
    raw[slot * BS:(slot + 1) * BS] = block
    dat.write_bytes(bytes(raw))
    with pytest.raises(CheckpointAuthError, match="header MAC"):
        CheckpointedStageState.restore(store.open_reader("forge"), key=b"k")
    store.close()


# ------------------------------------------------- the payload MAC fed beside the reads


def _mixed_state(n_blocks: int, bs: int) -> dict:
    """Raw (random) and zstd (constant) chunks interleaved over several read batches."""
    rng = np.random.default_rng(11)
    parts = {}
    for i in range(n_blocks // 8):
        parts[f"r{i}"] = rng.integers(0, 256, 5 * bs, dtype=np.uint8)
        parts[f"z{i}"] = np.full(3 * bs, i, dtype=np.uint8)
    return parts


def test_keyed_restore_of_many_batches_and_mixed_chunks(tmp_path: Path) -> None:
    """The MAC is computed in payload order while batches finish out of order; a keyed
    restore of a payload spanning several read batches, raw and zstd chunks interleaved,
    must verify - and a flipped bit in a middle chunk is a CRC failure, not a MAC one."""
    from stages.checkpoint.reader import READ_BATCH

    bs = 64 * 1024
    n_blocks = 3 * READ_BATCH // bs + 16
    state = _mixed_state(n_blocks, bs)
    with FileStore(tmp_path / "s", bs) as store:
        lease = store.acquire("m")
        css = CheckpointedStageState(state, lease, key=b"k" * 32)
        css.checkpoint()
        reader = store.open_reader("m")
        _, scans = scan_slots(reader)
        h = next(s.header for s in scans if s.header is not None)
        entries, _ = load_map(reader, h, key=b"k" * 32)
        assert {e.flags for e in entries} == {fmt.CHUNK_RAW, fmt.CHUNK_ZSTD}
        back = CheckpointedStageState.restore(reader, key=b"k" * 32).state
        assert back.keys() == state.keys()
        assert all(np.array_equal(back[k], state[k]) for k in state)
        victim = [e for e in entries if e.flags == fmt.CHUNK_RAW][len(entries) // 3]
        dat = tmp_path / "s" / "leases" / f"{lease.lease_id}.dat"
        with open(dat, "r+b") as f:
            f.seek(victim.block * bs + 100)
            byte = f.read(1)
            f.seek(victim.block * bs + 100)
            f.write(bytes([byte[0] ^ 0x04]))
        with pytest.raises(CheckpointCorrupt, match=f"data block {victim.block} fails") as ei:
            CheckpointedStageState.restore(store.open_reader("m"), key=b"k" * 32)
        assert not isinstance(ei.value, CheckpointAuthError)


def test_mac_in_order_equals_one_pass() -> None:
    """However the regions are listed, the digest is the MAC of the whole buffer."""
    from concurrent.futures import Future

    from blockstore.macs import MAC_GMAC
    from stages.checkpoint.mac import MAC_BLAKE3, MAC_HMAC_SHA256, PayloadMac
    from stages.checkpoint.reader import _mac_in_order

    buf = memoryview(np.random.default_rng(5).integers(0, 256, 10_000, dtype=np.uint8))
    futs = [Future() for _ in range(3)]
    for f in futs:
        f.set_result(None)
    cuts = [0, 7, 1000, 1001, 4096, 9999, 10_000]
    regions = [(a, b - a, futs[i % 3]) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    regions.append((10_000, 0, futs[0]))
    for alg in (MAC_GMAC, MAC_BLAKE3, MAC_HMAC_SHA256):
        expected = PayloadMac(b"key", alg).update_all([buf]).digest()
        assert _mac_in_order(b"key", alg, buf, regions[::-1], expected) == expected
        assert _mac_in_order(b"key", alg, buf, regions, expected) == expected
        assert _mac_in_order(b"other", alg, buf, regions, expected) != expected
        other = bytearray(buf)
        other[5000] ^= 1
        assert _mac_in_order(b"key", alg, memoryview(other), regions, expected) != expected
    assert PayloadMac(b"key", MAC_BLAKE3).update_all([buf]).digest() != \
        PayloadMac(b"key", MAC_HMAC_SHA256).update_all([buf]).digest()
