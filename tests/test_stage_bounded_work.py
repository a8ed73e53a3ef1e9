"""Bounded work on forged checkpoints without a key (issue 18: the decompression bomb).

An attacker who can write the store but has no key can recompute every CRC, so whatever a
keyless reader does before decoding must be bounded by the lengths the header and map
declare - which ``load_map`` checks against the lease before the payload buffer exists.
zstd sizes its output from a frame's own content size field, not from the output buffer,
so a zstd chunk is refused unread when that field differs from the entry's raw length.

The forged lease is a real file store; restore, ``verify_lease`` and the ``blockpoint verify``
command run in child processes whose peak resident memory (``ru_maxrss``) is measured.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from blockstore import FileStore, crc32c
from stages import (
    CheckpointCorrupt,
    CheckpointedStageState,
    CheckpointTooLarge,
    verify_lease,
)
from stages.checkpoint import format as fmt
from stages.checkpoint.compress import decompress_into
from stages.checkpoint.reader import load_map, scan_slots

BS = 64 * 1024
#: What each forged frame claims to decompress to (a few KiB of stored bytes each).
BOMB = 256 * 2 ** 20
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", raising=False)


def _bomb_lease(root: Path) -> int:
    """Two committed generations; the newer one forged, as an attacker without the key can:
    every zstd chunk becomes a frame of a few KiB claiming 256 MiB, all CRCs recomputed.
    Returns the number of forged chunks."""
    with FileStore(root, BS) as store:
        lease = store.acquire("stage")
        css = CheckpointedStageState({"gen": 1, "z": np.zeros(4 * BS, np.uint8)}, lease,
                                     compression="zstd")
        css.checkpoint(step=1)
        css.state = {"gen": 2, "z": np.zeros(4 * BS, np.uint8)}
        css.checkpoint(step=2)
        lease.release()
        reader = store.open_reader("stage")
        _, scans = scan_slots(reader)
        h = max((s.header for s in scans if s.header), key=lambda h: h.generation)
        entries, _ = load_map(reader, h)
        lease_id = reader.lease_id
    assert h.generation == 2 and not h.spilled
    assert all(e.flags == fmt.CHUNK_ZSTD for e in entries)
    assert len({e.block for e in entries}) == 1  # packed into one block
    frame = zstandard.ZstdCompressor(level=1).compress(bytes(BOMB))
    assert zstandard.get_frame_parameters(frame).content_size == BOMB
    assert len(entries) * len(frame) <= BS, (len(entries), len(frame))
    block = entries[0].block
    packed = b"".join(frame for _ in entries)
    forged = [e._replace(offset=i * len(frame), stored=len(frame), crc=crc32c(frame))
              for i, e in enumerate(entries)]
    inline = fmt.pack_entries(forged)
    dat = root / "leases" / f"{lease_id}.dat"
    raw = bytearray(dat.read_bytes())
    raw[block * BS:block * BS + len(packed)] = packed
    hdr = bytearray(raw[h.slot * BS:(h.slot + 1) * BS])
    at = fmt.HEADER_SIZE + len(fmt.encode_meta(h.meta))
    hdr[at:at + len(inline)] = inline
    hdr[84:88] = crc32c(inline).to_bytes(4, "little")  # the map CRC (FORMAT.md 2.1)
    fmt.seal_header(hdr, None)
    raw[h.slot * BS:(h.slot + 1) * BS] = hdr
    dat.write_bytes(bytes(raw))
    return len(forged)


_CHILD = r"""
import json, resource, sys
import numpy as np
from blockstore import FileStore
from stages import CheckpointedStageState, verify_lease
from blockpoint.cli import main

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

with FileStore(sys.argv[1], %(bs)d) as store:
    base = peak()
    css = CheckpointedStageState.restore(store.open_reader("stage"))
    restored = {"generation": css.restored.generation, "gen": css.state["gen"],
                "skipped": [list(s) for s in css.restored.skipped]}
    reports = [r.to_dict() for r in verify_lease(store.open_reader("stage"))]
    after_api = peak()
code = main(["verify", sys.argv[1], "--json"])
print(json.dumps({"base": base, "after_api": after_api, "after_cli": peak(),
                  "restored": restored, "reports": reports, "cli_code": code}))
