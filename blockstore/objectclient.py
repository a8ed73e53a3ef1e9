"""The object-store client: obstore requests, retries, error translation, a bounded pool.

Why obstore (one Rust client for S3, GCS and Azure): conditional puts (``mode="create"`` ->
``If-None-Match: *``, ``mode={"e_tag": ...}`` -> ``If-Match``) on all three with one API,
requests that release the GIL, buffers passed without a Python-side copy, and retries with
exponential backoff and jitter on 5xx (503 SlowDown included), dropped connections and
timeouts built in. Measured against boto3 on 256 MiB through the loopback server, both
moved the bytes at the server's speed (the commit that added this module has the figures),
so the choice rests on the rest.

Everything the backend sends goes through :class:`ObjectClient`, so retries, the translation
of client exceptions into :mod:`blockstore.errors` and the request counts live in one place.
The pool is bounded (``concurrency``, default 8): a 256 MiB checkpoint of 1 MiB blocks is
256 uploads, never 256 threads.

The store's clock: lease expiry is decided against the object store's clock, not the
caller's, so holders on machines whose clocks disagree still agree on who holds a lease.
Every record the client writes remembers when it was sent and acknowledged; when it is read
back with the same etag, the server's ``Last-Modified`` stamp (whole seconds) bounds the
offset between the server clock and ours: ``offset in [LM - t_ack, LM + 1 - t_sent]``. The
bounds narrow with each observation; the offset used is the point of that interval nearest
zero, so clocks that agree to within the stamp's resolution are left alone and a real skew
is corrected within about a round trip.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

from .credentials import s3_credential_provider
from .errors import (
    BlockStoreError,
    BucketNotFoundError,
    StorageIOError,
    StoreAccessDeniedError,
    StoreConfigError,
    StoreEndpointError,
    StoreUnreachableError,
)
from .redact import redact_text
from .urls import StoreURL
from .work import advance

__all__ = ["ObjectClient", "StoreClock"]

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_CONCURRENCY = 8
DEFAULT_RETRIES = 8
_POOL_NAME = "objstore"


class StoreClock:
    """An estimate of (store clock - local clock), from our own writes' stamps."""

    def __init__(self) -> None:
        self._lo = -float("inf")
        self._hi = float("inf")
        self._lock = threading.Lock()

    def observe(self, last_modified: float, sent: float, acked: float) -> None:
        """The server stamped an object we sent at ``sent`` and saw acknowledged at ``acked``
        (local clock) with ``last_modified`` (store clock, whole seconds)."""
        lo, hi = last_modified - acked, last_modified + 1.0 - sent
        with self._lock:
            if lo > self._hi or hi < self._lo:  # a clock was stepped: start again
                self._lo, self._hi = lo, hi
            else:
                self._lo, self._hi = max(self._lo, lo), min(self._hi, hi)

    @property
    def offset(self) -> float:
        """Seconds to add to ``time.time()`` to get the store's time (0 while unknown)."""
        with self._lock:
            if self._lo <= 0.0 <= self._hi:
                return 0.0
            return self._lo if self._lo > 0.0 else self._hi

    def now(self) -> float:
        """The store's current time, as best known."""
        return time.time() + self.offset


def _build_store(url: StoreURL, retries: int) -> Any:
    """The obstore store for ``url`` (credentials from the node - its environment, its shared
    credentials file, its instance profile - never the URL)."""
    try:
        from obstore.store import AzureStore, GCSStore, S3Store
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise StoreConfigError(f"{url.scheme}:// stores need obstore: pip install "
                               "'blockpoint[s3]'") from exc
    retry = {"max_retries": retries, "retry_timeout": timedelta(seconds=60),
             "backoff": {"init_backoff": timedelta(milliseconds=50),
                         "max_backoff": timedelta(seconds=2), "base": 2}}
    endpoint = url.option("endpoint_url")
    client: dict[str, Any] = {"connect_timeout": timedelta(seconds=5),
                              "timeout": timedelta(seconds=120)}
    if endpoint and endpoint.startswith("http://"):
        client["allow_http"] = True
    kw: dict[str, Any] = {"prefix": url.prefix or None, "client_options": client,
                          "retry_config": retry}
    try:
        if url.scheme == "s3":
            if endpoint:
                kw["endpoint"] = endpoint
            if url.option("region"):
                kw["region"] = url.option("region")
            provider = s3_credential_provider()  # ~/.aws/credentials (blockstore/credentials.py)
            if provider is not None:
                kw["credential_provider"] = provider
            return S3Store(url.location, **kw)
        if url.scheme == "gs":
            if endpoint:
                kw["base_url"] = endpoint
            return GCSStore(url.location, **kw)
        if endpoint:
            kw["endpoint"] = endpoint
        if url.option("account"):
            kw["account_name"] = url.option("account")
        return AzureStore(url.location, **kw)
    except Exception as exc:  # obstore reports missing credentials/config as it builds
        text = redact_text(str(exc))
        raise StoreConfigError(f"cannot configure {url.to_url()}: {text}") \
            from (exc if text == str(exc) else None)


