"""Redaction: the one place where text that may carry a secret is made safe to show.

Every error message, log line and ``repr`` that names a store URL, an endpoint or a client's
own error text goes through here: :class:`~blockstore.errors.StoreURLError` (built by
``blockstore/urls.py``), the object client's error translation (``blockstore/objectclient.py``),
and the reprs of stores, stage specs and ``@checkpointed`` configurations. A secret never
*belongs* in those places - store URLs refuse credentials, keys come from the environment -
but a user who pastes ``s3://AKIA...:abc/def@bucket`` must get an error that points at the
mistake without repeating the secret, in its message, its ``.url``, its pickle, or a log.

Why structural, not a pattern for "secret-looking" strings: a secret has no shape (AWS
secret keys contain ``/`` and ``+``, passwords contain ``@`` and ``%2F``), so the rules say
which *places* of a URL may hold one and mask those places whole:

* the user information: everything between ``://`` and the last ``@`` before the query,
  when that span has a ``:`` or its first path segment has an ``@``, and always for a URL
  that is not a store's (an endpoint, a client's request; RFC 3986 forbids ``/``
  in user information, so a secret with ``/`` in it reads as host, port and path; the rule
  still masks it whole). An object-store URL (``s3``, ``gs``, ``az``) whose first segment
  has a ``:`` (a bucket never does) is masked up to the first ``/``;
* query values: kept only for the options known to carry no secret (``region``,
  ``concurrency``, ``retries``, ``account``; ``endpoint_url`` is redacted in turn); every
  other value is masked, and a key that is not a plain identifier is masked with it;
* a fragment: masked.

:func:`redact` also returns what it masked, so a message that echoes a piece of the URL
(a bucket "name" that was really ``KEY:SECRET``) is scrubbed by :func:`scrub`.
:func:`redact_text` handles free text (a client's exception): every URL in it is redacted,
and the values of the credential variables of the environment (AWS, Azure, GCS, the
checkpoint keys of ``blockstore/keys.py``) and the secrets this process reads from files (the
checkpoint key file, the AWS shared credentials file) are masked wherever they appear.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = ["MASK", "SECRET_ENV", "redact", "redact_address", "redact_ray_address",
           "redact_text", "redact_url", "scrub"]

#: What a masked span is replaced with.
MASK = "***"

#: Environment variables whose values are secrets (masked wherever they appear in a text).
#: Every credential variable the object-store client (obstore 0.12: its AWS, Azure and GCS
#: configuration keys) reads, and the checkpoint keys.
SECRET_ENV: tuple[str, ...] = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_TOKEN",
    "AWS_SSE_CUSTOMER_KEY_BASE64",
    "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY", "AZURE_STORAGE_CLIENT_SECRET", "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET",
    "AZURE_FABRIC_SESSION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_BEARER_TOKEN",
    "BLOCKPOINT_CHECKPOINT_KEY", "BLOCKPOINT_CHECKPOINT_OLD_KEYS",
)

_SAFE_OPTIONS = frozenset({"region", "concurrency", "retries", "account"})
_OBJECT_SCHEMES = frozenset({"s3", "gs", "az"})
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}://[^\s'\"<>]+")
_CREDENTIAL_PARAM = re.compile(
    r"(?i)\b(signature|credential|x-amz-security-token|security-token|token|sig|secret|"
    r"password|access_key|secret_access_key|sas)=[^&\s,;'\"<>]+")


def redact(url: str) -> tuple[str, tuple[str, ...]]:
    """``(url with every secret-capable place masked, the masked spans)``.

    A string without ``://`` (a path) is returned as is. The spans are given as written
    and percent-decoded, longest first, for :func:`scrub`.
    """
    if "://" not in url:
        return url, ()
    masked: list[str] = []
    scheme, rest = url.split("://", 1)
    ends = [i for i in (rest.find("?"), rest.find("#")) if i >= 0]
    cut = min(ends, default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    out = f"{scheme}://{_redact_head(scheme.lower(), head, masked)}"
    if tail.startswith("?"):
        query, hmark, fragment = tail[1:].partition("#")
        out += "?" + _redact_query(query, masked)
        tail = hmark + fragment
    if tail:  # a fragment
        masked.append(tail[1:])
        out += "#" + MASK
    return out, _spans(masked)


def redact_address(address: str) -> tuple[str, tuple[str, ...]]:
    """``(the Ray address as it may be shown, the spans masked)``: user information (a
    password or token, ``https://user:token@host`` behind an authenticating proxy, or
    ``user:pw@host:port``) and query values are masked by :func:`redact`,
    as in a store URL; an address without a scheme is read as if it had one.

    Everything before the last ``@`` is user information here, even a ``?`` or ``#`` in it
    (a Ray address is no strict URL: a password is rarely percent-encoded), and the
    password after its ``:`` is a span of its own (a message may quote it alone:
    ``pw@host``)."""
    scheme, rest = address.split("://", 1) if "://" in address else ("ray", address)
    extra: list[str] = []
    at = rest.rfind("@")
    if at >= 0:
        user = rest[:at]
        extra += [user, user.partition(":")[2]]
        rest = MASK + rest[at:]
    shown, spans = redact(f"{scheme}://{rest}")
    if "://" not in address:
        shown = shown.removeprefix("ray://")
    return shown, _spans([s for s in (*spans, *extra) if s != MASK])


def redact_ray_address(address: str) -> tuple[str, tuple[str, ...]]:
    """:func:`redact_address` for an address given to ``ray.init``: ``"auto"`` is shown as
    ``auto ($RAY_ADDRESS=<it, redacted>)``, and the spans of ``$RAY_ADDRESS`` are masked
    whatever the address (Ray's own messages may quote it)."""
    shown, spans = redact_address(address)
    env = os.environ.get("RAY_ADDRESS", "")
    if env:
        env_shown, env_spans = redact_address(env)
        spans = (*spans, *env_spans)
        if address in ("auto", ""):
            shown = f"auto ($RAY_ADDRESS={env_shown})"
    return shown, spans


def redact_url(url: str) -> str:
    """The URL with user information, unknown query values and any fragment masked."""
    return redact(url)[0]


def scrub(text: str, spans: Iterable[str]) -> str:
    """``text`` with every occurrence of each span (as a whole token, not inside a longer
    run of letters and digits) replaced by :data:`MASK`."""
    for span in sorted({s for s in spans if s}, key=len, reverse=True):
        # whole tokens only, so a short span ("frag") leaves the words around it alone
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(span)}(?![A-Za-z0-9])", MASK, text)
    return text


