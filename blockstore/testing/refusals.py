"""The refusals of the conformance suite: bad input (index, size, data, name, TTL, holder)
raises a specific error and changes nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from ..base import BlockStore
from ..errors import (
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
from ..lease import Lease
from ._base import ConformanceBase

__all__ = ["RefusalConformance"]


class RefusalConformance(ConformanceBase):
    """Bad input: a specific error, and the lease's record and blocks as before."""

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
