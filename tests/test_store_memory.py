"""The conformance suite against the memory backend, plus what only ``memory://`` does."""

from __future__ import annotations

import pytest

from blockstore import MemoryStore, StoreConfigError, open_store
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
