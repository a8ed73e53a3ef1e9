"""The conformance suite every block store backend must pass.

Why a suite shipped in the package: the rules of a store (fencing, expiry, padding, refusals
that change nothing) are the contract the checkpoint layer relies on, and they must hold
identically for every backend. A backend's test module is a short subclass::

    from blockstore.testing import StoreConformance

    class TestMyStore(StoreConformance):
        def make_store(self, block_size):
            return MyStore(..., block_size=block_size)

``make_store`` may use ``self.tmp_path`` (a fresh directory per test). Every test opens a new
store through it, so tests never share state. The suite needs ``pytest`` (a test
dependency); importing it from production code is a mistake.

Expiry is exercised with real, short TTLs: a test waits until the wall clock has passed the
record's ``expires_at`` (no clock is mocked), so the waits are a few tens of milliseconds.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from .base import BlockStore, StoreCapabilities, StoreStats
from .errors import (
    BlockIndexError,
    BlockSizeError,
    BlockStoreError,
    LeaseExpiredError,
    LeaseHeldError,
    LeaseNotFoundError,
    LeaseReleasedError,
    StaleLeaseError,
    StoreClosedError,
)
from .lease import Lease, LeaseInfo

__all__ = ["SHORT_TTL", "StoreConformance", "block_pattern", "wait_expired"]

#: A TTL short enough that waiting it out keeps the suite fast.
SHORT_TTL = 0.02


def block_pattern(tag: int | str, index: int, size: int) -> bytes:
    """``size`` deterministic bytes that differ for every ``(tag, index)``."""
    seed = zlib.crc32(f"{tag}:{index}".encode())  # not hash(): that differs per process
    return np.random.default_rng(seed).integers(1, 256, size, dtype=np.uint8).tobytes()


def wait_expired(info: LeaseInfo, timeout: float = 10.0) -> None:
    """Sleep until the wall clock is past ``info.expires_at`` (the record has expired)."""
    deadline = time.time() + timeout
    while time.time() <= info.expires_at:
        if time.time() > deadline:  # pragma: no cover - only with a broken clock
            raise AssertionError(f"lease did not expire within {timeout}s")
        time.sleep(max(0.001, min(0.05, info.expires_at - time.time() + 0.001)))


class StoreConformance:
    """Tests every operation and rule of :class:`~blockstore.base.BlockStore`.

    Subclasses implement :meth:`make_store`; they may override ``block_size`` (bytes per block
    for the stores the suite creates, default 4096).
    """

    block_size: int = 4096
    tmp_path: Path

    # -- hooks -----------------------------------------------------------------------------
    def make_store(self, block_size: int) -> BlockStore:
        """A new, empty store with ``block_size`` bytes per block."""
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _conformance_tmp(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    @pytest.fixture
    def store(self) -> Iterator[BlockStore]:
        st = self.make_store(self.block_size)
        try:
            yield st
        finally:
            st.close()

    # -- helpers ---------------------------------------------------------------------------
    def pat(self, tag: int | str, index: int) -> bytes:
        return block_pattern(tag, index, self.block_size)

    def write_pattern(self, lease: Lease, tag: int | str, indices: Any) -> dict[int, bytes]:
        data = {i: self.pat(tag, i) for i in indices}
        lease.write_blocks(data)
        return data

    def assert_blocks(self, store: BlockStore, name: str, expected: Mapping[int, bytes]) -> None:
        """Every block of ``name`` reads as ``expected`` (missing indices: zeros)."""
        reader = store.open_reader(name)
        n = reader.num_blocks
        got = reader.read_blocks(list(range(n)))
        zero = bytes(self.block_size)
        for i in range(n):
            want = expected.get(i, zero)
            want = want + bytes(self.block_size - len(want))
            assert got[i] == want, f"block {i} of {name!r} differs from what was stored"
        assert all(i < n for i in expected), "lease lost blocks"

    def refused_changes_nothing(self, store: BlockStore, name: str,
                                expected: Mapping[int, bytes], exc: type[BaseException] | tuple,
                                call: Callable[[], object]) -> BaseException:
        """``call`` raises ``exc``; the lease's record and blocks are as before."""
        before = store.lease_info(name)
        with pytest.raises(exc) as info:
            call()
        after = store.lease_info(name)
        assert (after.epoch, after.holder, after.num_blocks, after.expires_at) == \
            (before.epoch, before.holder, before.num_blocks, before.expires_at)
        self.assert_blocks(store, name, expected)
        return info.value

    # -- acquisition -----------------------------------------------------------------------
    def test_declares_capabilities_and_block_size(self, store: BlockStore) -> None:
        assert isinstance(store.capabilities, StoreCapabilities)
        assert store.block_size == self.block_size
        assert not store.closed
        assert isinstance(store.url, str) and "://" in store.url

    def test_acquire_creates_lease_at_epoch_1(self, store: BlockStore) -> None:
        t0 = time.time()
        lease = store.acquire("stage-a", holder="h1", ttl=30, num_blocks=3)
        info = lease.acquired_info
        assert lease.epoch == info.epoch == 1
        assert len(lease.lease_id) == 32 and int(lease.lease_id, 16) >= 0
        assert lease.lease_id == lease.lease_id.lower()
        assert (info.name, info.holder, info.num_blocks, info.block_size) == \
            ("stage-a", "h1", 3, self.block_size)
        assert info.expires_at >= t0 + 30 - 1e-3
        assert info.is_held()
        assert store.lease_info("stage-a") == info
        assert lease.num_blocks == 3

    def test_lease_ids_are_unique(self, store: BlockStore) -> None:
        ids = {store.acquire(f"s{i}").lease_id for i in range(20)}
        assert len(ids) == 20

    def test_default_holders_differ(self, store: BlockStore) -> None:
        a = store.acquire("a")
        b = store.acquire("b")
        assert a.holder and b.holder and a.holder != b.holder

    def test_held_lease_refused_to_others_and_to_same_holder(self, store: BlockStore) -> None:
        lease = store.acquire("s", holder="h1", num_blocks=2)
        data = self.write_pattern(lease, 1, [0, 1])
        for holder in ("h2", "h1", None):
            err = self.refused_changes_nothing(
                store, "s", data, LeaseHeldError, lambda h=holder: store.acquire("s", holder=h))
            assert isinstance(err, LeaseHeldError)
            assert err.holder == "h1" and err.epoch == 1 and err.name == "s"
            assert err.lease_id == lease.lease_id and err.expires_at is not None
        lease.write_blocks({0: b"still mine"})  # the holder was not fenced

    def test_huge_ttl_is_held(self, store: BlockStore) -> None:
        store.acquire("s", holder="forever", ttl=1e300)
        with pytest.raises(LeaseHeldError) as err:
            store.acquire("s", holder="other")
        assert err.value.holder == "forever"
        assert store.lease_info("s").is_held()

    def test_takeover_after_release_bumps_epoch_and_keeps_blocks(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=3)
        data = self.write_pattern(a, "a", [0, 2])
        a.flush()
        a.release()
        b = store.acquire("s", holder="h2", num_blocks=99)  # num_blocks applies to new leases
        assert b.epoch == 2 and b.lease_id == a.lease_id
        assert b.num_blocks == 3
        assert b.read_blocks([0, 2]) == [data[0], data[2]]

    def test_takeover_after_expiry_bumps_epoch(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=2)
        data = self.write_pattern(a, "a", [0, 1])
        a.flush()  # unflushed writes may be lost at a takeover (publish_on_flush stores)
        wait_expired(a.renew(ttl=SHORT_TTL))  # written while held, then left to expire
        assert not store.lease_info("s").is_held()
        b = store.acquire("s", holder="h2")
        assert b.epoch == 2 and b.holder == "h2"
        self.refused_changes_nothing(store, "s", data, StaleLeaseError,
                                     lambda: a.write_blocks({0: b"zombie"}))
        b.write_blocks({1: b"new"})
        data[1] = b"new"
        self.assert_blocks(store, "s", data)

    def test_steal_bumps_epoch_and_fences_the_old_holder(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=4)
        data = self.write_pattern(a, "a", range(4))
        a.flush()  # unflushed writes may be lost at a takeover (publish_on_flush stores)
        b = store.acquire("s", holder="h2", steal=True)
        assert b.epoch == 2
        err = self.refused_changes_nothing(
            store, "s", data, StaleLeaseError,
            lambda: a.write_blocks({i: self.pat("zombie", i) for i in range(4)}))
        assert isinstance(err, StaleLeaseError)
        assert err.epoch == 1 and err.current_epoch == 2 and err.lease_id == a.lease_id
        for call in (a.flush, a.renew, lambda: a.resize(1), lambda: a.grow(10)):
            self.refused_changes_nothing(store, "s", data, StaleLeaseError, call)
        a.release()  # harmless for a fenced handle; does not release b's hold
        info = store.lease_info("s")
        assert info.holder == "h2" and info.epoch == 2 and info.is_held()
        b.write_blocks({0: b"b"})

    def test_every_acquisition_gets_a_new_epoch(self, store: BlockStore) -> None:
        epochs = []
        for k in range(5):
            lease = store.acquire("s", holder=f"h{k % 2}", steal=k % 2 == 1)
            epochs.append(lease.epoch)
            if k % 2 == 0:
                continue
            lease.release()
        assert epochs == [1, 2, 3, 4, 5]

    # -- renew / release / expiry ---------------------------------------------------------
    def test_renew_extends_the_hold(self, store: BlockStore) -> None:
        lease = store.acquire("s", ttl=5)
        first = lease.acquired_info.expires_at
        info = lease.renew(ttl=60)
        assert info.expires_at > first and lease.ttl == 60
        assert store.lease_info("s").expires_at == info.expires_at
        assert info.epoch == 1

    def test_renew_of_expired_but_not_taken_lease(self, store: BlockStore) -> None:
        lease = store.acquire("s", ttl=SHORT_TTL, num_blocks=1)
        wait_expired(lease.acquired_info)
        self.refused_changes_nothing(store, "s", {}, LeaseExpiredError,
                                     lambda: lease.write_blocks({0: b"late"}))
        info = lease.renew(ttl=30)
        assert info.epoch == 1 and info.is_held()
        lease.write_blocks({0: b"after renew"})
        self.assert_blocks(store, "s", {0: b"after renew"})

    def test_expired_holder_refused_resize_but_may_flush(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=1)
        lease.write_blocks({0: b"before"})
        wait_expired(lease.renew(ttl=SHORT_TTL))
        self.refused_changes_nothing(store, "s", {0: b"before"}, LeaseExpiredError,
                                     lambda: lease.resize(4))
        lease.flush()  # durability of earlier writes needs no live hold

    def test_renew_bad_ttl_refused(self, store: BlockStore) -> None:
        lease = store.acquire("s", ttl=30)
        for bad in (0, -1, math.nan, math.inf, "10", True):
            self.refused_changes_nothing(store, "s", {}, ValueError,
                                         lambda b=bad: lease.renew(ttl=b))
        assert lease.ttl == 30

    def test_release_keeps_data_and_ends_the_handle(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=2)
        data = self.write_pattern(lease, 1, [0, 1])
        lease.flush()
        lease.release()
        assert lease.released
        info = store.lease_info("s")
        assert info.holder is None and info.expires_at == 0.0 and not info.is_held()
        assert info.epoch == 1
        self.assert_blocks(store, "s", data)
        for call in (lambda: lease.write_blocks({0: b"x"}), lease.flush, lease.renew,
                     lambda: lease.resize(5), lambda: lease.grow(5)):
            err = self.refused_changes_nothing(store, "s", data, LeaseReleasedError, call)
            assert err.lease_id == lease.lease_id  # type: ignore[attr-defined]
        lease.release()  # twice: harmless
        assert lease.read_block(1) == data[1]  # reads need no hold

    def test_context_manager_releases_on_exit_and_on_error(self, store: BlockStore) -> None:
        with store.acquire("s", num_blocks=1) as lease:
            lease.write_blocks({0: b"kept"})
        assert lease.released and store.lease_info("s").holder is None
        with pytest.raises(RuntimeError):
            with store.acquire("s") as lease2:
                assert lease2.epoch == 2
                raise RuntimeError("boom")
        assert lease2.released and store.lease_info("s").holder is None
        self.assert_blocks(store, "s", {0: b"kept"})

    def test_keepalive_renews_until_release(self, store: BlockStore) -> None:
        # A TTL long enough that a loaded machine still renews in time (every ttl / 3).
        ttl = 1.5
        lease = store.acquire("s", ttl=ttl, num_blocks=1, keepalive=True)
        first = lease.acquired_info
        deadline = time.time() + 30
        while store.lease_info("s").expires_at <= first.expires_at:
            assert time.time() < deadline, "keepalive never renewed"
            time.sleep(0.02)
        wait_expired(first)  # past the original expiry, the lease is still held
        lease.write_blocks({0: b"alive"})
        assert store.lease_info("s").is_held()
        lease.release()
        assert store.lease_info("s").holder is None
        time.sleep(ttl / 2)  # a stopped keepalive does not renew a released lease
        assert store.lease_info("s").holder is None

    # -- writes and reads ------------------------------------------------------------------
    def test_vectorised_write_and_read(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=64)
        idx = [5, 0, 63, 6, 7, 8, 30, 1]
        data = {i: self.pat("v", i) for i in idx}
        lease.write_blocks(data)  # mapping
        lease.write_blocks([(10, self.pat("v", 10)), (9, self.pat("v", 9))])  # pairs
        data[10], data[9] = self.pat("v", 10), self.pat("v", 9)
        order = [63, 0, 9, 10, 5, 2]
        assert lease.read_blocks(order) == [data.get(i, bytes(self.block_size)) for i in order]
        bufs = [bytearray(self.block_size) for _ in order]
        lease.read_blocks_into(order, [memoryview(b) for b in bufs])
        assert [bytes(b) for b in bufs] == [data.get(i, bytes(self.block_size)) for i in order]
        self.assert_blocks(store, "s", data)
        assert lease.read_blocks([]) == []
        lease.write_blocks({})  # nothing to do, no error

    def test_read_run_into_any_buffer(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=4)
        data = self.write_pattern(lease, "r", range(4))
        whole = b"".join(data[i] for i in range(4))
        out = bytearray(3 * self.block_size)
        lease.read_run_into(1, memoryview(out))
        assert bytes(out) == whole[self.block_size:]
        out2 = bytearray(2 * self.block_size + 10)  # a partial last block
        lease.read_run_into(0, out2)  # type: ignore[arg-type]
        assert bytes(out2) == whole[:len(out2)]
        arr = np.zeros(self.block_size // 8, dtype=np.float64)
        lease.read_run_into(2, memoryview(arr))
        assert arr.tobytes() == data[2]

    def test_short_data_is_zero_padded(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=2)
        self.write_pattern(lease, "full", [0, 1])
        lease.write_blocks({0: b"abc", 1: b""})
        assert lease.read_block(0) == b"abc" + bytes(self.block_size - 3)
        assert lease.read_block(1) == bytes(self.block_size)

    def test_never_written_blocks_read_as_zeros(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=5)
        lease.write_blocks({2: b"x"})
        zero = bytes(self.block_size)
        assert lease.read_blocks([0, 1, 3, 4]) == [zero] * 4
        buf = bytearray(b"\xff" * self.block_size)
        lease.read_blocks_into([4], [memoryview(buf)])
        assert bytes(buf) == zero

    def test_write_accepts_buffers(self, store: BlockStore) -> None:
        bs = self.block_size
        lease = store.acquire("s", num_blocks=6)
        f64 = np.arange(bs // 8, dtype=np.float64)
        u8 = np.frombuffer(self.pat("n", 0), dtype=np.uint8)
        items = {0: self.pat("b", 0), 1: bytearray(self.pat("b", 1)),
                 2: memoryview(self.pat("b", 2)), 3: f64, 4: u8,
                 5: np.ones((4, 8), dtype=np.int32)}
        lease.write_blocks(items)
        assert lease.read_block(3) == f64.tobytes()
        assert lease.read_block(4) == u8.tobytes()
        assert lease.read_block(5)[:128] == np.ones((4, 8), dtype=np.int32).tobytes()
        assert lease.read_block(1) == self.pat("b", 1)

    def test_numpy_integer_indices(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=4)
        lease.write_blocks({np.int64(3): b"np"})
        assert lease.read_blocks([np.int32(3)])[0][:2] == b"np"

    def test_read_into_short_buffer_gets_block_prefix(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=1)
        data = self.write_pattern(lease, "p", [0])
        buf = bytearray(100)
        lease.read_blocks_into([0], [memoryview(buf)])
        assert bytes(buf) == data[0][:100]

    def test_writes_visible_to_readers_after_flush(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=3)
        data = self.write_pattern(lease, "f", [0, 1, 2])
        lease.flush()
        reader = store.open_reader("s")
        assert reader.read_blocks([0, 1, 2]) == [data[0], data[1], data[2]]
        lease.flush()  # flushing twice is fine

    def test_overwrite_replaces_whole_block(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=2)
        self.write_pattern(lease, "one", [0, 1])
        data = self.write_pattern(lease, "two", [1, 0])
        self.assert_blocks(store, "s", data)

    # -- grow / shrink ---------------------------------------------------------------------
    def test_grow_and_shrink(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=2)
        data = self.write_pattern(lease, "g", [0, 1])
        info = lease.grow(5)
        assert info.num_blocks == 5 == store.lease_info("s").num_blocks
        assert lease.grow(3).num_blocks == 5  # never shrinks
        assert lease.read_blocks([2, 3, 4]) == [bytes(self.block_size)] * 3
        data.update(self.write_pattern(lease, "g", [4]))
        self.assert_blocks(store, "s", data)
        assert lease.resize(1).num_blocks == 1
        self.assert_blocks(store, "s", {0: data[0]})
        self.refused_changes_nothing(store, "s", {0: data[0]}, BlockIndexError,
                                     lambda: lease.write_blocks({1: b"beyond"}))
        with pytest.raises(BlockIndexError):
            lease.read_block(1)
        lease.resize(5)  # data dropped by the shrink does not come back
        self.assert_blocks(store, "s", {0: data[0]})
        assert lease.resize(0).num_blocks == 0
        assert store.open_reader("s").read_blocks([]) == []

    def test_empty_lease(self, store: BlockStore) -> None:
        lease = store.acquire("s")
        assert lease.num_blocks == 0
        self.refused_changes_nothing(store, "s", {}, BlockIndexError,
                                     lambda: lease.write_blocks({0: b"x"}))

    # -- delete / list / stats / find ----------------------------------------------------
    def test_delete_refused_while_held_by_another(self, store: BlockStore) -> None:
        lease = store.acquire("s", holder="h1", num_blocks=1)
        data = self.write_pattern(lease, 1, [0])
        err = self.refused_changes_nothing(store, "s", data, LeaseHeldError,
                                           lambda: store.delete_lease("s"))
        assert err.holder == "h1"  # type: ignore[attr-defined]
        other = store.acquire("t")
        with pytest.raises(ValueError):  # a handle on another lease gives no right
            store.delete_lease("s", lease=other)
        self.assert_blocks(store, "s", data)

    def test_delete_by_holder_released_or_expired(self, store: BlockStore) -> None:
        a = store.acquire("a", num_blocks=1)
        store.delete_lease("a", lease=a)
        assert a.released and store.find("a") is None
        with pytest.raises(LeaseReleasedError):
            a.write_blocks({0: b"x"})
        b = store.acquire("b")
        b.release()
        store.delete_lease(b.lease_id)
        c = store.acquire("c", ttl=SHORT_TTL)
        wait_expired(c.acquired_info)
        store.delete_lease("c")
        assert store.list_leases() == []
        with pytest.raises(LeaseNotFoundError):
            store.open_reader("a")
        fresh = store.acquire("a", num_blocks=2)
        assert fresh.epoch == 1 and fresh.lease_id != a.lease_id
        assert fresh.read_blocks([0, 1]) == [bytes(self.block_size)] * 2

    def test_delete_with_fenced_handle_refused(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=1)
        b = store.acquire("s", holder="h2", steal=True)
        data = self.write_pattern(b, "b", [0])
        self.refused_changes_nothing(store, "s", data, StaleLeaseError,
                                     lambda: store.delete_lease("s", lease=a))

    def test_list_stats_find_info(self, store: BlockStore) -> None:
        assert store.list_leases() == [] and store.find("x") is None
        st = store.stats()
        assert isinstance(st, StoreStats)
        assert (st.leases, st.held, st.blocks, st.bytes_allocated) == (0, 0, 0, 0)
        b = store.acquire("b", num_blocks=3)
        a = store.acquire("a", num_blocks=2)
        c = store.acquire("c", num_blocks=1)
        c.release()
        names = [i.name for i in store.list_leases()]
        assert names == ["a", "b", "c"]
        st = store.stats()
        assert (st.url, st.block_size) == (store.url, self.block_size)
        assert (st.leases, st.held, st.blocks) == (3, 2, 6)
        assert st.bytes_allocated == 6 * self.block_size
        assert store.find("b") == store.lease_info("b") == store.lease_info(b.lease_id)
        assert store.find("b").lease_id == b.lease_id  # type: ignore[union-attr]
        assert store.open_reader(a.lease_id).name == "a"
        assert store.open_reader("a").lease_id == a.lease_id

    def test_unknown_lease(self, store: BlockStore) -> None:
        store.acquire("known")
        for key in ("nope", "0" * 32, "f" * 32, "g" * 32):
            with pytest.raises(LeaseNotFoundError):
                store.lease_info(key)
            with pytest.raises(KeyError):
                store.open_reader(key)
            with pytest.raises(LeaseNotFoundError):
                store.delete_lease(key)
        assert [i.name for i in store.list_leases()] == ["known"]

    # -- closed store ----------------------------------------------------------------------
    def test_closed_store_refuses_everything(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=2)
        reader = store.open_reader("s")
        other = store.acquire("t", ttl=SHORT_TTL)
        store.close()
        assert store.closed
        calls: list[Callable[[], object]] = [
            lambda: store.acquire("new"), lambda: store.find("s"),
            lambda: store.lease_info("s"), lambda: store.open_reader("s"),
            store.list_leases, store.stats, lambda: store.delete_lease("t"),
            lambda: lease.write_blocks({0: b"x"}), lambda: lease.read_blocks([0]),
            lambda: lease.read_blocks_into([0], [memoryview(bytearray(4))]),
            lease.flush, lease.renew, lambda: lease.resize(4), lambda: lease.grow(4),
            lease.info, lambda: reader.read_block(0), lambda: reader.num_blocks,
            lambda: other.write_blocks({}), store.__enter__,
        ]
        for call in calls:
            with pytest.raises(StoreClosedError):
                call()
        store.close()  # twice: harmless
        lease.release()  # harmless too
        assert lease.released

    def test_store_is_a_context_manager(self) -> None:
        with self.make_store(self.block_size) as st:
            st.acquire("s")
        assert st.closed
        with pytest.raises(StoreClosedError):
            st.acquire("s")

    # -- bad input -------------------------------------------------------------------------
    @pytest.fixture
    def filled(self, store: BlockStore) -> tuple[BlockStore, Lease, dict[int, bytes]]:
        lease = store.acquire("s", num_blocks=4)
        return store, lease, self.write_pattern(lease, "keep", range(4))

    @pytest.mark.parametrize("index", [-1, -100, 4, 5, 10**12])
    def test_bad_index_write_refused(self, filled: Any, index: int) -> None:
        store, lease, data = filled
        err = self.refused_changes_nothing(
            store, "s", data, BlockIndexError,
            lambda: lease.write_blocks({0: b"new", index: b"x"}))
        assert err.index == index  # type: ignore[attr-defined]
        assert isinstance(err, IndexError)

    @pytest.mark.parametrize("index", [1.0, "1", True, None, 2.5])
    def test_non_int_index_refused(self, filled: Any, index: object) -> None:
        store, lease, data = filled
        self.refused_changes_nothing(store, "s", data, BlockIndexError,
                                     lambda: lease.write_blocks([(0, b"new"), (index, b"x")]))
        with pytest.raises(BlockIndexError):
            lease.read_blocks([index])

    @pytest.mark.parametrize("index", [-1, 4, 99])
    def test_bad_index_read_refused(self, filled: Any, index: int) -> None:
        store, lease, data = filled
        with pytest.raises(BlockIndexError):
            lease.read_blocks([0, index])
        with pytest.raises(BlockIndexError):
            store.open_reader("s").read_block(index)
        self.assert_blocks(store, "s", data)

    def test_block_too_large_refused(self, filled: Any) -> None:
        store, lease, data = filled
        big = b"x" * (self.block_size + 1)
        err = self.refused_changes_nothing(store, "s", data, BlockSizeError,
                                           lambda: lease.write_blocks({0: b"new", 1: big}))
        assert err.index == 1 and isinstance(err, ValueError)  # type: ignore[attr-defined]
        self.refused_changes_nothing(
            store, "s", data, BlockSizeError,
            lambda: lease.write_blocks({2: np.zeros(self.block_size // 8 + 1)}))
        with pytest.raises(BlockSizeError):
            lease.read_blocks_into([0], [memoryview(bytearray(self.block_size + 1))])

    def test_duplicate_indices_refused(self, filled: Any) -> None:
        store, lease, data = filled
        self.refused_changes_nothing(
            store, "s", data, BlockIndexError,
            lambda: lease.write_blocks([(1, b"a"), (2, b"b"), (1, b"c")]))

    def test_bad_data_and_buffers_refused(self, filled: Any) -> None:
        store, lease, data = filled
        self.refused_changes_nothing(store, "s", data, TypeError,
                                     lambda: lease.write_blocks({0: "not bytes"}))
        strided = np.arange(64, dtype=np.uint8)[::2]
        self.refused_changes_nothing(store, "s", data, (BlockSizeError, ValueError),
                                     lambda: lease.write_blocks({0: strided}))
        with pytest.raises(ValueError):
            lease.read_blocks_into([0, 1], [memoryview(bytearray(8))])
        with pytest.raises(ValueError):
            lease.read_blocks_into([0], [memoryview(b"read-only")])
        self.assert_blocks(store, "s", data)

    @pytest.mark.parametrize("n", [-1, 1.5, "2", None, True])
    def test_bad_resize_refused(self, filled: Any, n: object) -> None:
        store, lease, data = filled
        self.refused_changes_nothing(store, "s", data, BlockIndexError,
                                     lambda: lease.resize(n))  # type: ignore[arg-type]
        self.refused_changes_nothing(store, "s", data, BlockIndexError,
                                     lambda: lease.grow(n))  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", ["", None, 5, "a\x00b", b"bytes"])
    def test_invalid_name_refused(self, filled: Any, name: object) -> None:
        store, _, data = filled
        with pytest.raises(ValueError):
            store.acquire(name)  # type: ignore[arg-type]
        assert [i.name for i in store.list_leases()] == ["s"]
        self.assert_blocks(store, "s", data)

    @pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, "30", None, True])
    def test_invalid_ttl_refused(self, filled: Any, ttl: object) -> None:
        store, _, data = filled
        with pytest.raises(ValueError):
            store.acquire("new", ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.acquire("s", ttl=ttl, steal=True)  # type: ignore[arg-type]
        assert store.find("new") is None and store.lease_info("s").epoch == 1
        self.assert_blocks(store, "s", data)

    @pytest.mark.parametrize("n", [-1, 2.5, "3", True])
    def test_invalid_num_blocks_refused(self, store: BlockStore, n: object) -> None:
        with pytest.raises(BlockIndexError):
            store.acquire("new", num_blocks=n)  # type: ignore[arg-type]
        assert store.find("new") is None

    def test_invalid_holder_refused(self, store: BlockStore) -> None:
        for holder in (5, b"h", "a\x00b"):
            with pytest.raises(ValueError):
                store.acquire("new", holder=holder)  # type: ignore[arg-type]
        assert store.find("new") is None

    def test_errors_share_one_root(self) -> None:
        for exc in (BlockIndexError, BlockSizeError, LeaseExpiredError, LeaseHeldError,
                    LeaseNotFoundError, LeaseReleasedError, StaleLeaseError, StoreClosedError):
            assert issubclass(exc, BlockStoreError)

    # -- concurrency within a process --------------------------------------------------------
    def test_threads_race_for_a_lease_one_wins(self, store: BlockStore) -> None:
        winners: list[Lease] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def contend(k: int) -> None:
            barrier.wait()
            try:
                winners.append(store.acquire("s", holder=f"t{k}", num_blocks=1))
            except LeaseHeldError:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=contend, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(winners) == 1
        assert store.lease_info("s").holder == winners[0].holder
        assert len(store.list_leases()) == 1
