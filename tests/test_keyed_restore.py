"""Keyed restores of raw payloads: the read tasks feed the payload MAC themselves, in payload
order (``stages/checkpoint/chunkchecks.py``, ``MacChain``), and none waits for another.
Every byte is still authenticated before the state is returned, damage is still named as a
CRC failure, a read task that fails breaks the chain without hanging it, and a digest of
part of the payload is refused."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from blockstore import BlockIndexError, FileStore
from stages import CheckpointAuthError, CheckpointCorrupt, CheckpointedStageState
from stages.checkpoint import format as fmt
from stages.checkpoint.chunkchecks import MacChain
from stages.checkpoint.mac import MAC_BLAKE3, PayloadMac
from blockstore.macs import MAC_GMAC
from stages.checkpoint.reader import KEYED_READ_BATCH, load_map, scan_slots

KEY = b"k" * 32
BS = 64 * 1024


def _raw_state() -> dict:
    n = 3 * KEYED_READ_BATCH // 8 + 1000  # float64: more than three keyed read batches
    return {"w": np.random.default_rng(7).random(n)}


def test_a_raw_payload_over_several_batches_restores_and_damage_is_a_crc_failure(
        tmp_path: Path) -> None:
    state = _raw_state()
    with FileStore(tmp_path / "s", BS) as store:
        lease = store.acquire("r")
        CheckpointedStageState(state, lease, key=KEY, compression="none").checkpoint()
        reader = store.open_reader("r")
        _, scans = scan_slots(reader)
        h = next(s.header for s in scans if s.header is not None)
        entries, _ = load_map(reader, h, key=KEY)
        assert {e.flags for e in entries} == {fmt.CHUNK_RAW}
        back = CheckpointedStageState.restore(reader, key=KEY)
        np.testing.assert_array_equal(back.state["w"], state["w"])
        victim = entries[2 * len(entries) // 3]  # in the third batch
        dat = tmp_path / "s" / "leases" / f"{lease.lease_id}.dat"
        with open(dat, "r+b") as f:
            f.seek(victim.block * BS + 5)
            byte = f.read(1)
            f.seek(victim.block * BS + 5)
            f.write(bytes([byte[0] ^ 0x10]))
        with pytest.raises(CheckpointCorrupt, match=f"data block {victim.block} fails") as ei:
            CheckpointedStageState.restore(store.open_reader("r"), key=KEY)
        assert not isinstance(ei.value, CheckpointAuthError)
        with pytest.raises(CheckpointAuthError):
            CheckpointedStageState.restore(store.open_reader("r"), key=b"another key")


@pytest.mark.parametrize("alg", [MAC_BLAKE3, MAC_GMAC])
def test_the_chain_is_the_mac_of_the_payload_in_order(tmp_path: Path, alg: int) -> None:
    with FileStore(tmp_path / "s", BS) as store, store.acquire("c") as lease:
        data = np.random.default_rng(8).integers(0, 256, 12 * BS, dtype=np.uint8)
        lease.grow(12)
        lease.write_blocks({i: bytes(data[i * BS:(i + 1) * BS]) for i in range(12)})
        buf = np.empty(12 * BS, dtype=np.uint8)
        mv = memoryview(buf)
        # GMAC: the chain verifies with the salt of the MAC it checks (a writer's MAC)
        written = PayloadMac(KEY, alg).update_all([data]).digest()
        chain = MacChain(KEY, alg, written)
        with ThreadPoolExecutor(2) as pool:
            futs = [pool.submit(chain.read_and_feed, n, lease, list(range(3 * n, 3 * n + 3)),
                                [(mv[b * BS:(b + 1) * BS], None) for b in range(3 * n, 3 * n + 3)],
                                mv[3 * n * BS:(3 * n + 3) * BS])
                    for n in range(4)]
            assert [f.result(timeout=60) for f in futs] == [None] * 4
        assert chain.digest(4) == written
        np.testing.assert_array_equal(buf, data)


def test_a_failed_read_task_breaks_the_chain_and_nobody_hangs(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as store, store.acquire("f") as lease:
        lease.grow(4)
        buf = np.empty(6 * BS, dtype=np.uint8)
        mv = memoryview(buf)
        chain = MacChain(KEY, MAC_BLAKE3)
        blocks = [[0], [99], [1], [2]]  # block 99 is beyond the lease: the store refuses it
        with ThreadPoolExecutor(2) as pool:
            futs = [pool.submit(chain.read_and_feed, n, lease, idx,
                                [(mv[n * BS:(n + 1) * BS], None)], mv[n * BS:(n + 1) * BS])
                    for n, idx in enumerate(blocks)]
            with pytest.raises(BlockIndexError):
                futs[1].result(timeout=60)
            for f in (futs[0], futs[2], futs[3]):
                assert f.result(timeout=60) is None
        with pytest.raises(RuntimeError, match="broken"):
            chain.digest(4)


def _feed_all(chain: MacChain, lease, mv: memoryview, order: list[int]) -> None:
    for n in order:
        assert chain.read_and_feed(n, lease, [n], [(mv[n * BS:(n + 1) * BS], None)],
                                   mv[n * BS:(n + 1) * BS]) is None


def test_tasks_in_reverse_order_on_one_thread_give_the_mac_in_payload_order(
        tmp_path: Path) -> None:
    """No task waits for an earlier one: run last-to-first on one thread (the chain that
    made each task wait for its turn hung here), the MAC is still the payload's in order."""
    with FileStore(tmp_path / "s", BS) as store, store.acquire("o") as lease:
        data = np.random.default_rng(9).integers(0, 256, 5 * BS, dtype=np.uint8)
        lease.grow(5)
        lease.write_blocks({i: bytes(data[i * BS:(i + 1) * BS]) for i in range(5)})
        buf = np.empty(5 * BS, dtype=np.uint8)
        chain = MacChain(KEY, MAC_BLAKE3)
        t = threading.Thread(target=_feed_all, args=(chain, lease, memoryview(buf),
                                                     [4, 2, 3, 0, 1]), daemon=True)
        t.start()
        t.join(timeout=60)
        assert not t.is_alive(), "a task waited for an earlier one"
        assert chain.digest(5) == PayloadMac(KEY, MAC_BLAKE3).update_all([data]).digest()
        np.testing.assert_array_equal(buf, data)


