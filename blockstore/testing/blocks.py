"""The block rules of the conformance suite: vectorised writes and reads, padding, zeros
for never-written blocks, grow and shrink, and a closed store refusing everything.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ..base import BlockStore
from ..errors import (
    BlockIndexError,
    StaleLeaseError,
    StoreClosedError,
)
from ._base import SHORT_TTL, ConformanceBase

__all__ = ["BlockConformance"]


class BlockConformance(ConformanceBase):
    """Blocks: what a write stores, what a read returns, and what a closed store refuses."""

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

    def test_write_with_flush_is_visible_and_fenced(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=2)
        a.write_blocks({0: self.pat("w", 0), 1: self.pat("w", 1)}, flush=True)
        data = {0: self.pat("w", 0), 1: self.pat("w", 1)}
        assert store.open_reader("s").read_blocks([0, 1]) == [data[0], data[1]]
        store.acquire("s", holder="h2", steal=True)
        self.refused_changes_nothing(
            store, "s", data, StaleLeaseError,
            lambda: a.write_blocks({0: self.pat("zombie", 0)}, flush=True))

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