"""


@pytest.mark.timeout(120)
def test_forged_frames_claiming_more_than_their_raw_length_cost_bounded_memory(
        tmp_path: Path) -> None:
    root = tmp_path / "store"
    n = _bomb_lease(root)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _CHILD % {"bs": BS}, str(root)], env=env,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    # The forged generation claims n x 256 MiB of decompressed frames; today's reader filled
    # several of them at once. Restoring a state of 256 KiB must stay far below one of them.
    grown = max(out["after_api"], out["after_cli"]) - out["base"]
    assert grown < 64 * 2 ** 20, f"peak memory grew by {grown / 2 ** 20:.0f} MiB ({n} frames)"
    # Restore fell back to the older, authentic-by-CRC generation and says why.
    assert out["restored"]["generation"] == 1 and out["restored"]["gen"] == 1
    (gen, why), = out["restored"]["skipped"]
    assert gen == 2 and "content size 268435456" in why and "raw length" in why, why
    # verify (the API and the command) names the same corruption and the failing block.
    bad = [r for r in out["reports"] if r["status"] not in ("ok", "empty")]
    assert [r["generation"] for r in bad] == [2] and "content size" in bad[0]["status"]
    assert bad[0]["block"] is not None
    assert out["cli_code"] == 1
    cli = json.loads("\n".join(lines[:-1]))
    assert any(r["generation"] == 2 and "content size" in r["status"] for r in cli)


def test_the_only_generation_forged_raises_the_specific_corruption(tmp_path: Path) -> None:
    """With no older generation to fall back to, restore raises CheckpointCorrupt naming the
    frame's content size and the block; verify_lease reports it (in this process too)."""
    root = tmp_path / "store"
    _bomb_lease(root)
    with FileStore(root, BS) as store:
        reader = store.open_reader("stage")
        _, scans = scan_slots(reader)
        old = min((s.header for s in scans if s.header), key=lambda h: h.generation)
    dat = root / "leases" / f"{reader.lease_id}.dat"
    raw = bytearray(dat.read_bytes())
    raw[old.slot * BS:(old.slot + 1) * BS] = bytes(BS)  # erase generation 1
    dat.write_bytes(bytes(raw))
    with FileStore(root, BS) as store:
        with pytest.raises(CheckpointCorrupt, match=r"content size \d+ != the map entry's raw "
                                                    r"length") as err:
            CheckpointedStageState.restore(store.open_reader("stage"))
        assert err.value.generation == 2 and err.value.block is not None
        (rep,) = [r for r in verify_lease(store.open_reader("stage")) if r.corrupt]
        assert rep.block == err.value.block


def test_decompress_into_is_bounded_by_the_raw_length() -> None:
    out = memoryview(bytearray(4096))
    with pytest.raises(ValueError, match="content size 1048576 != the map entry's raw length"):
        decompress_into(memoryview(zstandard.ZstdCompressor().compress(bytes(2 ** 20))), out)
    # A frame without the content size field is decompressed at most out.nbytes.
    bare = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(2 ** 20))
    with pytest.raises(ValueError, match="does not decompress"):
        decompress_into(memoryview(bare), out)
    decompress_into(memoryview(zstandard.ZstdCompressor(write_content_size=False)
                               .compress(b"a" * 4096)), out)
    assert bytes(out) == b"a" * 4096
    with pytest.raises(ValueError, match="frame header does not parse"):
        decompress_into(memoryview(b"not a zstd frame"), out)


# ------------------------------------------- the declared state length (max_state_bytes)
MIB = 2 ** 20


