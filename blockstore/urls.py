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
up in a ``StageSpec``, a log line or the registry. The refusal itself shows the URL built
only from parts proven harmless - a known scheme, a valid bucket name, the path of a URL
without user information, the names of query keys, the values of ``region`` / ``account``
/ ``concurrency`` / ``retries`` that pass their rules, an ``endpoint_url`` that parses
cleanly as ``http(s)://HOST[:PORT][/PATH]`` - and ``***`` for everything else; its message
echoes no value that failed a rule, and what ``blockstore/redact.py`` would mask is scrubbed
from the message, ``url`` and ``part`` on top of that. So a secret in a place the parser
cannot even read (``http:/user:pass@h``, a password holding ``&``, ``#`` or ``?``, an
endpoint encoded twice) is not shown either.

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
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

from .errors import StoreURLError
from .redact import MASK, redact, scrub

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
#: What a refused URL may show (``_shown``): a name, a scheme, a query key, an endpoint host.
_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,63}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,15}$")
_QUERY_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$|^\[[0-9A-Fa-f:.]{2,45}\]$")


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
    """The error for ``url``: the URL as :func:`_shown` builds it (harmless parts only);
    ``part`` and ``why`` are written by the callers from harmless parts too, and whatever
    ``blockstore/redact.py`` masks in ``url`` is scrubbed from all three as a second line."""
    spans = redact(url)[1]
    safe = scrub(_shown(url), spans)
    return StoreURLError(f"bad store URL {safe!r}: {scrub(part, spans)}: {scrub(why, spans)}",
                         url=safe, part=scrub(part, spans))


def _shown(s: str) -> str:
    """``s`` rebuilt from the parts proven harmless, ``***`` for every other part: never a
    raw piece that failed to parse (module docstring)."""
    if "://" not in s:
        head, sep, rest = s.partition(":")
        if sep and head.lower() in _KNOWN_SCHEMES:  # a mistyped scheme: shown if its fix is
            fixed = _mistyped_fix(head, rest)
            return s if _shown(fixed) == fixed else f"{head}:{MASK}"
        return s  # a path
    scheme, rest = s.split("://", 1)
    low = scheme.lower()
    shown_scheme = scheme if low in _KNOWN_SCHEMES or _SCHEME.match(scheme) else MASK
    if low in ("file", "memory"):
        return f"{shown_scheme}://{_shown_path(rest)}"
    head, hmark, _ = rest.partition("#")
    head, qmark, query = head.partition("?")
    if _has_credentials(low, head):
        out = MASK
    else:
        bucket, slash, path = head.partition("/")
        out = (bucket if _NAME.match(bucket) else MASK) + slash + path
    if qmark:
        out += "?" + "&".join(_shown_query_item(item) for item in query.split("&"))
    if hmark:
        out += "#" + MASK
    return f"{shown_scheme}://{out}"


def _shown_path(path: str) -> str:
    """A path of ``file://`` / ``memory://``: shown unless it could hold user information."""
    return path if "@" not in path and ":" not in path else MASK


def _shown_query_item(item: str) -> str:
    key, eq, value = item.partition("=")
    key, value = unquote_plus(key), unquote_plus(value)
    if not eq or not _QUERY_KEY.match(key):
        return MASK if item else ""
    if not value:
        return f"{key}="
    rule = {"region": _REGION, "account": _ACCOUNT}.get(key)
    if rule is not None:
        ok = bool(rule.match(value))
    elif key in _INT_OPTIONS:
        ok = value.isdigit() and len(value) <= 6
    else:
        ok = key == "endpoint_url" and _clean_endpoint(value)
    return f"{key}={value if ok else MASK}"


def _clean_endpoint(value: str) -> bool:
    """Whether ``value`` is exactly ``http(s)://HOST[:PORT][/PATH]`` with a plain host, a
    numeric port and plain path segments (nothing that could be user information)."""
    try:
        ep = urlsplit(value)
        port = ep.port
    except ValueError:
        return False
    host = ep.netloc.rsplit(":", 1)[0] if port is not None else ep.netloc
    rebuilt = f"{ep.scheme}://{host}" + (f":{port}" if port is not None else "") + ep.path
    return (ep.scheme in ("http", "https") and bool(_HOST.match(host)) and rebuilt == value
            and all(seg == "" or _NAME.match(seg) for seg in ep.path.split("/")))


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
                        f"file:///{_shown_path(path)}); for a directory relative to the working "
                        f"directory give the path without file://")
        return StoreURL("file", path)
    if scheme == "memory":
        return StoreURL("memory", rest)
    if scheme not in OBJECT_SCHEMES:
        known = ", ".join(["file://", "memory://"] + [f"{k}://" for k in OBJECT_SCHEMES])
        shown = scheme if _SCHEME.match(scheme) else MASK
        raise _fail(s, "scheme", f"unknown scheme {shown!r} (known: {known})")
    return _parse_object_url(s, scheme)


