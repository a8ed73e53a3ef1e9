"""Canonical JSON: the one encoding of JSON documents that blockpoint checksums or compares.

Why one function: a document's bytes are checksummed (and, with a key, MACed), compared
between generations and diffed by operators, so every writer must produce the same bytes for
the same value. Sorted keys and compact separators make the encoding independent of dict
order and of the writer; ``ensure_ascii`` (the ``json`` default) keeps it 7-bit.
Used by the slotted documents (:mod:`blockstore.document`), the file store's records,
checkpoint metadata (``stages/checkpoint/format.py``) and the sink's record lines (``stages/pipeline/sink.py``).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json"]

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def canonical_json(obj: Any) -> bytes:
    """``obj`` as UTF-8 JSON with sorted keys and no whitespace.

    Raises ``TypeError`` (or ``ValueError`` for a circular structure) for a value JSON
    cannot represent, as ``json.dumps`` does. ``json.loads`` reads the bytes back; a tuple
    comes back as a list and non-string keys as strings.
    """
    return _ENCODER.encode(obj).encode()
