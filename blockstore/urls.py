"""Store URLs: the one way a store is named, in the API, a ``StageSpec``, the scheduler, the CLI.

Accepted forms::

    /path/to/store   or  file:///path/to/store            FileStore (directory)
    relative/dir                                          FileStore under the working directory
    memory://NAME                                         this process's MemoryStore NAME
    s3://BUCKET[/PREFIX][?endpoint_url=URL&region=R]       S3 or any S3-compatible server
    gs://BUCKET[/PREFIX]                                  Google Cloud Storage
    az://CONTAINER[/PREFIX]?account=ACCOUNT                Azure Blob Storage

Object-store URLs also take ``concurrency`` (parallel requests per store, 1-64, default 8)
and ``retries`` (retries of a failed request, 0-20, default 8). Credentials never appear in
a URL: they come from the backend's usual environment and configuration chain (for S3
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, web identity,
instance metadata; for GCS ``GOOGLE_SERVICE_ACCOUNT`` / application default credentials; for
Azure ``AZURE_STORAGE_ACCOUNT_KEY`` / ``AZURE_CLIENT_ID``...). A URL carrying ``user:pass@``
is refused (a ``:`` and an ``@`` before the query, even when the secret holds ``/``, ``+``,
``@`` or ``%2F``; an ``@`` in ``endpoint_url``; any unknown query key), so a secret never ends
up in a ``StageSpec``, a log line or the registry; and the refusal itself masks every place
of the URL that may hold a secret (``blockstore/redact.py``) in its message, ``url`` and
``part``.

Why parsing lives here, alone: every caller that names a store goes through
``blockstore.open_store``, and a bad URL must fail there, before any backend is touched,
with a :class:`~blockstore.errors.StoreURLError` whose ``part`` says which piece is wrong
(scheme, bucket, prefix, query key, endpoint). Parsing is pure (no I/O, no client import),
so it is tested for every scheme even where no server of that kind is at hand.

Two mistakes used to open a local store in the working directory without a word and are
refused (``part="scheme"`` / ``"path"``): a known scheme missing its ``//`` (``s3:/bucket/x``,
a relative path to ``os.path``) and ``file://relative/dir`` (a host name in a URL; file URLs
take absolute paths, ``file:///abs``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from .errors import StoreURLError
from .redact import redact, scrub

__all__ = ["OBJECT_SCHEMES", "StoreURL", "parse_store_url"]

#: Query keys each object-store scheme accepts.
OBJECT_SCHEMES: dict[str, frozenset[str]] = {
    "s3": frozenset({"endpoint_url", "region", "concurrency", "retries"}),
    "gs": frozenset({"endpoint_url", "concurrency", "retries"}),
    "az": frozenset({"account", "endpoint_url", "concurrency", "retries"}),
}

_BUCKET_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "s3": (re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
           "3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or "
           "digit"),
    "gs": (re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$"),
           "3-63 characters of a-z, 0-9, '.', '_' and '-', starting and ending with a letter "
           "or digit"),
    "az": (re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$"),
           "3-63 characters of a-z, 0-9 and single '-', starting and ending with a letter or "
           "digit"),
}
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9._~=+@,-]+$")
_INT_OPTIONS = {"concurrency": (1, 64), "retries": (0, 20)}


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed, validated store URL.

    Attributes:
        scheme: ``file``, ``memory``, ``s3``, ``gs`` or ``az``.
        location: the directory (``file``), the store name (``memory``), or the bucket /
            container (object stores).
        prefix: object stores: the key prefix every object of the store lives under (no
            leading or trailing ``/``; empty for the bucket root).
        options: object stores: the query options, sorted by key.
    """

    scheme: str
    location: str
    prefix: str = ""
    options: tuple[tuple[str, str], ...] = ()

    @property
    def is_object_store(self) -> bool:
        return self.scheme in OBJECT_SCHEMES

    def option(self, key: str, default: str | None = None) -> str | None:
        """The value of query option ``key``, or ``default``."""
        for k, v in self.options:
            if k == key:
                return v
        return default

    def int_option(self, key: str, default: int) -> int:
        """An integer option (already range-checked by the parser), or ``default``."""
        value = self.option(key)
        return default if value is None else int(value)

    def to_url(self) -> str:
        """The canonical URL: ``parse_store_url(u.to_url()) == u``."""
        if self.scheme == "file":
            # A relative path has no file:// form (file://rel names a host); it stays a path.
            return f"file://{self.location}" if self.location.startswith("/") else self.location
        if self.scheme == "memory":
            return f"memory://{self.location}"
        url = f"{self.scheme}://{self.location}"
        if self.prefix:
            url += "/" + self.prefix
        if self.options:
            url += "?" + "&".join(f"{k}={quote(v, safe='/:')}" for k, v in self.options)
        return url