_KNOWN_SCHEMES = ("file", "memory", *OBJECT_SCHEMES)


def _refuse_mistyped_scheme(s: str) -> None:
    """Refuse ``s3:/bucket/x``, ``s3:bucket``, ``file:/x``: a known scheme without its
    ``//``, which would otherwise be taken as a relative path (a local store in the working
    directory, silently)."""
    head, sep, rest = s.partition(":")
    if sep and head.lower() in _KNOWN_SCHEMES:
        fixed = _shown(_mistyped_fix(head, rest))
        raise _fail(s, "scheme", f"{head}: without '//' is not a store URL (did you mean "
                    f"{fixed!r}?); a directory path must not start with '{head}:'")


def _mistyped_fix(head: str, rest: str) -> str:
    """What ``HEAD:REST`` (a known scheme without its ``//``) most likely meant."""
    if head.lower() == "file":
        return f"file:///{rest.lstrip('/')}"
    return f"{head.lower()}://{rest.lstrip('/')}"


def _parse_object_url(s: str, scheme: str) -> StoreURL:
    head = re.split(r"[?#]", s.split("://", 1)[1], maxsplit=1)[0]
    if _has_credentials(scheme, head):
        raise _fail(s, "credentials", "credentials never go in a store URL; set them in the "
                    "environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    parts = urlsplit(s)
    if parts.fragment:
        raise _fail(s, "fragment", "a fragment ('#...') has no meaning in a store URL")
    bucket = parts.netloc
    rule, why = _BUCKET_RULES[scheme]
    if not rule.match(bucket) or ".." in bucket or (scheme == "s3" and _IPV4.match(bucket)):
        what = "container" if scheme == "az" else "bucket"
        shown = repr(bucket) if _NAME.match(bucket) else f"the {what}"
        raise _fail(s, what, f"{shown} is not a valid name ({why})")
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
        raise _fail(s, "query", "the query is not key=value pairs joined by '&'") from None
    seen: dict[str, str] = {}
    allowed = OBJECT_SCHEMES[scheme]
    for key, value in pairs:
        part = f"query key {key if _QUERY_KEY.match(key) else MASK!r}"
        if key not in allowed:
            raise _fail(s, part, f"unknown for {scheme}:// (known: {', '.join(sorted(allowed))})")
        if key in seen:
            raise _fail(s, part, "given twice")
        if not value:
            raise _fail(s, part, "empty value")
        seen[key] = _check_option(s, key, value)
    return tuple(sorted(seen.items()))


def _check_option(s: str, key: str, value: str) -> str:
    """``value`` of the known option ``key``, checked; a refusal echoes no part of it."""
    part = f"query key {key!r}"
    if key == "endpoint_url":
        ep_head = re.split(r"[?#]", value.split("://", 1)[-1], maxsplit=1)[0]
        if _has_credentials("", ep_head):
            raise _fail(s, "endpoint_url", "credentials never go in a store URL")
        ep = urlsplit(value)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise _fail(s, "endpoint_url", "not an http:// or https:// URL")
        try:
            ep.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise _fail(s, "endpoint_url", "bad port") from None
        if ep.query or ep.fragment:
            raise _fail(s, "endpoint_url", "must not carry a query or fragment")
        return value.rstrip("/")
    if key == "region" and not _REGION.match(value):
        raise _fail(s, part, "not a region name (e.g. us-east-1)")
    if key == "account" and not _ACCOUNT.match(value):
        raise _fail(s, part, "not a storage account name (3-24 of a-z, 0-9)")
    if key in _INT_OPTIONS:
        lo, hi = _INT_OPTIONS[key]
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise _fail(s, part, f"not an integer in [{lo}, {hi}]")
        return str(int(value))
    return value
