"""Errors of the block store.

One root, :class:`BlockStoreError`; every subclass names one cause and also inherits the
builtin that fits, so callers may catch either::

    BlockStoreError
    ├── StoreClosedError          (RuntimeError)      store used after close()
    ├── StorePathError            (NotADirectoryError) path is not a store directory
    ├── StoreCorruptError         (ValueError)        store metadata or a lease record unreadable
    │   ├── StoreVersionError                         store written by a newer blockpoint
    │   └── BlockMissingError                         blocks the lease record names are gone
    ├── StoreConfigError          (ValueError)        e.g. block size differs from the store's
    ├── KeySettingError           (ValueError)        the checkpoint key setting is unusable
    │   └── KeyFileError                              the key file is missing, unreadable, open to others
    ├── StorageIOError            (OSError)           the backend's I/O failed
    │   └── LockTimeoutError      (TimeoutError)      a store or lease lock stayed taken
    ├── LeaseError
    │   ├── LeaseNotFoundError    (KeyError)          no lease with that name or id
    │   ├── LeaseHeldError                            held by another holder, not expired
    │   ├── LeaseExpiredError                         the holder's TTL ran out (renew first)
    │   ├── LeaseReleasedError                        handle used after release()
    │   ├── LeaseNameError        (ValueError)        empty, control/Cf char, surrogate, id-like
    │   └── StaleLeaseError                           epoch is not the current one (fenced)
    │       └── CommitUnknownError                    fenced, and the last commit may have landed
    ├── DocumentError                                 a slotted document (blockstore.document)
    │   ├── DocumentEncodeError   (TypeError)         not a JSON object JSON can encode
    │   └── DocumentTooLargeError (ValueError)        encoded above the document's max_bytes
    └── BlockError
        ├── BlockIndexError       (IndexError)        negative or beyond the lease
        └── BlockSizeError        (ValueError)        data larger than one block

Backend exceptions (``OSError``, botocore) are translated where they are raised, with
``raise ... from exc``, so the cause stays attached.
"""

from __future__ import annotations

__all__ = [
    "BlockError",
    "BlockIndexError",
    "BlockMissingError",
    "BlockSizeError",
    "BlockStoreError",
    "CommitUnknownError",
    "DocumentEncodeError",
    "DocumentError",
    "DocumentTooLargeError",
    "KeyFileError",
    "KeySettingError",
    "LeaseError",
    "LeaseExpiredError",
    "LeaseHeldError",
    "LeaseNameError",
    "LeaseNotFoundError",
    "LeaseReleasedError",
    "LockTimeoutError",
    "StaleLeaseError",
    "StorageIOError",
    "StoreClosedError",
    "StoreConfigError",
    "StoreCorruptError",
    "StorePathError",
    "StoreVersionError",
]


def rebuild_error(cls: type[BaseException], args: tuple[object, ...],
                  state: dict[str, object]) -> BaseException:
    """Recreate a pickled error without calling its ``__init__`` (see ``__reduce__``)."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


def reduce_error(err: BaseException) -> tuple[object, ...]:
    """``__reduce__`` for errors whose ``__init__`` takes other arguments than ``args``.

    Errors cross process boundaries (Ray returns an actor's exception to its caller by
    pickling it); the default ``BaseException.__reduce__`` calls ``cls(*args)``, which fails
    for an ``__init__`` with required keywords and turns the error into Ray's
    ``UnserializableException``. Rebuilding from ``args`` and ``__dict__`` keeps the type,
    message and context attributes.
    """
    return (rebuild_error, (type(err), err.args, dict(err.__dict__)))


class BlockStoreError(Exception):
    """Root of every error raised by :mod:`blockstore`. Picklable with its attributes."""

    def __str__(self) -> str:  # KeyError would otherwise repr() its message
        return str(self.args[0]) if self.args else self.__class__.__name__

    __reduce__ = reduce_error


class StoreClosedError(BlockStoreError, RuntimeError):
    """The store (or a handle on it) was used after ``close()``."""


class StorePathError(BlockStoreError, NotADirectoryError):
    """The path given for a file store is not a store directory."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class StoreCorruptError(BlockStoreError, ValueError):
    """Store metadata or a lease record cannot be read or parsed."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreVersionError(StoreCorruptError):
    """The store was written by a newer format version than this code reads.

    Attributes:
        version: the version found; ``supported``: the newest version this code reads.
    """

    def __init__(self, message: str, *, path: str | None = None, version: int,
                 supported: int) -> None:
        super().__init__(message, path=path)
        self.version = version
        self.supported = supported


class BlockMissingError(StoreCorruptError):
    """Blocks that the lease's committed record names cannot be read: their objects are
    gone (an object store; re-reading the record did not explain it as a newer commit).

    A reader of a checkpoint treats it like any other damaged block: the generation that
    uses them is corrupt, and an older one may still restore.

    Attributes:
        lease_id: the lease; ``indices``: the missing blocks.
    """

    def __init__(self, message: str, *, path: str | None = None, lease_id: str | None = None,
                 indices: tuple[int, ...] = ()) -> None:
        super().__init__(message, path=path)
        self.lease_id = lease_id
        self.indices = tuple(indices)


class StoreConfigError(BlockStoreError, ValueError):
    """The store's configuration conflicts with what was asked (e.g. block size)."""