def _fail(url: str, part: str, why: str) -> StoreURLError:
    """The error for ``url``, with every place of it that may hold a secret masked (in the
    message, ``part`` and ``.url``; ``blockstore/redact.py``), echoed pieces included."""
    safe, spans = redact(url)
    return StoreURLError(f"bad store URL {safe!r}: {scrub(part, spans)}: {scrub(why, spans)}",
                         url=safe, part=scrub(part, spans))


def _has_credentials(scheme: str, head: str) -> bool:
    """Whether the part before the query looks like it carries user information: an ``@``
    after a ``:`` or in the first segment (a secret may hold ``/``, so RFC 3986 parsing
    alone misses it), any ``@`` in an endpoint (``scheme`` not a store's), or, for an object
    store, a ``:`` not followed by a port in the bucket (never valid there)."""
    at = head.rfind("@")
    first = head.split("/", 1)[0]
    return (at >= 0 and (":" in head[:at] or "@" in first or scheme not in OBJECT_SCHEMES)) or \
        (scheme in OBJECT_SCHEMES and ":" in first and not first.partition(":")[2].isdigit())


def parse_store_url(spec: str | os.PathLike[str]) -> StoreURL:
    """Parse and validate a store path or URL; raise ``StoreURLError`` naming the bad part.

    A string without ``://`` is a file-store path, taken as is (it may contain ``?`` or
    ``#``). Nothing is opened or contacted.
    """
    s = os.fspath(spec)
    if not isinstance(s, str):
        raise StoreURLError(f"a store URL must be a string, got {s!r}", url=repr(s),
                            part="type")
    if "://" not in s:
        if not s:
            raise _fail(s, "path", "empty")
        _refuse_mistyped_scheme(s)
        return StoreURL("file", s)
    scheme, rest = s.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        path = rest[len("localhost"):] if rest.startswith("localhost/") else rest
        if not path:
            raise _fail(s, "path", "file:// needs a path, e.g. file:///var/blockpoint")
        if not path.startswith("/"):
            # file://relative/dir names host 'relative' in a URL; taken as a path it would
            # put the store under the working directory of whichever process opens it.
            raise _fail(s, "path", f"file:// takes an absolute path (three slashes: "
                        f"file:///{path}); for a directory relative to the working "
                        f"directory give the path without file://")
        return StoreURL("file", path)
    if scheme == "memory":
        return StoreURL("memory", rest)
    if scheme not in OBJECT_SCHEMES:
        known = ", ".join(["file://", "memory://"] + [f"{k}://" for k in OBJECT_SCHEMES])
        raise _fail(s, "scheme", f"unknown scheme {scheme!r} (known: {known})")
    return _parse_object_url(s, scheme)


_KNOWN_SCHEMES = ("file", "memory", *OBJECT_SCHEMES)