def _inflated_lease(root: Path) -> tuple[str, int]:
    """A 4 MiB lease of 1 MiB blocks whose one generation is forged consistently, as an
    attacker without the key can: the inline map is as long as the header block allows
    (21,845 entries), each a 9-byte zstd chunk declaring 1 MiB, packed into the 2 data
    blocks; data_length, chunks, lengths and CRCs all agree. Returns the lease id and the
    declared length."""
    with FileStore(root, MIB) as store:
        lease = store.acquire("stage", num_blocks=4)
        CheckpointedStageState({"v": 1}, lease, compression="zstd").checkpoint()
        lease.release()
        _, scans = scan_slots(store.open_reader("stage"))
        h = next(s.header for s in scans if s.header is not None)
        lease_id = lease.lease_id
    meta_len = len(fmt.encode_meta(h.meta))
    n = (MIB - fmt.TRAILER.size - fmt.HEADER_SIZE - meta_len) // fmt.ENTRY.size
    per_block = MIB // fmt.ENTRY.size  # far more than n // 2 9-byte frames fit a block
    assert n // 2 < per_block and n * MIB > 20 * 2 ** 30
    entries = [fmt.MapEntry(block=2 + i % 2, offset=(i // 2) * 9, stored=9, raw=MIB, crc=0,
                            flags=fmt.CHUNK_ZSTD) for i in range(n)]
    inline = fmt.pack_entries(entries)
    dat = root / "leases" / f"{lease_id}.dat"
    raw = bytearray(dat.read_bytes())
    hdr = bytearray(raw[h.slot * MIB:(h.slot + 1) * MIB])
    at = fmt.HEADER_SIZE + meta_len
    hdr[at:at + len(inline)] = inline
    struct.pack_into("<Q", hdr, 8, n * MIB)            # data length
    struct.pack_into("<Q", hdr, 48, n * 9)             # stored bytes
    struct.pack_into("<Q", hdr, 56, n)                 # chunks
    hdr[75] &= ~fmt.FLAG_HASHES                        # no content hashes
    struct.pack_into("<I", hdr, 84, crc32c(inline))    # map CRC
    struct.pack_into("<Q", hdr, 96, at + len(inline))  # header length
    fmt.seal_header(hdr, None)
    raw[h.slot * MIB:(h.slot + 1) * MIB] = hdr
    dat.write_bytes(bytes(raw))
    return lease_id, n * MIB


@pytest.mark.timeout(60)
def test_keyless_restore_refuses_a_declared_state_beyond_the_default_bound(
        tmp_path: Path) -> None:
    """~21 GiB declared by a consistent forged header in a 4 MiB lease: CheckpointTooLarge
    before the buffer is allocated (before: a 21 GiB np.empty, then the first CRC), with
    the default bound (256 MiB here) and with the caller's; verify reports it too."""
    lease_id, declared = _inflated_lease(tmp_path / "s")
    with FileStore(tmp_path / "s") as store:
        reader = store.open_reader("stage")
        assert reader.num_blocks * MIB == 4 * MIB
        with pytest.raises(CheckpointTooLarge, match="declares a state of") as err:
            CheckpointedStageState.restore(reader)
        assert (err.value.data_length, err.value.limit) == (declared, 256 * MIB)
        assert err.value.lease_id == lease_id and err.value.generation == 1
        with pytest.raises(CheckpointTooLarge, match="max_state_bytes") as err:
            CheckpointedStageState.restore(reader, max_state_bytes=MIB)
        assert err.value.limit == MIB
        (rep,) = [r for r in verify_lease(reader) if r.generation == 1]
        assert rep.corrupt and rep.status.startswith("not read: ") and str(declared) in rep.status


def test_max_state_bytes_bounds_every_restore_and_never_rolls_back(tmp_path: Path) -> None:
    """A genuine generation above the caller's bound is refused, not skipped for the older
    (smaller) one; the default trusts a header authenticated by the key."""
    with FileStore(tmp_path / "s", 4096) as store:
        lease = store.acquire("stage")
        css = CheckpointedStageState({"a": np.zeros(1000, np.uint8)}, lease, key=b"k")
        css.checkpoint(step=1)
        css.state = {"a": np.zeros(100_000, np.uint8)}
        css.checkpoint(step=2)
        lease.release()
        reader = store.open_reader("stage")
        size = CheckpointedStageState.restore(reader, key=b"k").restored.info.data_length
        assert CheckpointedStageState.restore(reader, key=b"k", max_state_bytes=size
                                              ).restored.step == 2
        with pytest.raises(CheckpointTooLarge) as err:
            CheckpointedStageState.restore(reader, key=b"k", max_state_bytes=size - 1)
        assert (err.value.data_length, err.value.limit, err.value.generation) == (
            size, size - 1, 2)
        with pytest.raises(ValueError, match="max_state_bytes"):
            CheckpointedStageState.restore(reader, key=b"k", max_state_bytes=-1)
