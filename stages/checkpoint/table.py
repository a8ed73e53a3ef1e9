"""The payload of a keyed-state generation: one segment per key group, each on whole blocks.

``docs/FORMAT.md`` 2.4.1 specifies it; in short, an ordinary pickle payload (2.4) whose
segment 0 - a small *manifest*, placed last - names the key groups, and whose segments
1 .. S-1 are the groups' pickled dicts, each starting at a multiple of the block size B and
zero-padded to the next one. So every chunk holds bytes of one group only and a group's
chunks are the same bytes in every generation until the group is written again: the commit
can reuse them by position without reading them (``stages/checkpoint/keyed.py``). Any
version-4 reader decodes such a payload (to the manifest dict); only
:func:`read_manifest` gives it meaning.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import KeyedStateMismatch
from .codec import Payload

__all__ = ["MANIFEST_FORMAT", "MANIFEST_VERSION", "FrameCache", "Manifest", "frame", "frame_again",
           "read_manifest"]

#: The manifest's ``format`` value: this payload is keyed state.
MANIFEST_FORMAT = "blockpoint-keyed"
#: The keyed layout version written (readers refuse newer ones).
MANIFEST_VERSION = 1

_HEAD = struct.Struct("<II")
_ENTRY = struct.Struct("<QQ")


@dataclass(frozen=True, slots=True)
class Manifest:
    """What segment 0 says: the groups in payload order, their segment lengths and (read
    back) their payload offsets and bytes."""

    max_parallelism: int
    groups: Sequence[int]
    lengths: Sequence[int]
    offsets: Sequence[int] = ()
    segments: Sequence[memoryview] = field(default_factory=list)


@dataclass(slots=True)
class FrameCache:
    """The table and manifest :func:`frame` built last, for :func:`frame_again`."""

    table: bytes = b""
    stream: bytes = b""
    offsets: list[int] = field(default_factory=list)


def frame_again(cache: FrameCache, padded: Sequence[tuple[memoryview, int]]) -> Payload:
    """:func:`frame`'s payload for the same groups, each of the same padded size and true
    length as when ``cache`` was filled (the caller knows: only the bytes changed), without
    building the table and the manifest again."""
    segs = [memoryview(cache.table), *(buf for buf, _ in padded), memoryview(cache.stream)]
    end = cache.offsets[-1] + padded[-1][0].nbytes if padded else len(cache.table)
    return Payload(segs, end + len(cache.stream))


def frame(man: Manifest, padded: Sequence[tuple[memoryview, int]],
          bs: int, cache: FrameCache | None = None) -> tuple[Payload, list[int]]:
    """The payload of ``man``'s groups (``padded``: each group's block-padded bytes and true
    length, in ``man.groups`` order) and each group's payload offset. Nothing is copied
    but the table and the manifest (kept in ``cache`` for :func:`frame_again`)."""
    s = len(padded) + 1
    table_len = -(-(_HEAD.size + _ENTRY.size * s) // bs) * bs
    offsets: list[int] = []
    pos = table_len
    for buf, _ in padded:
        offsets.append(pos)
        pos += buf.nbytes
    obj = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
           "max_parallelism": man.max_parallelism, "groups": list(man.groups),
           "offsets": offsets,
           "segments": [pickle.PickleBuffer(buf[:n]) for buf, n in padded]}
    handed: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(obj, protocol=5, buffer_callback=handed.append)
    assert len(handed) == len(padded)  # out of band, in group order: table segments 1..S-1
    table = bytearray(table_len)
    _HEAD.pack_into(table, 0, s, 0)
    _ENTRY.pack_into(table, _HEAD.size, pos, len(stream))
    for j, (off, (_, n)) in enumerate(zip(offsets, padded), 1):
        _ENTRY.pack_into(table, _HEAD.size + j * _ENTRY.size, off, n)
    segs = [memoryview(table), *(buf for buf, _ in padded), memoryview(stream)]
    if cache is not None:
        cache.table, cache.stream, cache.offsets = bytes(table), stream, offsets
        segs[0] = memoryview(cache.table)
    return Payload(segs, pos + len(stream)), offsets


def read_manifest(state: Any, name: str, lease_id: str, max_parallelism: int) -> Manifest:
    """The manifest of a restored keyed generation (``state``: the decoded payload);
    :class:`KeyedStateMismatch` if it is not keyed state, a newer layout, or of another
    ``max_parallelism``."""
    where = f"lease {name!r} ({lease_id})"
    if not isinstance(state, dict) or state.get("format") != MANIFEST_FORMAT:
        raise KeyedStateMismatch(
            f"{where} does not hold keyed state (its newest generation was not written by "
            "a KeyedState)", expected=MANIFEST_FORMAT, found=type(state).__name__)
    version = state.get("version")
    if type(version) is not int or not 1 <= version <= MANIFEST_VERSION:
        raise KeyedStateMismatch(
            f"{where} holds keyed layout version {version!r}; this blockpoint reads "
            f"1..{MANIFEST_VERSION}", expected=f"version <= {MANIFEST_VERSION}",
            found=repr(version))
    m = state.get("max_parallelism")
    if m != max_parallelism:
        raise KeyedStateMismatch(
            f"{where} holds keyed state of max_parallelism {m!r}, the restore asked "
            f"{max_parallelism}: its key groups are other groups (max_parallelism is fixed "
            "for the life of a run)", expected=f"max_parallelism={max_parallelism}",
            found=f"max_parallelism={m!r}")
    groups, offsets, segments = state["groups"], state["offsets"], state["segments"]
    if not len(groups) == len(offsets) == len(segments):
        raise KeyedStateMismatch(f"{where}: keyed manifest lists differ in length",
                                 expected="one offset and segment per group", found="mismatch")
    return Manifest(m, groups, [memoryview(x).nbytes for x in segments], offsets,
                    [memoryview(x) for x in segments])
