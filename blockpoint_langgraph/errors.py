"""Errors of the LangGraph saver.

One root, :class:`SaverError`; each subclass names one cause, inherits the builtin that
fits and carries its context as attributes::

    SaverError(Exception)
    ├── StaleWriterError(RuntimeError)   this saver was fenced off the thread: another writer
    │                                    took the thread's lease over (or deleted the thread)
    │                                    after this one wrote; nothing of this call was saved
    ├── ThreadBusyError(RuntimeError)    ``on_conflict="refuse"``: another live writer holds
    │                                    the thread's lease; nothing was written
    ├── ThreadAuthError(ValueError)      the thread has documents, but none this saver can
    │                                    authenticate (wrong key, forged, or written with a
    │                                    key this saver lacks); nothing read or written
    ├── ThreadCorruptError(ValueError)   the thread has documents, none verifies (damage);
    │                                    nothing read or written
    └── ThreadKeyRequired(PermissionError)  a shared store and no key: unauthenticated
                                         documents are refused there

Store failures (``StorageIOError``, ``LockTimeoutError``) propagate as the block store's own
errors (``blockstore/errors.py``). Every error pickles with its attributes.
"""

from __future__ import annotations

from blockstore.errors import reduce_error

__all__ = [
    "SaverError",
    "StaleWriterError",
    "ThreadAuthError",
    "ThreadBusyError",
    "ThreadCorruptError",
    "ThreadKeyRequired",
]


class SaverError(Exception):
    """Root of every error raised by :mod:`blockpoint_langgraph`.

    Attributes:
        thread_id: the LangGraph thread concerned.
    """

    def __init__(self, message: str, *, thread_id: str | None = None) -> None:
        super().__init__(message)
        self.thread_id = thread_id

    __reduce__ = reduce_error


class StaleWriterError(SaverError, RuntimeError):
    """Another writer owns the thread now; this saver may never write to it again.

    Raised by ``put``/``put_writes`` (and the thread-changing calls) of a saver whose lease
    on the thread was taken over or deleted. The call wrote nothing visible. The saver does
    not take the thread back by itself: a fenced writer that silently re-acquired would fork
    the chain, which is exactly what fencing prevents.

    Attributes:
        epoch: the lease epoch this saver held.
        current_epoch: the store's epoch now (``None`` if the thread was deleted).
    """

    def __init__(self, message: str, *, thread_id: str | None = None,
                 epoch: int | None = None, current_epoch: int | None = None) -> None:
        super().__init__(message, thread_id=thread_id)
        self.epoch = epoch
        self.current_epoch = current_epoch


class ThreadBusyError(SaverError, RuntimeError):
    """``on_conflict="refuse"`` and another holder's lease on the thread has not expired.

    Attributes:
        holder: the current holder.
        expires_at: when its lease runs out (wall clock), unless renewed.
    """

    def __init__(self, message: str, *, thread_id: str | None = None,
                 holder: str | None = None, expires_at: float | None = None) -> None:
        super().__init__(message, thread_id=thread_id)
        self.holder = holder
        self.expires_at = expires_at


class ThreadAuthError(SaverError, ValueError):
    """The thread holds documents, and none of them authenticates under this saver's keys.

    A wrong key, a forged document, or a thread written with a key by a saver that has
    none: the thread is never taken for empty (a write would replace its history), so both
    reads and writes of it raise this until the right key is configured.

    Attributes:
        reasons: why each written slot was refused (``MAC mismatch (wrong key or
            forged)``, ``no MAC, but a key is configured``, ...).
    """

    def __init__(self, message: str, *, thread_id: str | None = None,
                 reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message, thread_id=thread_id)
        self.reasons = tuple(reasons)


class ThreadCorruptError(SaverError, ValueError):
    """The thread holds documents whose headers verify, and none of their payloads does.

    Reads and writes raise it rather than treat the thread as empty (a write would replace
    what may still be recovered).

    Attributes:
        reasons: why each written slot was refused.
    """

    def __init__(self, message: str, *, thread_id: str | None = None,
                 reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message, thread_id=thread_id)
        self.reasons = tuple(reasons)


class ThreadKeyRequired(SaverError, PermissionError):
    """No key is configured and the store is shared (``capabilities.shared``).

    Anyone who can write such a store could forge a thread's documents, and LangGraph's
    serializer rebuilds objects they name; set ``$BLOCKPOINT_CHECKPOINT_KEY`` (or pass
    ``key=``), or pass ``allow_unauthenticated=True`` to accept that risk.
    """
