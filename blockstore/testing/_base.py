"""The base of the conformance suite: the backend hook, the ``store`` fixture and the
helpers every rule's tests share.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ..base import BlockStore
from ..lease import Lease, LeaseInfo

__all__ = ["SHORT_TTL", "ConformanceBase", "block_pattern", "wait_expired"]

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
class ConformanceBase:
    """What every rule's mixin stands on: the backend hook, the ``store`` fixture, helpers.

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
