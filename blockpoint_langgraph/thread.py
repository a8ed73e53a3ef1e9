"""The thread document: one LangGraph thread's checkpoints, blobs and pending writes as JSON.

Why one JSON document per thread: a thread has one writer at a time (its lease, see
``blockpoint_langgraph/ownership.py``), and every change LangGraph makes - a checkpoint, a
task's writes, a prune - must become visible all at once or not at all. A
:class:`blockstore.document.SlottedDocument` gives exactly that (a crash at any point of a
save leaves the previous document), so the saver keeps the whole thread in one and this
module only says what the document holds and how each change rewrites it. Pure functions
over plain dicts: no I/O here, no store, no LangGraph serializer state.

Layout (all JSON; ``pair`` = ``[serde type, base64 bytes]`` from ``serde.dumps_typed``)::

    {"v": 2, "thread_id": str,
     "log": {"first": block, "blocks": n, "seq": s},     # version 2 only (storage.py)
     "ns": {checkpoint_ns: {
         "checkpoints": {checkpoint_id: {"checkpoint": pair (without channel_values),
                                         "metadata": pair, "parent": id | null,
                                         "run_id": str | null,
                                         "refs": [[channel, version key], ...]}},
         "blobs": {channel: {version key: pair | null}},   # null: the channel is empty
         "writes": {checkpoint_id: {write key: [task_id, idx, channel, pair, task_path]}}}}}

Channel values are stored once per (channel, version), as LangGraph's own savers do, so a
checkpoint that changes one channel adds one blob. ``refs`` lists the blobs a checkpoint
reads, so :func:`collect` drops unreferenced blobs (and the writes of dropped checkpoints)
without deserializing anything: storage stays bounded by the retained checkpoints.

Layout 2 (``docs/FORMAT.md`` 5.4) keeps this document as a snapshot and appends the
changes of ``put`` and ``put_writes`` to the lease's log as operations (:func:`apply`):
``{"op": "put", "ns", "id", "entry", "blobs", "retention"}`` and
``{"op": "writes", "ns", "id", "rows": [[write key, row, overwrite], ...]}``. A reader
rebuilds the thread by applying them, in order, to the snapshot with the very functions
the writer applied them with, so both hold the same document. Layout 1 documents (``"v":
1``, no ``log``) have the same fields and are still read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

from blockstore.canonical import canonical_json

__all__ = [
    "DOC_VERSION",
    "LAYOUT_VERSION",
    "add_checkpoint",
    "add_writes",
    "apply",
    "collect",
    "drop_runs",
    "keep_newest",
    "merge",
    "new_document",
    "pack",
    "unpack",
    "version_key",
    "write_key",
]

#: The kind version in the slot header (``docs/FORMAT.md`` 5.3): the fields below.
DOC_VERSION = 1
#: The layout, the document's ``"v"``: 2 = a snapshot followed by its log (5.4); 1 = the
#: whole thread in the document, rewritten per change (still read; its first change
#: saves a layout 2 snapshot).
LAYOUT_VERSION = 2
Pair = list[str]  # [serde type, base64 payload]


def pack(typed: tuple[str, bytes]) -> Pair:
    """A ``serde.dumps_typed`` result as a JSON-able pair."""
    kind, data = typed
    return [kind, base64.b64encode(data).decode("ascii")]


def unpack(pair: Pair) -> tuple[str, bytes]:
    """The inverse of :func:`pack`, ready for ``serde.loads_typed``."""
    # base64.b64decode(str) without its argument conversion: the same non-strict decoding.
    return pair[0], binascii.a2b_base64(pair[1])


def version_key(version: object) -> str:
    """The JSON key of a channel version (int, float or str), distinct per type and value."""
    # The common versions without the encoder, to the same text (get_tuple runs this per
    # channel): an int is its decimal digits; a printable ASCII string without quotes or
    # backslashes is itself in quotes.
    if type(version) is int:
        return str(version)
    if type(version) is str and version.isascii() and version.isprintable() and \
            '"' not in version and "\\" not in version:
        return f'"{version}"'
    return canonical_json(version).decode("ascii")


def write_key(task_id: str, idx: int) -> str:
    """The key of one pending write: unique per (task, index), as LangGraph requires."""
    return canonical_json([task_id, idx]).decode("ascii")


def new_document(thread_id: str) -> dict[str, Any]:
    """An empty thread document."""
    return {"v": LAYOUT_VERSION, "thread_id": thread_id, "ns": {}}


def _ns(doc: dict[str, Any], ns: str) -> dict[str, Any]:
    return doc["ns"].setdefault(ns, {"checkpoints": {}, "blobs": {}, "writes": {}})


def add_checkpoint(doc: dict[str, Any], ns: str, checkpoint_id: str, entry: dict[str, Any],
                   blobs: Mapping[str, Mapping[str, Pair | None]],
                   retention: int | None) -> None:
    """Add one checkpoint (and the blobs it introduces), then apply retention to ``ns``.

    ``retention`` keeps the newest N checkpoints of the namespace (ids sort by time, being
    uuid6); ``None`` keeps every one.
    """
    space = _ns(doc, ns)
    space["checkpoints"][checkpoint_id] = entry
    for channel, versions in blobs.items():
        space["blobs"].setdefault(channel, {}).update(versions)
    if retention is not None:
        keep_newest(space, retention)  # collects
    else:
        collect(space)


def add_writes(doc: dict[str, Any], ns: str, checkpoint_id: str,
               rows: Iterable[tuple[str, list[Any], bool]]) -> bool:
    """Add pending writes ``(key, row, overwrite)``; return whether anything changed.

    A row whose key exists is kept unless ``overwrite`` (LangGraph's special channels -
    errors, interrupts - replace; regular writes are idempotent per (task, index)).
    """
    table = _ns(doc, ns)["writes"].setdefault(checkpoint_id, {})
    changed = False
    for key, row, overwrite in rows:
        if key in table and not overwrite:
            continue
        if table.get(key) != row:
            table[key] = row
            changed = True
    return changed


def apply(doc: dict[str, Any], op: Mapping[str, Any]) -> bool:
    """Apply one logged operation (module docstring) to ``doc``; return whether anything
    changed. Raises ``ValueError`` for an operation this version does not know."""
    kind = op.get("op")
    if kind == "put":
        add_checkpoint(doc, op["ns"], op["id"], op["entry"], op["blobs"], op["retention"])
        return True
    if kind == "writes":
        return add_writes(doc, op["ns"], op["id"],
                          [(key, row, bool(overwrite)) for key, row, overwrite in op["rows"]])
    raise ValueError(f"unknown thread operation {kind!r}")


def keep_newest(space: dict[str, Any], n: int) -> None:
    """Keep the newest ``n`` checkpoints of one namespace (then :func:`collect`)."""
    ids = sorted(space["checkpoints"])
    for cid in ids[:max(len(ids) - n, 0)]:
        del space["checkpoints"][cid]
    collect(space)


def collect(space: dict[str, Any]) -> None:
    """Drop blobs no retained checkpoint references and writes of dropped checkpoints.

    Writes whose checkpoint is newer than every retained one are kept (a task may write
    before the checkpoint it belongs to is listed - never by LangGraph's own loop, but it
    costs nothing to keep them until the next put).
    """
    checkpoints = space["checkpoints"]
    used: dict[str, set[str]] = {}
    for entry in checkpoints.values():  # runs on every put: kept cheap
        for channel, key in entry["refs"]:
            keys = used.get(channel)
            if keys is None:
                used[channel] = {key}
            else:
                keys.add(key)
    blobs = space["blobs"]
    for channel in list(blobs):
        keys = used.get(channel)
        versions = blobs[channel]
        stale = [k for k in versions if k not in keys] if keys else None
        if stale is None or len(stale) == len(versions):
            del blobs[channel]
        else:
            for k in stale:
                del versions[k]
    newest = max(checkpoints, default="")
    for cid in list(space["writes"]):
        if cid not in checkpoints and cid <= newest:
            del space["writes"][cid]


def drop_runs(doc: dict[str, Any], run_ids: set[str]) -> bool:
    """Remove every checkpoint (and its writes) made by one of ``run_ids``; True if any."""
    changed = False
    for ns in list(doc["ns"]):
        space = doc["ns"][ns]
        gone = [cid for cid, e in space["checkpoints"].items() if e.get("run_id") in run_ids]
        for cid in gone:
            del space["checkpoints"][cid]
            space["writes"].pop(cid, None)
        if gone:
            changed = True
            collect(space)
        if not space["checkpoints"] and not space["writes"]:
            del doc["ns"][ns]
    return changed


def merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    """Copy every checkpoint, blob and write of ``source`` into ``target`` (source wins)."""
    for ns, space in source["ns"].items():
        dst = _ns(target, ns)
        dst["checkpoints"].update(space["checkpoints"])
        for channel, versions in space["blobs"].items():
            dst["blobs"].setdefault(channel, {}).update(versions)
        for cid, table in space["writes"].items():
            dst["writes"].setdefault(cid, {}).update(table)