def _refuse_mistyped_scheme(s: str) -> None:
    """Refuse ``s3:/bucket/x``, ``s3:bucket``, ``file:/x``: a known scheme without its
    ``//``, which would otherwise be taken as a relative path (a local store in the working
    directory, silently)."""
    head, sep, rest = s.partition(":")
    if sep and head.lower() in _KNOWN_SCHEMES:
        fixed = f"{head.lower()}://{rest.lstrip('/')}"
        if head.lower() == "file":
            fixed = f"file:///{rest.lstrip('/')}"
        raise _fail(s, "scheme", f"{head}: without '//' is not a store URL (did you mean "
                    f"{fixed!r}?); a directory path must not start with '{head}:'")


def _parse_object_url(s: str, scheme: str) -> StoreURL:
    head = re.split(r"[?#]", s.split("://", 1)[1], maxsplit=1)[0]
    if _has_credentials(scheme, head):
        raise _fail(s, "credentials", "credentials never go in a store URL; set them in the "
                    "environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    parts = urlsplit(s)
    if parts.fragment:
        raise _fail(s, "fragment", f"'#{parts.fragment}' has no meaning in a store URL")
    bucket = parts.netloc
    rule, why = _BUCKET_RULES[scheme]
    if not rule.match(bucket) or ".." in bucket or (scheme == "s3" and _IPV4.match(bucket)):
        what = "container" if scheme == "az" else "bucket"
        raise _fail(s, what, f"{bucket!r} is not a valid name ({why})")
    prefix = parts.path.strip("/")
    if prefix:
        for seg in prefix.split("/"):
            if seg in ("", ".", "..") or not _PREFIX_SEGMENT.match(seg):
                raise _fail(s, "prefix", f"segment {seg!r} of {prefix!r}: use non-empty "
                            "segments of letters, digits and ._~=+@,-")
    options = _parse_query(s, parts.query, scheme)
    if scheme == "az" and "account" not in dict(options) and "endpoint_url" not in dict(options):
        raise _fail(s, "query key 'account'", "az:// needs ?account=STORAGE_ACCOUNT")
    return StoreURL(scheme, bucket, prefix, options)


def _parse_query(s: str, query: str, scheme: str) -> tuple[tuple[str, str], ...]:
    if not query:
        return ()
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise _fail(s, "query", f"{query!r} is not key=value pairs joined by '&'") from None
    seen: dict[str, str] = {}
    allowed = OBJECT_SCHEMES[scheme]
    for key, value in pairs:
        part = f"query key {key!r}"
        if key not in allowed:
            raise _fail(s, part, f"unknown for {scheme}:// (known: {', '.join(sorted(allowed))})")
        if key in seen:
            raise _fail(s, part, "given twice")
        if not value:
            raise _fail(s, part, "empty value")
        seen[key] = _check_option(s, key, value)
    return tuple(sorted(seen.items()))


def _check_option(s: str, key: str, value: str) -> str:
    part = f"query key {key!r}"
    if key == "endpoint_url":
        ep_head = re.split(r"[?#]", value.split("://", 1)[-1], maxsplit=1)[0]
        if _has_credentials("", ep_head):
            raise _fail(s, "endpoint_url", "credentials never go in a store URL")
        ep = urlsplit(value)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise _fail(s, "endpoint_url", f"{value!r} is not an http:// or https:// URL")
        try:
            ep.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise _fail(s, "endpoint_url", f"bad port in {value!r}") from None
        if ep.query or ep.fragment:
            raise _fail(s, "endpoint_url", f"{value!r} must not carry a query or fragment")
        return value.rstrip("/")
    if key == "region" and not _REGION.match(value):
        raise _fail(s, part, f"{value!r} is not a region name (e.g. us-east-1)")
    if key == "account" and not _ACCOUNT.match(value):
        raise _fail(s, part, f"{value!r} is not a storage account name (3-24 of a-z, 0-9)")
    if key in _INT_OPTIONS:
        lo, hi = _INT_OPTIONS[key]
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise _fail(s, part, f"{value!r} is not an integer in [{lo}, {hi}]")
        return str(int(value))
    return value
