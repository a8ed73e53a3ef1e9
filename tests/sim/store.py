"""An in-process object store with S3 semantics, driven one request at a time.

The simulated bucket holds objects (bytes, an etag, a ``Last-Modified`` stamp from the
simulator's virtual clock). Requests come in through a :class:`SimConnection` per client,
which has the four methods of an obstore store that
:class:`blockstore.objectclient.ObjectClient` calls (``get``, ``put`` with
``mode="overwrite" | "create" | {"e_tag": ...}``, ``list`` by pages, ``delete``), and raises
what obstore raises: ``FileNotFoundError`` for a missing object,
``AlreadyExistsError`` when ``If-None-Match: *`` fails, ``PreconditionError`` when
``If-Match`` fails, ``GenericError`` ("timed out") when a request failed for good. Each
request is handed to the scheduler (:mod:`.scheduler`), which decides when it is applied and
with which fault; :meth:`SimBucket.apply` applies it.

Every state of the bucket is kept (a version per mutation), so a read can be served from the
state at the time it arrived - a reply that travelled slowly - and a listing from a state
older than the newest writes, page by page (pages of ``PAGE`` keys, continued after the last
key, like ``ListObjectsV2``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from obstore.exceptions import AlreadyExistsError, GenericError, PreconditionError

__all__ = ["PAGE", "Request", "SimBucket", "SimConnection", "SimObject"]

#: Keys per listing page: small, so that listings of a few dozen objects take several pages.
PAGE = 3


@dataclass(frozen=True)
class SimObject:
    data: bytes
    etag: str
    mtime: float

    def meta(self, key: str) -> dict[str, Any]:
        return {"path": key, "size": len(self.data), "e_tag": self.etag, "version": None,
                "last_modified": datetime.datetime.fromtimestamp(int(self.mtime),
                                                                 datetime.timezone.utc)}


@dataclass
class Request:
    """One request of one client: what the scheduler holds while it decides."""

    op: str  # GET, PUT, LIST, DELETE, PAUSE
    key: str  # the key, the listing prefix, or the first key deleted
    args: dict[str, Any] = field(default_factory=dict)
    client: str = ""
    arrival: int = 0  # bucket version when the request arrived
    tries: int = 0  # times it was applied already (a retried request)
    outcome: tuple[str, Any] | None = None

    def describe(self) -> str:
        extra = ""
        if self.op == "PUT":
            mode = self.args["mode"]
            extra = f" {mode if isinstance(mode, str) else 'if-match'}"
        elif self.op == "DELETE":
            extra = f" x{len(self.args['keys'])}" if len(self.args["keys"]) > 1 else ""
        elif self.op == "LIST":
            extra = f" after {self.args['after']!r}" if self.args["after"] else ""
        return f"{self.op} {self.key}{extra}"


class _Result:
    """What ``obstore.get`` returns: ``bytes()`` and ``meta``."""

    def __init__(self, obj: SimObject, key: str) -> None:
        self._data = obj.data
        self.meta = obj.meta(key)

    def bytes(self) -> bytes:
        return self._data


class SimBucket:
    """The bucket's objects, every past state, and the rules of each request."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.objects: dict[str, SimObject] = {}
        self.history: list[dict[str, SimObject]] = [{}]
        self._etags = 0
        #: Called before a mutation is applied: (request, key, old object, new object).
        self.watchers: list[Callable[[Request, str, SimObject | None, SimObject | None],
                                     None]] = []

    @property
    def version(self) -> int:
        return len(self.history) - 1

    def _set(self, req: Request, key: str, obj: SimObject | None) -> None:
        old = self.objects.get(key)
        for w in self.watchers:
            w(req, key, old, obj)
        if obj is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.history.append(dict(self.objects))

    def put_direct(self, key: str, data: bytes) -> None:
        """Set up the bucket before a run (no client, no scheduling)."""
        self._set(Request("PUT", key, {"mode": "overwrite"}, client="setup"), key,
                  self._new(data))

    def _new(self, data: bytes) -> SimObject:
        self._etags += 1
        return SimObject(bytes(data), f'"{self._etags}"', self._now())

    def apply(self, req: Request, stale: bool) -> tuple[str, Any]:
        """Apply ``req`` now (reads from the state it arrived at when ``stale``); returns
        ``("ok", value)`` or ``("raise", exception)``."""
        state = self.history[req.arrival] if stale and req.op in ("GET", "LIST") \
            else self.objects
        if req.op == "PAUSE":
            return "ok", None
        if req.op == "GET":
            obj = state.get(req.key)
            if obj is None:
                return "raise", FileNotFoundError(
                    f"Object at location {req.key} not found: <Code>NoSuchKey</Code>")
            return "ok", _Result(obj, req.key)
        if req.op == "LIST":
            after, prefix = req.args["after"], req.key
            keys = sorted(k for k in state if k.startswith(prefix) and k > after)
            page = [state[k].meta(k) for k in keys[:PAGE]]
            return "ok", (page, len(keys) > PAGE)
        if req.op == "DELETE":
            for key in req.args["keys"]:
                if key in self.objects:
                    self._set(req, key, None)
            return "ok", None
        assert req.op == "PUT", req.op
        mode, key, old = req.args["mode"], req.key, self.objects.get(req.key)
        if mode == "create" and old is not None:
            return "raise", AlreadyExistsError(f"Object at location {key} already exists")
        if isinstance(mode, dict):
            if old is None:
                return "raise", FileNotFoundError(
                    f"Object at location {key} not found: <Code>NoSuchKey</Code>")
            if old.etag != mode["e_tag"]:
                return "raise", PreconditionError(
                    f"Request precondition failure for path {key}: {old.etag} does not "
                    f"match {mode['e_tag']}")
        obj = self._new(req.args["data"])
        self._set(req, key, obj)
        return "ok", {"e_tag": obj.etag, "version": None}


