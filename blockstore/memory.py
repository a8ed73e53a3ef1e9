"""In-memory backend: the full store semantics in one process, for tests and baselines.

Everything is guarded by one lock, so fencing checks are atomic with writes. Nothing is
durable and nothing is shared across processes (``capabilities`` says so).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from .base import DEFAULT_BLOCK_SIZE, BlockStore, StoreCapabilities, bounds_error, new_lease_id
from .checks import check_new_block_size
from .errors import LeaseNotFoundError
from .fencing import check_current, check_free, next_acquire, released, renewed
from .lease import LeaseInfo

__all__ = ["MemoryStore"]


class _Entry:
    __slots__ = ("blocks", "info")

    def __init__(self, info: LeaseInfo) -> None:
        self.info = info
        self.blocks: dict[int, bytes] = {}


class MemoryStore(BlockStore):
    """A store held in this process's memory."""

    capabilities = StoreCapabilities(cross_process=False, durable=False, conditional_write=False)

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, name: str = "", *,
                 clock_margin: float | None = None) -> None:
        check_new_block_size(block_size)  # a memory store is always new
        super().__init__(block_size, clock_margin=clock_margin)
        self._name = name or hex(id(self))
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    def _entry(self, lease_id: str) -> _Entry:
        try:
            return self._entries[lease_id]
        except KeyError:
            raise LeaseNotFoundError(f"no lease {lease_id} in {self.url}",
                                     lease_id=lease_id) from None

    def _acquire(self, name: str, holder: str, ttl: float, num_blocks: int,
                 steal: bool) -> LeaseInfo:
        with self._lock:
            existing = next((e for e in self._entries.values() if e.info.name == name), None)
            info = next_acquire(existing.info if existing else None, lease_id=new_lease_id(),
                                name=name, holder=holder, ttl=ttl, num_blocks=num_blocks,
                                steal=steal, block_size=self.block_size, now=self.now(),
                                margin=self.clock_margin)
            if existing is None:
                self._entries[info.lease_id] = _Entry(info)
            else:
                existing.info = info
            return info

    def _renew(self, lease_id: str, holder: str, epoch: int, ttl: float) -> LeaseInfo:
        with self._lock:
            e = self._entry(lease_id)
            e.info = renewed(e.info, epoch, ttl)
            return e.info

    def _release(self, lease_id: str, holder: str, epoch: int) -> None:
        with self._lock:
            e = self._entry(lease_id)
            e.info = released(e.info, epoch)

    def _resize(self, lease_id: str, epoch: int, num_blocks: int) -> LeaseInfo:
        with self._lock:
            e = self._entry(lease_id)
            check_current(e.info, epoch)
            for i in [i for i in e.blocks if i >= num_blocks]:
                del e.blocks[i]
            e.info = dataclasses.replace(e.info, num_blocks=num_blocks)
            return e.info

    def _writable(self, lease_id: str, epoch: int, indices: Sequence[int]) -> _Entry:
        """The entry, once ``epoch`` is current and every index inside (the lock is held)."""
        e = self._entry(lease_id)
        check_current(e.info, epoch)
        for i in indices:
            if i >= e.info.num_blocks:
                raise bounds_error(lease_id, e.info.name, i, e.info.num_blocks)
        return e

    def _write(self, lease_id: str, epoch: int, indices: Sequence[int],
               datas: Sequence[memoryview]) -> None:
        with self._lock:
            e = self._writable(lease_id, epoch, indices)
            for i, d in zip(indices, datas):
                e.blocks[i] = bytes(d)

    def _read(self, lease_id: str, indices: Sequence[int], buffers: Sequence[memoryview]) -> None:
        with self._lock:
            e = self._entry(lease_id)
            for i in indices:
                if i >= e.info.num_blocks:
                    raise bounds_error(lease_id, e.info.name, i, e.info.num_blocks)
            for i, buf in zip(indices, buffers):
                data = e.blocks.get(i, b"")
                n = min(len(data), len(buf))
                buf[:n] = data[:n]
                if n < len(buf):
                    buf[n:] = bytes(len(buf) - n)

    def _flush(self, lease_id: str, epoch: int) -> None:
        with self._lock:
            check_current(self._entry(lease_id).info, epoch, allow_expired=True)

    def _info(self, lease_id: str) -> LeaseInfo:
        with self._lock:
            return self._entry(lease_id).info

    def _list(self) -> list[LeaseInfo]:
        with self._lock:
            return [e.info for e in self._entries.values()]

    def _delete(self, lease_id: str, holder: str | None, epoch: int | None) -> None:
        with self._lock:
            e = self._entry(lease_id)
            if epoch is not None:
                check_current(e.info, epoch, allow_expired=True)
            else:
                check_free(e.info, now=self.now(), margin=self.clock_margin,
                           hint="delete it with the holder's handle")
            del self._entries[lease_id]

    def _discard(self, lease_id: str, epoch: int, indices: Sequence[int],
                 keep_space: bool = False) -> None:
        with self._lock:
            e = self._writable(lease_id, epoch, indices)
            for i in indices:
                e.blocks.pop(i, None)

    def _close(self) -> None:
        with self._lock:
            self._entries.clear()