class ObjectClient:
    """Requests to one bucket prefix, with retries, translated errors and a bounded pool.

    Absence is a value: ``get`` of a missing object returns ``None``; ``put_new`` of an
    existing one and ``put_if`` with a stale etag return ``None``. Every other failure
    raises a :class:`~blockstore.errors.BlockStoreError`.
    """

    def __init__(self, url: StoreURL, store: Any | None = None, *,
                 pool: Any | None = None) -> None:
        """``store``: an obstore store, or any object with its ``get``, ``put``, ``list``
        and ``delete`` methods (tests pass a pass-through wrapper that orders requests, and
        the deterministic simulation in tests/sim an in-process object store); requests go
        through those methods, never obstore's module functions, which accept only
        obstore's own classes. ``pool`` (default: a thread pool of ``concurrency`` threads)
        runs :meth:`map` and :meth:`submit`; the simulation passes one that runs each call
        at once, so a client's requests go one at a time."""
        self.url = url
        self.concurrency = url.int_option("concurrency", DEFAULT_CONCURRENCY)
        self._store = store if store is not None else _build_store(
            url, url.int_option("retries", DEFAULT_RETRIES))
        self._own_store = store is None
        self._once_store: Any | None = None
        self._pool = pool if pool is not None else ThreadPoolExecutor(
            self.concurrency, thread_name_prefix=_POOL_NAME)
        self.clock = StoreClock()
        self.requests: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._own: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    # -- requests ---------------------------------------------------------------------------
    def _count(self, op: str, n: int = 1) -> None:
        with self._count_lock:
            self.requests[op] += n

    def get(self, key: str) -> tuple[memoryview, Any] | None:
        """``(bytes, meta)`` of object ``key``, or ``None`` if there is none."""
        self._count("GET")
        try:
            res = self._store.get(key)
            data = memoryview(res.bytes())
        except FileNotFoundError as exc:
            self._check_not_found(exc, key)
            return None
        except Exception as exc:
            raise self._translate(exc, key)
        meta = res.meta
        stamp = self._own.get((key, meta["e_tag"] or ""))
        if stamp is not None and meta.get("last_modified") is not None:
            self.clock.observe(meta["last_modified"].timestamp(), *stamp)
        return data, meta

    def put(self, key: str, data: Any) -> str:
        """Write ``key`` unconditionally (a block under a generation nobody else uses)."""
        return self._put(key, data, "overwrite") or ""

    def put_new(self, key: str, data: Any) -> str | None:
        """Create ``key`` if absent (``If-None-Match: *``); its etag, or ``None`` if it exists."""
        return self._put(key, data, "create")

    def put_if(self, key: str, data: Any, etag: str) -> str | None:
        """Replace ``key`` if its etag is still ``etag`` (``If-Match``); the new etag, or
        ``None`` if the object changed or vanished."""
        return self._put(key, data, {"e_tag": etag})

    def _put(self, key: str, data: Any, mode: Any) -> str | None:
        from obstore.exceptions import AlreadyExistsError, PreconditionError
        self._count("PUT")
        t0 = time.time()
        try:
            res = self._store.put(key, data, mode=mode, use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            return None
        except FileNotFoundError as exc:  # If-Match on a vanished object, or no bucket
            self._check_not_found(exc, key)
            return None
        except Exception as exc:
            raise self._translate(exc, key)
        etag = res["e_tag"] or ""
        if mode != "overwrite":
            self._own[(key, etag)] = (t0, time.time())
            while len(self._own) > 256:
                self._own.popitem(last=False)
        return etag

    def list(self, prefix: str) -> list[Any]:
        """Metadata (``path``, ``size``, ``last_modified``, ``e_tag``) of every object whose
        key starts with ``prefix``."""
        out: list[Any] = []
        try:
            for page in self._store.list(prefix, chunk_size=1000):
                self._count("LIST")
                out.extend(page)
                advance("objects_listed", len(page))
        except FileNotFoundError as exc:
            self._check_not_found(exc, prefix)
        except Exception as exc:
            raise self._translate(exc, prefix)
        return out

    def delete(self, keys: Sequence[str]) -> None:
        """Remove objects (absent ones are fine), 1,000 per request."""
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            self._count("DELETE")
            try:
                self._store.delete(batch if len(batch) > 1 else batch[0])
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise self._translate(exc, batch[0])

    def delete_once(self, key: str) -> None:
        """Remove object ``key`` by one DELETE that the client never resends: applied at
        most once, so it cannot land again after someone re-created the key in between
        (a tombstone's removal, docs/FORMAT.md 6.4). A lost answer raises
        :class:`~blockstore.errors.StorageIOError` like any failure; nothing is retried.
        A store passed in uses its own ``delete_once`` if it has one, else ``delete``."""
        self._count("DELETE")
        try:
            if self._own_store:
                if self._once_store is None:
                    self._once_store = _build_store(self.url, 0)
                self._once_store.delete(key)
            else:
                getattr(self._store, "delete_once", self._store.delete)(key)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._translate(exc, key)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``fn`` over ``items`` in the bounded pool; the first failure is raised after every
        started call has ended (no request is left running behind the caller's back)."""
        items = list(items)
        if len(items) <= 1 or threading.current_thread().name.startswith(_POOL_NAME):
            return [fn(x) for x in items]  # nested in the pool: run here, never wait on it
        futures = [self._pool.submit(fn, x) for x in items]
        results: list[R] = []
        error: BaseException | None = None
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error
        return results

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """Run ``fn(*args)`` in the pool (for one request overlapped with others)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- errors -----------------------------------------------------------------------------
    def _where(self, key: str) -> str:
        return f"{self.url.to_url().split('?')[0]}/{key}"

    def _check_not_found(self, exc: BaseException, key: str) -> None:
        """A 404 is absence unless the bucket is missing or the endpoint is no object store."""
        text = str(exc)
        if "NoSuchBucket" in text or "ContainerNotFound" in text:
            raise BucketNotFoundError(
                f"bucket {self.url.location!r} of {self.url.to_url()} does not exist",
                bucket=self.url.location, url=self.url.to_url()) from exc
        if self.url.scheme == "s3" and "<Code>" not in text and "404" in text:
            raise StoreEndpointError(
                f"{self.url.option('endpoint_url') or 'the S3 endpoint'} answered 404 without "
                f"an S3 error for {key!r}: not an S3 endpoint?",
                endpoint=self.url.option("endpoint_url") or "") from exc

    def _translate(self, exc: BaseException, key: str) -> BlockStoreError:
        """The one place client exceptions become blockstore errors.

        The client's text may echo a URL, a signed query or a credential, so only its
        redacted form (``blockstore/redact.py``) reaches the message; when redaction changed
        it, the client's exception is not chained either (a logged traceback would print
        it). Callers ``raise`` the result inside their ``except``: the chaining is set here.
        """
        if isinstance(exc, BlockStoreError):
            return exc
        raw = str(exc)
        text = redact_text(raw)
        err = self._classify(exc, key, text)
        err.__cause__ = exc if text == raw else None
        err.__suppress_context__ = True
        return err

    def _classify(self, exc: BaseException, key: str, text: str) -> BlockStoreError:
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError
        where = self._where(key)
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or \
                "status code: 403" in text or "AccessDenied" in text:
            return StoreAccessDeniedError(f"access denied to {where} (check credentials and "
                                          f"permissions): {_first_line(text)}", path=where)
        if "status code: 501" in text or "status code: 405" in text:
            return StoreEndpointError(f"{self.url.option('endpoint_url')} does not speak the "
                                      f"{self.url.scheme} API: {_first_line(text)}",
                                      endpoint=self.url.option("endpoint_url") or "")
        if "error sending request" in text or "connection" in text.lower() or \
                "timed out" in text or "dns error" in text.lower():
            return StoreUnreachableError(f"{self.url.option('endpoint_url') or self.url.scheme} "
                                         f"is unreachable for {where} (retries included): "
                                         f"{_first_line(text)}", path=where)
        return StorageIOError(f"object store request for {where} failed: "
                              f"{_first_line(text)}", path=where)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "(no message)"