def timed_out(req: Request) -> GenericError:
    """What obstore raises when it gave up on a request (the client reports it unreachable)."""
    return GenericError(f"Generic S3 error: error sending request for {req.key}: operation "
                        "timed out")


class _Listing:
    """``obstore.list``'s iterator of pages; each page is one request."""

    def __init__(self, conn: SimConnection, prefix: str) -> None:
        self._conn, self._prefix, self._after, self._done = conn, prefix, "", False

    def __iter__(self) -> _Listing:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        if self._done:
            raise StopIteration
        page, more = self._conn.world.request(
            self._conn, Request("LIST", self._prefix, {"after": self._after}))
        self._done = not more
        if page:
            self._after = page[-1]["path"]
        return page


class SimConnection:
    """One client's connection: what it passes to ``ObjectClient`` as its store, with the
    methods of an obstore store (``get``, ``put``, ``list``, ``delete``)."""

    def __init__(self, world: Any, client: str) -> None:
        self.world = world
        self.client = client

    def __repr__(self) -> str:
        return f"SimConnection({self.client!r})"

    def get(self, key: str) -> _Result:
        return self.world.request(self, Request("GET", key))

    def put(self, key: str, data: Any, *, mode: Any = "overwrite",
            use_multipart: bool = False) -> dict[str, Any]:
        return self.world.request(self, Request("PUT", key, {"data": bytes(data),
                                                             "mode": mode}))

    def list(self, prefix: str, chunk_size: int = 1000) -> _Listing:
        return _Listing(self, prefix)

    def delete(self, paths: str | list[str]) -> None:
        keys = [paths] if isinstance(paths, str) else list(paths)
        self.world.request(self, Request("DELETE", keys[0], {"keys": keys}))

    def delete_once(self, key: str) -> None:
        """A DELETE the client never resends (ObjectClient.delete_once): the scheduler turns
        its lost reply or drop into the client giving up."""
        self.world.request(self, Request("DELETE", key, {"keys": [key], "once": True}))