def test_a_digest_of_part_of_the_payload_is_refused(tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as store, store.acquire("p") as lease:
        lease.grow(3)
        lease.write_blocks({i: bytes([i]) * BS for i in range(3)})
        buf = np.empty(3 * BS, dtype=np.uint8)
        chain = MacChain(KEY, MAC_BLAKE3)
        _feed_all(chain, lease, memoryview(buf), [0, 2])  # batch 1 never read: 2 waits
        with pytest.raises(RuntimeError, match="broken"):
            chain.digest(3)
        with pytest.raises(RuntimeError, match="broken"):
            chain.digest(1)  # batch 2 was offered beyond the payload asked for


@pytest.mark.parametrize("ahead", [0, 1])
def test_readers_that_wait_for_the_mac_to_catch_up_never_hang_it(tmp_path: Path,
                                                                 ahead: int) -> None:
    """AHEAD 0: every reader that finds the MAC busy waits for it; on four threads the
    digest is still the payload's in order and every task ends."""
    n = 24
    with FileStore(tmp_path / "s", BS) as store, store.acquire("w") as lease:
        data = np.random.default_rng(10).integers(0, 256, n * BS, dtype=np.uint8)
        lease.grow(n)
        lease.write_blocks({i: bytes(data[i * BS:(i + 1) * BS]) for i in range(n)})
        buf = np.empty(n * BS, dtype=np.uint8)
        mv = memoryview(buf)
        chain = MacChain(KEY, MAC_BLAKE3)
        chain.AHEAD = ahead
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(chain.read_and_feed, i, lease, [i],
                                [(mv[i * BS:(i + 1) * BS], None)], mv[i * BS:(i + 1) * BS])
                    for i in range(n)]
            assert [f.result(timeout=60) for f in futs] == [None] * n
        assert chain.digest(n) == PayloadMac(KEY, MAC_BLAKE3).update_all([data]).digest()
        np.testing.assert_array_equal(buf, data)
