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
    LeaseNameError,
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

    @pytest.mark.parametrize("name", ["0" * 32, "ab" * 16, "AB" * 16,
                                      "0123456789abcdefABCDEF0123456789"])
    def test_name_like_a_lease_id_refused(self, filled: Any, name: str) -> None:
        """A new lease may not be named like an id: lookups by name or id (``lease_info``,
        ``open_reader``, ``delete_lease``) could not tell which was meant."""
        store, lease, data = filled
        for key in (name, lease.lease_id):
            with pytest.raises(LeaseNameError, match="looks like a lease id") as err:
                store.acquire(key)
            assert err.value.name == key
        assert [i.name for i in store.list_leases()] == ["s"]
        assert store.lease_info(lease.lease_id).name == "s"
        self.assert_blocks(store, "s", data)

    @pytest.mark.parametrize("name", ["a\ud800b", "\udfff", "s\udc80x"])
    def test_unencodable_name_refused(self, filled: Any, name: str) -> None:
        """Lone surrogates cannot be encoded as UTF-8 (records, object keys): refused at
        creation with LeaseNameError, and a lookup by one finds nothing."""
        store, _, data = filled
        with pytest.raises(LeaseNameError, match="surrogate"):
            store.acquire(name)
        with pytest.raises(LeaseNameError, match="surrogate"):
            store.acquire("new", holder=name)
        assert store.find(name) is None
        with pytest.raises(LeaseNotFoundError):
            store.lease_info(name)
        assert [i.name for i in store.list_leases()] == ["s"]
        self.assert_blocks(store, "s", data)

    def test_stored_name_like_an_id_still_found(self, filled: Any) -> None:
        """Leases named like an id before the rule (made here through the unchecked
        primitive) are still acquired and found by their exact name; an id lookup always
        finds the lease with that id, and a handle's own lookups go by id."""
        store, lease, data = filled
        legacy = "ab" * 16
        store._acquire(legacy, "old", 30.0, 1, False)
        clash = store._acquire(lease.lease_id, "old", 30.0, 2, False)  # named like s's id
        with store.acquire(legacy, steal=True) as again:
            assert again.epoch == 2 and again.info().name == legacy
        assert store.lease_info(legacy).name == legacy
        assert store.open_reader(legacy).name == legacy
        assert store.lease_info(lease.lease_id).name == "s"  # the id wins over the name
        assert lease.info().name == "s"
        assert store.find(lease.lease_id) == store.lease_info(clash.lease_id)
        with store.acquire(lease.lease_id, steal=True) as taken:
            assert taken.lease_id == clash.lease_id and taken.info().num_blocks == 2
        assert [i.name for i in store.list_leases()] == sorted([legacy, lease.lease_id, "s"])
        self.assert_blocks(store, "s", data)

    @pytest.mark.parametrize("name", ["agg\u202egnp", "\u200bagg", "a\u2066b\u2069",
                                      "s\u2067x", "s\u2068", "\ufeffs", "a\u200db"])
    def test_format_character_refused(self, filled: Any, name: str) -> None:
        """Bidirectional overrides and isolates, zero-width characters (Unicode ``Cf``)
        passed: ``agg\u202egnp`` shows as another name in a log line or a Grafana legend.
        Refused for a new lease and a holder, naming the code point."""
        store, _, data = filled
        point = next(f"U\\+{ord(c):04X}" for c in name if not c.isprintable())
        with pytest.raises(LeaseNameError, match=point) as err:
            store.acquire(name)
        assert err.value.name == name and "format character" in str(err.value)
        with pytest.raises(LeaseNameError, match=point):
            store.acquire("new", holder=name)
        assert [i.name for i in store.list_leases()] == ["s"]
        self.assert_blocks(store, "s", data)

    def test_stored_name_with_a_format_character_still_acquired(self, filled: Any) -> None:
        """A lease stored under such a name before the rule (made here through the
        unchecked primitive) is still acquired and found by its exact name."""
        store, _, data = filled
        legacy = "old\u200bname"
        store._acquire(legacy, "old", 30.0, 1, False)
        with store.acquire(legacy, steal=True) as again:
            assert again.epoch == 2 and again.info().name == legacy
        assert store.lease_info(legacy).name == legacy
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
