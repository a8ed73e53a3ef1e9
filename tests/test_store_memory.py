"""The conformance suite against the memory backend, plus what only ``memory://`` does."""

from __future__ import annotations

import pytest

from blockstore import BlockStore, MemoryStore, StoreConfigError, open_store
from blockstore.faults import FaultyStore, InjectedCrash
from blockstore.testing import StoreConformance


class TestMemoryStore(StoreConformance):
    def make_store(self, block_size: int) -> MemoryStore:
        return MemoryStore(block_size)


def test_memory_url_names_one_store_per_process() -> None:
    a = open_store("memory://conformance-shared", block_size=4096)
    try:
        lease = a.acquire("s", num_blocks=1)
        lease.write_blocks({0: b"shared"})
        b = open_store("memory://conformance-shared")
        assert b is a and b.url == "memory://conformance-shared"
        assert b.open_reader("s").read_block(0)[:6] == b"shared"
        with pytest.raises(StoreConfigError):
            open_store("memory://conformance-shared", block_size=8192)
    finally:
        a.close()
    fresh = open_store("memory://conformance-shared", block_size=4096)
    assert fresh is not a and fresh.list_leases() == []  # a closed store is not reused
    fresh.close()


@pytest.mark.parametrize("bad", [0, 100, 511, 2**30, 4096.0, "4096"])
def test_memory_bad_block_size(bad: object) -> None:
    with pytest.raises(StoreConfigError):
        MemoryStore(bad)  # type: ignore[arg-type]


def test_memory_capabilities() -> None:
    caps = MemoryStore(4096).capabilities
    assert not caps.cross_process and not caps.durable


class TestUnarmedFaultyStore(StoreConformance):
    """``FaultyStore`` not armed must be indistinguishable from the store it wraps."""

    def make_store(self, block_size: int) -> BlockStore:
        return FaultyStore(MemoryStore(block_size))


def test_faulty_store_crashes_where_armed() -> None:
    with FaultyStore(MemoryStore(4096)) as st:
        lease = st.acquire("s", num_blocks=4)
        lease.write_blocks({0: b"a" * 4096, 1: b"b" * 4096})
        st.crash_after(3, torn=True)
        with pytest.raises(InjectedCrash):
            lease.write_blocks({2: b"c" * 4096, 3: b"d" * 4096})
        got = lease.read_blocks([0, 1, 2, 3])
        assert got[:3] == [b"a" * 4096, b"b" * 4096, b"c" * 4096]
        assert got[3] == b"d" * 2048 + bytes(2048)  # torn: the first half only
        st.crash_after(None)
        st.crash_on_flush(0)
        with pytest.raises(InjectedCrash):
            lease.flush()
        assert st.flushes == 0 and st.block_writes == 3


def test_an_unpadded_write_is_padded_where_the_backend_cannot_write_part_of_a_block() -> None:
    """write_blocks(pad=False) may leave a block's later bytes: a backend without partial
    block writes (the memory store) zero-pads as always."""
    st = MemoryStore(4096)
    lease = st.acquire("a", num_blocks=1)
    lease.write_blocks({0: b"x" * 4096})
    lease.write_blocks({0: b"ab"}, flush=True, pad=False)
    assert lease.read_block(0) == b"ab".ljust(4096, b"\0")
