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
``0.00001`` for ``1e-05``): the same number. orjson writes enums and UUIDs, which ``json`` refuses; the
fallback's encoder writes them the same way (an enum as its value, a UUID as its string),
so such a record does not encode or fail depending on its other fields.
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


class _Encoder(json.JSONEncoder):
    """``canonical_json``'s encoder, writing enums and UUIDs as orjson does."""

    def default(self, o: Any) -> Any:
        if isinstance(o, enum.Enum):
            return o.value
        if isinstance(o, uuid.UUID):
            return str(o)
        return super().default(o)


_SLOW = _Encoder(sort_keys=True, separators=(",", ":"))
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
            if out.isascii() and b"null" not in out:
                return out
    return _SLOW.encode(record).encode()


def encode_jsonl(records: Any) -> bytes:
    """``records`` (a list or a table) as JSON lines, one record a line."""
    return b"".join(record_line(r) + b"\n" for r in to_records(records))