class KeySettingError(BlockStoreError, ValueError):
    """The checkpoint key setting cannot be used (``blockstore/keys.py``): an empty key, old
    keys without a current key, a key that is not UTF-8. The message names the setting
    (the argument or the environment variable), never the key."""


class KeyFileError(KeySettingError):
    """The key file named by ``$BLOCKPOINT_CHECKPOINT_KEY_FILE`` cannot be used: missing,
    unreadable, empty, or open to other users (its mode grants group or others any access).

    Attributes:
        path: the key file (a path is not a secret; its content is never in the message).
        mode: its permission bits, when it could be stat'ed.
    """

    def __init__(self, message: str, *, path: str, mode: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.mode = mode


class StorageIOError(BlockStoreError, OSError):
    """The backend's I/O failed; the original exception is the ``__cause__``.

    Attributes:
        path: the file or object concerned, when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class LockTimeoutError(StorageIOError, TimeoutError):
    """A lock of the store (or of one lease) was not obtained within the store's lock timeout.

    The holder is stuck (stopped process, hung I/O) or the store is overloaded; nothing was
    changed. Retrying later is safe.

    Attributes:
        path: the lock file; ``waited``: seconds waited.
    """

    def __init__(self, message: str, *, path: str | None = None, waited: float = 0.0) -> None:
        super().__init__(message, path=path)
        self.waited = waited


class LeaseError(BlockStoreError):
    """A lease operation was refused."""

    def __init__(
        self,
        message: str,
        *,
        lease_id: str | None = None,
        name: str | None = None,
        epoch: int | None = None,
    ) -> None:
        super().__init__(message)
        self.lease_id = lease_id
        self.name = name
        self.epoch = epoch


class LeaseNotFoundError(LeaseError, KeyError):
    """No lease has that name or id."""


class LeaseMismatchError(LeaseNotFoundError, ValueError):
    """``delete_lease(name, lease=handle)`` with a handle on another lease than the one
    ``name`` names now: typically the handle's lease was deleted and a new lease created
    under the name since (so the handle's lease is not found there). Nothing is deleted.
    Also a ``ValueError``, as it was before it had its own class.

    Attributes:
        lease_id: the id of the lease ``name`` names now.
        handle_lease_id: the id of the handle's lease.
    """

    def __init__(self, message: str, *, handle_lease_id: str | None = None,
                 **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.handle_lease_id = handle_lease_id


class LeaseHeldError(LeaseError):
    """The lease is held by another holder and has not expired."""

    def __init__(self, message: str, *, holder: str | None = None,
                 expires_at: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.holder = holder
        self.expires_at = expires_at


class LeaseExpiredError(LeaseError):
    """The holder's TTL ran out; it must renew before writing again."""


class LeaseReleasedError(LeaseError):
    """The handle was used after ``release()``."""


class LeaseNameError(LeaseError, ValueError):
    """A lease name (or holder, stage id, run id) is empty, not a string, holds a NUL or
    control character or a lone surrogate (not UTF-8), or - for a new lease - a format
    character (bidirectional override, zero width; the message names the code point) or
    looks like a lease id (32 hex digits, which lookups by name or id could not tell apart;
    ``docs/FORMAT.md`` 1.4).

    Names are printed by ``blockpoint inspect`` and written into records; a control
    character (newline, ESC, any Unicode ``Cc``, line/paragraph separators) could forge output.
    """


class StaleLeaseError(LeaseError):
    """The write carried an epoch that is no longer current: another holder took over.

    Attributes:
        epoch: the epoch the caller presented.
        current_epoch: the store's current epoch for the lease.
    """

    def __init__(self, message: str, *, current_epoch: int | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.current_epoch = current_epoch


class CommitUnknownError(StaleLeaseError):
    """A flush (or release) was fenced after a commit whose outcome it cannot know.

    Its record put may have landed with the answer lost (the retry met a newer record), or
    an earlier attempt of the same flush failed with an I/O error, and then another holder
    took over. Nothing the commit may have published was removed: if it landed, the new
    holder's record names its blocks and they stay readable; if not, gc collects them. The
    writes are NOT known to be saved; the lease is held by epoch ``current_epoch`` now.
    """


class BlockError(BlockStoreError):
    """A block operation had bad arguments."""

    def __init__(self, message: str, *, lease_id: str | None = None,
                 index: int | None = None) -> None:
        super().__init__(message)
        self.lease_id = lease_id
        self.index = index


class BlockIndexError(BlockError, IndexError):
    """A block index is negative or beyond the end of the lease."""


class BlockSizeError(BlockError, ValueError):
    """Data given for one block is larger than the store's block size."""


class DocumentError(BlockStoreError):
    """A slotted document (:mod:`blockstore.document`) cannot be saved as asked.

    Attributes:
        lease_id, name: the document's lease.
    """

    def __init__(self, message: str, *, lease_id: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(message)
        self.lease_id = lease_id
        self.name = name


class DocumentEncodeError(DocumentError, TypeError):
    """The document is not a dict that canonical JSON can encode; nothing was written."""


class DocumentTooLargeError(DocumentError, ValueError):
    """The encoded document exceeds the document's ``max_bytes``; nothing was written.

    Attributes:
        size: encoded bytes; ``limit``: the maximum.
    """

    def __init__(self, message: str, *, size: int, limit: int, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.size = size
        self.limit = limit


# -- store URLs and object stores (blockstore/urls.py, blockstore/objectclient.py) ---------
# Appended as a block so the tree above stays as it was; each is drawn here:
#
#   StoreConfigError
#   ├── StoreURLError                       the URL is malformed; ``part`` names what is wrong
#   ├── BucketNotFoundError                 the bucket (container) does not exist
#   └── StoreEndpointError                  the endpoint answers, but not as an object store
#   StorageIOError
#   ├── StoreAccessDeniedError (PermissionError)  403: credentials refused or lacking rights
#   └── StoreUnreachableError  (ConnectionError)  no answer from the endpoint (after retries)

__all__ += [
    "BucketNotFoundError",
    "StoreAccessDeniedError",
    "StoreEndpointError",
    "StoreURLError",
    "StoreUnreachableError",
]


class StoreURLError(StoreConfigError):
    """A store URL cannot be used as given.

    Attributes:
        url: the URL (credentials, if any were given, are not repeated).
        part: the part that is wrong: ``scheme``, ``bucket``, ``prefix``, ``path``,
            ``credentials``, ``query``, ``query key 'NAME'``, ``endpoint_url``, ...
    """

    def __init__(self, message: str, *, url: str, part: str) -> None:
        super().__init__(message)
        self.url = url
        self.part = part


class BucketNotFoundError(StoreConfigError):
    """The bucket (or container) named in the store URL does not exist.

    Attributes:
        bucket: its name; ``url``: the store URL.
    """

    def __init__(self, message: str, *, bucket: str, url: str) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.url = url


class StoreEndpointError(StoreConfigError):
    """The endpoint answered, but not like the object store the URL names.

    Attributes:
        endpoint: the endpoint URL.
    """

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class StoreAccessDeniedError(StorageIOError, PermissionError):
    """The object store refused the request (HTTP 403): bad credentials or missing rights."""


class StoreUnreachableError(StorageIOError, ConnectionError):
    """The object store's endpoint did not answer (connection refused, reset or timed out),
    retries included."""