def redact_text(text: str, extra: Iterable[str] = ()) -> str:
    """Free text (a client's error) made safe: URLs redacted, credential-looking query
    parameters masked, and the values of :data:`SECRET_ENV` and ``extra`` masked."""
    spans: list[str] = [*extra, *_file_secrets()]
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if value:
            # As written and as used: keys are stripped of surrounding whitespace
            # (blockstore/keys.py), so the key in use is the stripped value.
            spans.extend((value, value.strip()))
            if name.endswith("OLD_KEYS"):
                spans.extend(part for k in value.split(",") for part in (k, k.strip()))

    def one(m: re.Match[str]) -> str:
        safe, found = redact(m.group(0))
        spans.extend(found)
        return safe

    text = _URL_IN_TEXT.sub(one, scrub(text, _spans(spans)))
    text = _CREDENTIAL_PARAM.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return scrub(text, _spans(spans))


def _redact_head(scheme: str, head: str, masked: list[str]) -> str:
    first = head.split("/", 1)[0]
    at = head.rfind("@")
    if at >= 0 and (":" in head[:at] or "@" in first or scheme not in _OBJECT_SCHEMES):
        masked.append(head[:at])
        return MASK + head[at:]
    if scheme in _OBJECT_SCHEMES and ":" in first and not first.partition(":")[2].isdigit():
        masked.append(first)
        return MASK + head[len(first):]
    return head


def _redact_query(query: str, masked: list[str]) -> str:
    parts = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if not eq:
            if item:
                masked.append(item)
            parts.append(MASK if item else "")
        elif key in _SAFE_OPTIONS:
            parts.append(item)
        elif key == "endpoint_url":
            safe, found = redact(unquote(value))
            masked.extend(found + redact(value)[1])
            parts.append(f"{key}={safe}")
        elif _PLAIN_KEY.match(key):
            if value:
                masked.append(value)
            parts.append(f"{key}={MASK}")
        else:
            masked.extend((item, key, value))
            parts.append(MASK)
    return "&".join(parts)


def _file_secrets() -> list[str]:
    """The secrets this process reads from files: the keys of the checkpoint key file
    (``$BLOCKPOINT_CHECKPOINT_KEY_FILE``) and the secret and token of the AWS shared
    credentials file's profile (``blockstore/credentials.py``). A file that cannot be read
    gives nothing (its own error says so where it is used); never raises."""
    from .credentials import s3_credential_provider
    from .keys import KEY_FILE_ENV, read_key_file

    out: list[str] = []
    path = os.environ.get(KEY_FILE_ENV, "")
    if path:
        if not os.path.isfile(path):
            out.append(path)  # not a file: perhaps the key itself, pasted in the variable
        # redaction must never fail the message it guards: an unreadable file gives nothing
        with contextlib.suppress(Exception):
            out.extend(k.decode() for k in read_key_file(path).all)
    try:
        provider = s3_credential_provider()
        creds = provider.read() if provider is not None else None
    except Exception:  # noqa: BLE001 - as above
        creds = None
    if creds:
        out.extend(v for k, v in creds.items() if k != "access_key_id")
    return out


def _spans(spans: Iterable[str]) -> tuple[str, ...]:
    out = set()
    for s in spans:
        if s:
            out.add(s)
            out.add(unquote(s))
            out.add(unquote(s.replace("+", " ")))
    for s in list(out):
        out.add(repr(s)[1:-1])  # as a message's {value!r} shows it
    out.discard("")
    return tuple(sorted(out, key=len, reverse=True))
