"""Per-chunk compression: zstandard, skipped where it does not pay.

Why per chunk and why "auto": a checkpoint must be bounded by the disk, not the CPU. Random
floats barely compress (ratio ~1.08) yet zstd would burn ~2-5 ms per MiB on them, so in
``auto`` mode each chunk is first probed by compressing a small sample from its middle at
level 1 (~1% of the chunk's cost); only chunks whose sample shrinks below
:data:`PROBE_RATIO` are compressed at the configured level. In every mode a chunk whose
compressed form is not smaller is stored raw (flagged), so restoring it is a plain read.
zstd and CRC-32C release the GIL, so chunks are coded in a thread pool while other chunks
are written. Compressors are not thread-safe: each thread keeps its own.
"""

from __future__ import annotations

import threading

import zstandard

from .format import CHUNK_RAW, CHUNK_ZSTD

__all__ = ["ChunkCoder", "PROBE_BYTES", "PROBE_RATIO", "decompress_into"]

PROBE_BYTES = 8192
PROBE_RATIO = 0.85
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


class ChunkCoder:
    """Decides and applies compression for one chunk at a time (thread-safe).

    Args:
        mode: "none", "zstd" (always try) or "auto" (probe first).
        level: zstd level for chunks that are compressed.
    """

    def __init__(self, mode: str, level: int) -> None:
        if mode not in ("none", "zstd", "auto"):
            raise ValueError(f"compression must be 'auto', 'zstd' or 'none', got {mode!r}")
        if not -7 <= level <= 22:
            raise ValueError(f"zstd level must be in [-7, 22], got {level!r}")
        self.mode = mode
        self.level = level

    def _worth_trying(self, chunk: memoryview) -> bool:
        if self.mode == "zstd":
            return True
        n = chunk.nbytes
        if n <= 2 * PROBE_BYTES:
            return True
        start = (n // 2) - PROBE_BYTES // 2
        sample = chunk[start:start + PROBE_BYTES]
        return len(_compressor(1).compress(sample)) < PROBE_RATIO * PROBE_BYTES

    def encode(self, chunk: memoryview) -> tuple[memoryview | bytes, int]:
        """``(stored bytes, chunk flags)``: compressed only if strictly smaller."""
        if self.mode == "none" or chunk.nbytes < 64 or not self._worth_trying(chunk):
            return chunk, CHUNK_RAW
        packed = _compressor(self.level).compress(chunk)
        if len(packed) >= chunk.nbytes:
            return chunk, CHUNK_RAW
        return packed, CHUNK_ZSTD


def decompress_into(stored: memoryview, out: memoryview) -> None:
    """Decompress a zstd chunk into ``out``; raise ValueError if it is not exactly that size.

    The work is bounded by ``out`` (the map entry's raw length, at most one block) before
    anything is decompressed: zstd sizes its output from the frame's own content size field
    and ignores ``max_output_size`` when that field is present, so a forged 32 KiB frame
    claiming 1 GiB would be decompressed in full before its length could be refused. A frame
    whose content size differs from the raw length is refused unread; one without the field
    (writers always write it; ``docs/FORMAT.md`` 2.6) is decompressed at most ``out.nbytes``.
    """
    try:
        size = zstandard.get_frame_parameters(stored).content_size
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd frame header does not parse: {exc}") from exc
    if size != zstandard.CONTENTSIZE_UNKNOWN and size != out.nbytes:
        raise ValueError(f"zstd frame content size {size} != the map entry's raw length "
                         f"{out.nbytes} (refused before decompressing)")
    try:
        data = _decompressor().decompress(stored, max_output_size=out.nbytes)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd chunk does not decompress: {exc}") from exc
    if len(data) != out.nbytes:
        raise ValueError(f"zstd chunk decompressed to {len(data)} bytes, expected {out.nbytes}")
    out[:] = data
