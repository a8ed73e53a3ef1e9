"""JSON lines of output records: one record a line, the values ``canonical_json`` gives.

Why not ``canonical_json`` alone: the ``FileSink``'s encoding ran in the last stage of every
pipeline, once per output record, and ``json``'s encoder cost ~2.7 us a record there -
about a sixth of the CPU of the 3-stage engine benchmark (bench/bench_engine.py) on two
cores. orjson (Rust) encodes the same record in ~0.4 us.

The promise is the value, not the encoder: ``json.loads`` of every line gives what it gave
from ``canonical_json`` (sorted keys, no whitespace, 7-bit), and a record either encodes
with both or fails with ``TypeError`` with both. A line orjson writes differently is written
by ``canonical_json`` instead:

* non-ASCII text (orjson writes UTF-8; ``canonical_json`` escapes it): the line must stay
  7-bit;
* ``NaN`` and infinities (orjson writes ``null``, a different value): any line with
  ``null`` in it;
* anything orjson refuses (non-string keys, integers beyond 64 bits, lone surrogates,
  nesting deeper than 254, subclasses of the basic types, dataclasses and dates - passed
  through on purpose, since ``json`` refuses those two).

The one difference left is the spelling of some floats (``1e-7`` for ``1e-07``,
``0.00001`` for ``1e-05``): the same number. Where orjson has its own rule, both encoders
follow it, so a record never encodes one way or the other depending on its other fields: an
enum member is written as its ``value`` (``json`` refuses a plain enum, and writes a str or
int mixin's own content, which a custom ``_value_`` may make differ), a UUID as its string.
An ``orjson.Fragment`` is written as the raw JSON it holds (orjson's meaning, not checked),
unless it holds a line break, which would split the record: refused (``TypeError``), as
``json`` refuses every fragment.
"""

from __future__ import annotations

import enum
import json
import uuid
from typing import Any

try:  # a dependency (pyproject.toml); the slower encoder stays correct without it
    import orjson
except ImportError:  # pragma: no cover - installed with the project
    orjson = None  # type: ignore[assignment]

from ..actors.batches import to_records

__all__ = ["encode_jsonl", "record_line"]


_SLOW = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _as_orjson_sees(value: Any) -> Any:
    """``value`` with enum members and UUIDs (not keys) as orjson writes them."""
    if isinstance(value, enum.Enum):
        return _as_orjson_sees(value.value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _as_orjson_sees(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_orjson_sees(v) for v in value]
    return value


_OPTS = 0 if orjson is None else (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
                                  | orjson.OPT_PASSTHROUGH_DATETIME
                                  | orjson.OPT_PASSTHROUGH_SUBCLASS)


def record_line(record: Any) -> bytes:
    """One record as its JSON line, without the newline (the module docstring's promise).

    Raises ``TypeError`` (``ValueError`` for a circular structure) for a value JSON cannot
    represent, as ``json.dumps`` does.
    """
    if orjson is not None:
        try:
            out = orjson.dumps(record, option=_OPTS)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
        else:
            # a raw line break can only be a Fragment's (JSON escapes them in strings)
            if out.isascii() and b"null" not in out and b"\n" not in out and b"\r" not in out:
                return out
    try:
        plain = _as_orjson_sees(record)
    except RecursionError as exc:  # a circular structure, as json reports it
        raise ValueError("Circular reference detected") from exc
    return _SLOW.encode(plain).encode()


def encode_jsonl(records: Any) -> bytes:
    """``records`` (a list or a table) as JSON lines, one record a line."""
    return b"".join(record_line(r) + b"\n" for r in to_records(records))
