"""Write ownership of LangGraph threads: one lease per thread, one writer at a time.

LangGraph's savers let two processes append to one thread at once, and the chain forks
silently. Here every thread is a lease of the block store (``blockstore/lease.py``) named
``<prefix>/<quoted thread id>``, and a saver writes a thread only through its own hold of
that lease, so the store's fencing (``blockstore/fencing.py``: the epoch is checked
atomically with every write) decides who may write:

* ``on_conflict="takeover"`` (the default): a saver that writes a thread takes its lease
  with ``steal=True``, bumping the epoch. The previous writer is fenced: its next write is
  refused by the store and surfaces as :class:`~blockpoint_langgraph.errors.StaleWriterError`.
  This is what a resumed graph wants after its first process died (no waiting for a TTL),
  and it never forks: the fenced saver never re-takes the thread by itself.
* ``on_conflict="refuse"``: a saver takes the lease only if nobody holds it unexpired,
  else :class:`~blockpoint_langgraph.errors.ThreadBusyError`. A holder that stays idle past
  its TTL may lose the thread to another writer; it is then fenced the same way.

A saver that finds its own hold expired (nobody took over) renews it and retries once: its
epoch is still current, so no other writer can exist. Reads need no lease.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal, TypeVar
from urllib.parse import quote, unquote

from blockstore import BlockStore, Lease, default_holder
from blockstore.errors import (
    LeaseExpiredError,
    LeaseHeldError,
    LeaseNotFoundError,
    LeaseReleasedError,
    StaleLeaseError,
)

from .errors import StaleWriterError, ThreadBusyError

__all__ = ["Conflict", "ThreadOwnership"]

Conflict = Literal["takeover", "refuse"]
T = TypeVar("T")


class ThreadOwnership:
    """The leases one saver holds, one per thread it wrote, and the threads it lost.

    Guarantees: :meth:`write` runs its function only under this saver's current hold of the
    thread's lease; a takeover or deletion by anyone else, at any moment, makes the store
    refuse the function's writes, and :meth:`write` then raises ``StaleWriterError`` and
    remembers the thread as lost (every later write to it raises too, until
    :meth:`forget`). Thread-safe.

    Args:
        store: the block store holding the threads.
        prefix: lease-name prefix of this saver's threads.
        on_conflict: ``"takeover"`` or ``"refuse"`` (module docstring).
        ttl: seconds a hold lasts without a write; renewed when a write finds it expired.
        holder: the holder name recorded in the lease (default: host:pid:random).
    """

    def __init__(self, store: BlockStore, *, prefix: str, on_conflict: Conflict,
                 ttl: float, holder: str | None = None) -> None:
        if on_conflict not in ("takeover", "refuse"):
            raise ValueError(f"on_conflict must be 'takeover' or 'refuse', not {on_conflict!r}")
        self.store = store
        self.prefix = prefix
        self.on_conflict = on_conflict
        self.ttl = ttl
        self.holder = holder or default_holder()
        self._held: dict[str, Lease] = {}
        self._lost: dict[str, StaleWriterError] = {}
        self._lock = threading.RLock()

    def name_of(self, thread_id: str) -> str:
        """The lease name of ``thread_id`` (any string: it is percent-quoted)."""
        return f"{self.prefix}/{quote(thread_id, safe='')}"

    def thread_of(self, name: str) -> str | None:
        """The thread id of a lease name of this prefix, else ``None``."""
        head = self.prefix + "/"
        return unquote(name[len(head):]) if name.startswith(head) else None

    def lease(self, thread_id: str) -> Lease:
        """This saver's hold of the thread, taken now if it has none (see ``on_conflict``)."""
        with self._lock:
            if thread_id in self._lost:
                raise self._lost[thread_id]
            held = self._held.get(thread_id)
            if held is not None:
                return held
            try:
                held = self.store.acquire(self.name_of(thread_id), holder=self.holder,
                                          ttl=self.ttl,
                                          steal=self.on_conflict == "takeover")
            except LeaseHeldError as exc:
                raise ThreadBusyError(
                    f"thread {thread_id!r} is being written by {exc.holder!r} (lease epoch "
                    f"{exc.epoch}); on_conflict='refuse' does not take it over",
                    thread_id=thread_id, holder=exc.holder, expires_at=exc.expires_at,
                ) from exc
            self._held[thread_id] = held
            return held

    def write(self, thread_id: str, fn: Callable[[Lease], T]) -> T:
        """Run ``fn(lease)`` under this saver's hold of the thread; translate fencing.

        Raises ``StaleWriterError`` if the hold was taken over or the thread deleted by
        someone else (nothing ``fn`` wrote is visible), ``ThreadBusyError`` (refuse mode).
        """
        with self._lock:
            lease = self.lease(thread_id)
            for attempt in (0, 1):
                try:
                    return fn(lease)
                except LeaseExpiredError:
                    if attempt:
                        raise
                    try:  # still our epoch: nobody took over, so renewing is safe
                        lease.renew()
                    except (StaleLeaseError, LeaseNotFoundError, LeaseReleasedError) as exc:
                        raise self._fence(thread_id, lease, exc) from exc
                except (StaleLeaseError, LeaseNotFoundError, LeaseReleasedError) as exc:
                    raise self._fence(thread_id, lease, exc) from exc
            raise AssertionError("unreachable")

    def _fence(self, thread_id: str, lease: Lease, exc: Exception) -> StaleWriterError:
        current = getattr(exc, "current_epoch", None)
        err = StaleWriterError(
            f"thread {thread_id!r}: this saver (holder {lease.holder!r}, lease epoch "
            f"{lease.epoch}) was fenced - another writer took the thread over "
            f"{'(epoch ' + str(current) + ')' if current else 'or deleted it'}; nothing "
            "was saved, and this saver will not write the thread again",
            thread_id=thread_id, epoch=lease.epoch, current_epoch=current)
        self._held.pop(thread_id, None)
        self._lost[thread_id] = err
        lease.release()  # harmless when fenced or deleted: marks the handle released
        return err

    def delete(self, thread_id: str) -> None:
        """Take the thread (as a write would) and delete its lease and blocks."""
        with self._lock:
            self.write(thread_id, lambda lease: self.store.delete_lease(lease.lease_id,
                                                                        lease=lease))
            self._held.pop(thread_id, None)

    def forget(self, thread_id: str) -> None:
        """Drop what this saver knows of the thread (after it was deleted)."""
        with self._lock:
            self._held.pop(thread_id, None)
            self._lost.pop(thread_id, None)

    def release_all(self) -> None:
        """Release every hold (data stays); idempotent."""
        with self._lock:
            for lease in self._held.values():
                lease.release()
            self._held.clear()
