"""Fault injection around a real store, for crash-safety tests.

:class:`FaultyStore` forwards every primitive to a real backend and, when armed, "crashes"
at a chosen block write: after ``k`` blocks have been written it writes nothing more, or
writes only the first part of the next block (a torn block), then raises :class:`InjectedCrash`.
Everything written before the crash stays in the real store, exactly as after a process
killed at that point; tests then reopen the real store and check what a reader sees. With
``kill=True`` the process really dies there (SIGKILL to itself): no ``finally`` block, no
release, as after a crash - for tests that run the victim in a subprocess.

``fail_renewals(n)`` makes the next ``n`` renewals fail with ``StorageIOError`` (a transient
backend error) without touching the real store. ``fail_io(op, errno, at=k)`` makes the
(k+1)-th write call or flush fail the way a full, broken or read-only disk does (``ENOSPC``,
``EIO``, ``EROFS``): a ``StorageIOError`` caused by that ``OSError``, nothing written by the
failing call - until disarmed. Both are backend *errors*, not crashes: the process goes on.
"""

from __future__ import annotations

import errno as errnos
import os
import signal
from collections.abc import Sequence
from typing import Literal

from .base import BlockStore, bounds_error
from .errors import BlockStoreError, StorageIOError
from .fencing import check_current
from .lease import LeaseInfo

__all__ = ["FaultyStore", "InjectedCrash"]


class InjectedCrash(BlockStoreError):
    """Raised where a test asked the store to "crash"."""


class FaultyStore(BlockStore):
    """Wraps ``inner``; ``crash_after(k, torn=...)`` arms a crash at the (k+1)-th block write.

    Attributes:
        block_writes: blocks written through this wrapper so far.
        flushes: flushes forwarded so far.
    """

    def __init__(self, inner: BlockStore) -> None:
        super().__init__(inner.block_size)
        self.inner = inner
        self.capabilities = inner.capabilities
        self.block_writes = 0
        self.flushes = 0
        self._crash_at: int | None = None
        self._torn = False
        self._crash_on_flush: int | None = None
        self._kill = False
        self._failing_renewals = 0
        self.failed_renewals = 0
        self._io_faults: dict[str, tuple[int, int]] = {}
        self.write_calls = 0

    def crash_after(self, k: int | None, *, torn: bool = False, kill: bool = False) -> None:
        """Crash when a write would exceed ``k`` blocks in total (``None`` disarms).

        With ``torn``, the block at which the crash happens is half written first. With
        ``kill``, the process is SIGKILLed at that point instead of raising.
        """
        self._crash_at = k
        self._torn = torn
        self._kill = kill

    def fail_renewals(self, n: int) -> None:
        """Make the next ``n`` renewals raise ``StorageIOError`` (0 disarms)."""
        self._failing_renewals = n

    def fail_io(self, op: Literal["write", "flush"], errno: int | None, *, at: int = 0) -> None:
        """Fail every ``op`` call from the (``at``+1)-th on with ``OSError(errno)`` wrapped in
        ``StorageIOError``, writing nothing (``errno=None`` disarms). Counted from now."""
        if errno is None:
            self._io_faults.pop(op, None)
            return
        done = self.write_calls if op == "write" else self.flushes
        self._io_faults[op] = (errno, done + at)

    def _io_fault(self, op: str, done: int, what: str) -> None:
        fault = self._io_faults.get(op)
        if fault is not None and done >= fault[1]:
            code = fault[0]
            cause = OSError(code, os.strerror(code))
            raise StorageIOError(f"injected {errnos.errorcode.get(code, code)} at {what}") \
                from cause

    def _crash(self, message: str) -> InjectedCrash:
        if self._kill:
            os.kill(os.getpid(), signal.SIGKILL)
        return InjectedCrash(message)

    def crash_on_flush(self, n: int | None) -> None:
        """Crash instead of performing the (n+1)-th flush (``None`` disarms)."""
        self._crash_on_flush = n

    @property
    def url(self) -> str:
        return self.inner.url

    def _acquire(self, name: str, holder: str, ttl: float, num_blocks: int,
                 steal: bool) -> LeaseInfo:
        return self.inner._acquire(name, holder, ttl, num_blocks, steal)

    def _renew(self, lease_id: str, holder: str, epoch: int, ttl: float) -> LeaseInfo:
        if self._failing_renewals > 0:
            self._failing_renewals -= 1
            self.failed_renewals += 1
            raise StorageIOError(f"injected transient failure of renewal of {lease_id}")
        return self.inner._renew(lease_id, holder, epoch, ttl)

    def _release(self, lease_id: str, holder: str, epoch: int) -> None:
        self.inner._release(lease_id, holder, epoch)

    def _resize(self, lease_id: str, epoch: int, num_blocks: int) -> LeaseInfo:
        return self.inner._resize(lease_id, epoch, num_blocks)

    def _discard(self, lease_id: str, epoch: int, indices: Sequence[int],
                 keep_space: bool = False) -> None:
        # Forwarded like resize, not counted as block writes: crashes are injected into the
        # writes a commit depends on, and a discard only ever follows a commit.
        self.inner._discard(lease_id, epoch, indices, keep_space)

    def _write(self, lease_id: str, epoch: int, indices: Sequence[int],
               datas: Sequence[memoryview]) -> None:
        self._io_fault("write", self.write_calls, f"write call {self.write_calls}")
        self.write_calls += 1
        if self._crash_at is None or self.block_writes + len(indices) <= self._crash_at:
            # No crash in this call: one call to the real store, refused or applied whole.
            self.inner._write(lease_id, epoch, indices, datas)
            self.block_writes += len(indices)
            return
        # The crash falls in this call, which is then applied block by block. A call the
        # store would refuse (fenced, expired, out of range) is refused before any block.
        info = self.inner._info(lease_id)
        check_current(info, epoch)
        for i in indices:
            if i >= info.num_blocks:
                raise bounds_error(lease_id, info.name, i, info.num_blocks)
        for i, d in zip(indices, datas):
            if self._crash_at is not None and self.block_writes >= self._crash_at:
                if self._torn and len(d) > 1:
                    old = bytearray(self.block_size)
                    self.inner._read(lease_id, [i], [memoryview(old)])
                    half = len(d) // 2
                    old[:half] = d[:half]
                    self.inner._write(lease_id, epoch, [i], [memoryview(old)])
                raise self._crash(f"injected crash at block write {self.block_writes} "
                                  f"(block {i}{', torn' if self._torn else ''})")
            self.inner._write(lease_id, epoch, [i], [d])
            self.block_writes += 1

    def _read(self, lease_id: str, indices: Sequence[int], buffers: Sequence[memoryview]) -> None:
        self.inner._read(lease_id, indices, buffers)

    def _flush(self, lease_id: str, epoch: int) -> None:
        if self._crash_on_flush is not None and self.flushes >= self._crash_on_flush:
            raise self._crash(f"injected crash at flush {self.flushes}")
        self._io_fault("flush", self.flushes, f"flush {self.flushes}")
        self.flushes += 1
        self.inner._flush(lease_id, epoch)

    def _info(self, lease_id: str) -> LeaseInfo:
        return self.inner._info(lease_id)

    def _list(self) -> list[LeaseInfo]:
        return self.inner._list()

    def _delete(self, lease_id: str, holder: str | None, epoch: int | None) -> None:
        self.inner._delete(lease_id, holder, epoch)

    def _close(self) -> None:
        self.inner.close()
