"""Codecs: state <-> payload, without copying large buffers.

A payload is a **segment table** followed by segments at 64-byte aligned offsets::

    u32 count S | u32 reserved (0) | S x (u64 offset, u64 length) | pad | seg 0 | pad | seg 1 ..

Segment 0 is the codec's byte stream; for ``pickle`` the others are the out-of-band buffers
of pickle protocol 5 (numpy arrays, bytearrays ...), so encoding hands out memoryviews of the
live state instead of copying it, and decoding gives ``pickle.loads(buffers=...)`` memoryview
slices of the one buffer restore read everything into: restored numpy arrays are backed by it.
Alignment keeps those arrays aligned for their dtype.

``msgpack`` is the data-only codec: it never executes code on load. It encodes None, bool,
int, float, str, bytes, lists/tuples (restored as lists), dicts, numpy scalars (as Python
numbers) and numpy arrays of plain numeric/bool dtypes (extension type 1); anything else is
refused with :class:`~stages.errors.CodecError`.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from ..errors import CodecError

__all__ = ["ALIGN", "Payload", "decode", "encode", "msgpack_copy"]

ALIGN = 64
_TABLE_HEAD = struct.Struct("<II")
_TABLE_ENTRY = struct.Struct("<QQ")
_ZEROS = memoryview(bytes(ALIGN))
#: Buffers smaller than this stay in-band: a segment per tiny array costs more than a copy.
OUT_OF_BAND_MIN = 4096
_NDARRAY_EXT = 1
_SAFE_KINDS = frozenset("biufc")


@dataclass(frozen=True, slots=True)
class Payload:
    """A serialized state: ``segments`` (memoryviews, in order) total ``length`` bytes.

    The segments include the table and the zero padding; nothing has been joined.

    ``reuse`` (keyed state, ``stages/checkpoint/keyed.py``): ``(first chunk index, run)``
    pairs, ascending and not overlapping, each run (``incremental.StoredRun``) the map
    entries of generation ``reuse_generation`` that already store exactly those chunks'
    bytes. A commit whose incremental base is that generation takes those entries as they
    are - the chunks are neither visited, hashed, compressed nor written; on any other base
    they are ignored and the chunks are encoded from ``segments`` like any other.
    """

    segments: Sequence[memoryview]
    length: int
    reuse: Sequence[tuple[int, Any]] = ()
    reuse_generation: int | None = None


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _frame(parts: Sequence[memoryview]) -> Payload:
    table_len = _TABLE_HEAD.size + _TABLE_ENTRY.size * len(parts)
    offsets = []
    pos = _align(table_len)
    for p in parts:
        offsets.append(pos)
        pos = _align(pos + p.nbytes)
    length = offsets[-1] + parts[-1].nbytes
    table = bytearray(_align(table_len))
    _TABLE_HEAD.pack_into(table, 0, len(parts), 0)
    for i, (off, p) in enumerate(zip(offsets, parts)):
        _TABLE_ENTRY.pack_into(table, _TABLE_HEAD.size + i * _TABLE_ENTRY.size, off, p.nbytes)
    segs: list[memoryview] = [memoryview(table)]
    for i, p in enumerate(parts):
        segs.append(p)
        if i + 1 < len(parts):
            pad = offsets[i + 1] - offsets[i] - p.nbytes
            if pad:
                segs.append(_ZEROS[:pad])
    return Payload(segs, length)


def _segments(buf: memoryview) -> list[memoryview]:
    if buf.nbytes < _TABLE_HEAD.size:
        raise ValueError("payload shorter than its segment table")
    count, _ = _TABLE_HEAD.unpack_from(buf, 0)
    if count < 1 or _TABLE_HEAD.size + count * _TABLE_ENTRY.size > buf.nbytes:
        raise ValueError(f"payload segment table of {count} entries does not fit")
    out = []
    for i in range(count):
        off, n = _TABLE_ENTRY.unpack_from(buf, _TABLE_HEAD.size + i * _TABLE_ENTRY.size)
        if off + n > buf.nbytes:
            raise ValueError(f"payload segment {i} ({off}+{n}) beyond {buf.nbytes} bytes")
        out.append(buf[off:off + n])
    return out


# -- pickle -----------------------------------------------------------------------------
def _encode_pickle(state: Any) -> Payload:
    buffers: list[memoryview] = []

    def out_of_band(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # true = serialize in-band
        buffers.append(raw)
        return False

    try:
        stream = pickle.dumps(state, protocol=5, buffer_callback=out_of_band)
    except MemoryError:
        raise  # the machine's condition, not the state's: may pass on a retry
    except Exception as exc:
        raise CodecError(f"pickle codec cannot encode the state: {type(exc).__name__}: {exc}",
                         codec="pickle") from exc
    return _frame([memoryview(stream), *buffers])


def _decode_pickle(buf: memoryview) -> Any:
    segs = _segments(buf)
    return pickle.loads(segs[0], buffers=segs[1:])


# -- msgpack ----------------------------------------------------------------------------
def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _SAFE_KINDS or obj.dtype.fields is not None:
            raise CodecError(f"msgpack codec: numpy dtype {obj.dtype} is not plain data",
                             codec="msgpack")
        arr = np.ascontiguousarray(obj)
        return msgpack.ExtType(_NDARRAY_EXT, msgpack.packb(
            [arr.dtype.str, list(arr.shape), memoryview(arr).cast("B")], use_bin_type=True))
    if isinstance(obj, np.generic) and obj.dtype.kind in _SAFE_KINDS:
        return obj.item()
    raise CodecError(f"msgpack codec stores data only; it refuses {type(obj).__qualname__} "
                     "objects (use codec='pickle', or convert to dicts/lists/numbers/str/bytes)",
                     codec="msgpack")


def _msgpack_ext(code: int, data: bytes) -> Any:
    if code != _NDARRAY_EXT:
        raise ValueError(f"unknown msgpack extension type {code}")
    dtype_str, shape, raw = msgpack.unpackb(data, raw=False)
    dtype = np.dtype(dtype_str)
    if dtype.kind not in _SAFE_KINDS:
        raise ValueError(f"msgpack array dtype {dtype_str!r} is not plain data")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _pack(value: Any, what: str) -> bytes:
    try:
        return msgpack.packb(value, default=_msgpack_default, use_bin_type=True)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"msgpack codec cannot encode {what}: {exc}", codec="msgpack") from exc


def _unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_msgpack_ext,
                           use_list=True)


def _encode_msgpack(state: Any) -> Payload:
    return _frame([memoryview(_pack(state, "the state"))])


def msgpack_copy(value: Any) -> tuple[Any, int]:
    """``value`` as the msgpack codec gives it back (a tuple as a list) and its encoded size;
    :class:`CodecError` if the codec cannot encode it (a set, an object)."""
    stream = _pack(value, "it")
    return _unpack(stream), len(stream)


def _decode_msgpack(buf: memoryview) -> Any:
    return _unpack(_segments(buf)[0])


def encode(state: Any, codec: str) -> Payload:
    """Serialize ``state``; large buffers are referenced, not copied (pickle)."""
    if codec == "pickle":
        return _encode_pickle(state)
    if codec == "msgpack":
        return _encode_msgpack(state)
    raise ValueError(f"unknown codec {codec!r} (pickle, msgpack)")


def decode(buf: bytearray | memoryview, codec: str) -> Any:
    """Deserialize a payload; pickle's out-of-band buffers become views of ``buf``."""
    mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    if codec == "pickle":
        return _decode_pickle(mv)
    if codec == "msgpack":
        return _decode_msgpack(mv)
    raise ValueError(f"unknown codec {codec!r}")
