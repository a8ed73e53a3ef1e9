"""Ordering requests of one ObjectStore against another, on the real loopback S3 server.

:class:`HookedStore` wraps the obstore store an :class:`~blockstore.objectclient.ObjectClient`
sends through. Every request still goes to the real server (tests/s3server.py); the wrapper
only runs a test's function before or after a chosen request, so an interleaving of two
store objects (a gc listing, then another process's flush, then the gc's delete) happens in
exactly the order the test names. ``lose_reply`` emulates a request whose reply was lost and
that the client retried: the request is sent and applied, the function runs, the request is
sent again and the second answer is returned (what obstore's own retry does after a timeout).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blockstore import ObjectStore
from blockstore.objectclient import ObjectClient, _build_store
from blockstore.urls import parse_store_url

Match = Callable[[str, str], bool]  # (method, key) -> whether the hook applies


@dataclass
class _Hook:
    when: str  # "before", "after" or "lose_reply"
    match: Match
    fn: Callable[[], None]
    times: int


class HookedStore:
    """A pass-through obstore-like store running hooks at chosen requests."""

    def __init__(self, inner: Any, inner_once: Any | None = None) -> None:
        self.inner = inner
        self.inner_once = inner_once  # the same server through a client that never retries
        self.log: list[tuple[str, str]] = []
        self._hooks: list[_Hook] = []
        self._lock = threading.Lock()

    def on(self, when: str, match: Match, fn: Callable[[], None], times: int = 1) -> None:
        """Run ``fn`` ``when`` ("before"/"after"/"lose_reply") the next ``times`` matching
        requests."""
        assert when in ("before", "after", "lose_reply")
        with self._lock:
            self._hooks.append(_Hook(when, match, fn, times))

    def _take(self, when: str, method: str, key: str) -> list[_Hook]:
        with self._lock:
            out = [h for h in self._hooks if h.when == when and h.match(method, key)]
            for h in out:
                h.times -= 1
            self._hooks = [h for h in self._hooks if h.times > 0]
        return out

    def _around(self, method: str, key: str, send: Callable[[], Any]) -> Any:
        with self._lock:
            self.log.append((method, key))
        for h in self._take("before", method, key):
            h.fn()
        lost = self._take("lose_reply", method, key)
        if lost:
            try:
                send()  # applied by the server; its answer never reaches the client
            except Exception:  # noqa: BLE001 - a lost answer is lost whatever it was
                pass
            for h in lost:
                h.fn()
        res = send()
        for h in self._take("after", method, key):
            h.fn()
        return res

    def get(self, key: str, **kw: Any) -> Any:
        return self._around("GET", key, lambda: self.inner.get(key, **kw))

    def put(self, key: str, data: Any, **kw: Any) -> Any:
        return self._around("PUT", key, lambda: self.inner.put(key, data, **kw))

    def list(self, prefix: str | None = None, **kw: Any) -> Any:
        pages = self._around("LIST", prefix or "", lambda: list(self.inner.list(prefix, **kw)))
        return iter(pages)

    def delete_once(self, key: str) -> Any:
        """ObjectClient.delete_once: one DELETE never resent. ``lose_reply`` here sends it,
        runs the hook and then fails as the client giving up (there is no second send)."""
        with self._lock:
            self.log.append(("DELETE", key))
        for h in self._take("before", "DELETE", key):
            h.fn()
        lost = self._take("lose_reply", "DELETE", key)
        res = self.inner_once.delete(key)
        for h in lost:
            h.fn()
        if lost:
            raise TimeoutError(f"reply to DELETE {key} lost (test)")
        for h in self._take("after", "DELETE", key):
            h.fn()
        return res

    def delete(self, paths: Any) -> Any:
        keys = [paths] if isinstance(paths, str) else list(paths)
        return self._around("DELETE", ",".join(keys), lambda: self.inner.delete(paths))


def hooked(url: str) -> tuple[ObjectStore, HookedStore]:
    """A store object on ``url`` whose requests pass through a :class:`HookedStore`."""
    u = parse_store_url(url)
    hs = HookedStore(_build_store(u, u.int_option("retries", 8)), _build_store(u, 0))
    return ObjectStore(u, client=ObjectClient(u, store=hs)), hs


def req(method: str, key_part: str) -> Match:
    """Match requests of ``method`` whose key (or prefix) contains ``key_part``."""
    return lambda m, k: m == method and key_part in k
