"""The raw limits every benchmark compares against, measured one way, and the shared helpers.

Why one module: ``bench_checkpoint`` and ``bench_peers`` measured "raw read into np.empty"
and "raw overwrite + fsync" each their own way (best-of vs median, the array vs random bytes,
a truncating rewrite vs a new file renamed into place), and BENCHMARKS.md ended up with two
256 MiB tables that disagreed (restore 1.40x vs 0.88x of a raw read). Every table now takes
its limits from :func:`raw_limits`:

* ``new``: write the bytes to a new file, ``fsync`` it, rename it over the previous one and
  ``fsync`` the directory - what a durable save to a fresh file costs at least;
* ``overwrite``: ``pwrite`` the same bytes (64 MiB per call) over a file of that size that
  is already allocated and durable, then ``fsync`` - the like-for-like limit of a steady-state
  checkpoint, which rewrites blocks its lease already has;
* ``read``: allocate ``np.empty(nbytes, uint8)`` and ``readinto`` it from a file in the page
  cache - the limit of a restore, which allocates its buffer too.

Times are medians of ``repeat`` runs after one warm-up (:func:`median`); ratios are
``seconds / limit`` (:func:`ratio`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MiB", "RawLimits", "best", "fsync_path", "fsync_tree", "median", "ratio", "raw_limits",
           "read_into", "timed", "timed_runs", "write_file"]

MiB = 1 << 20
#: Bytes per ``pwrite`` of the raw overwrite.
WRITE_PIECE = 64 * MiB


def fsync_path(path: str) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync every file and directory under ``path`` (what makes a peer's directory durable)."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timed_runs(fn: Callable[[], Any], repeat: int, before: Callable[[], None] | None = None
               ) -> tuple[list[float], list[Any]]:
    """Seconds and results of ``repeat`` calls of ``fn``, in call order; ``before`` (if given)
    runs untimed ahead of each call (the change a measured checkpoint then writes)."""
    times, results = [], []
    for _ in range(repeat):
        if before is not None:
            before()
        t = time.perf_counter()
        results.append(fn())
        times.append(time.perf_counter() - t)
    return times, results


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Best seconds of ``repeat`` calls (for per-call overheads, where noise only adds)."""
    return min(timed(fn) for _ in range(repeat))


def median(fn: Callable[[], Any], repeat: int, warmup: bool = True) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` (after one untimed call if ``warmup``)."""
    if warmup:
        fn()  # allocations, page cache, lazy imports
    return statistics.median(timed(fn) for _ in range(repeat))


def ratio(seconds: float | None, limit: float | None) -> float | None:
    if seconds is None or not limit:
        return None
    return round(seconds / limit, 3)


@dataclass(frozen=True, slots=True)
class RawLimits:
    """Median seconds of the three raw operations on ``nbytes`` bytes (see module doc)."""

    nbytes: int
    new: float
    overwrite: float
    read: float


def _write_all(fd: int, view: memoryview, offset: int = 0) -> None:
    pos = 0
    while pos < view.nbytes:
        pos += os.pwrite(fd, view[pos:pos + WRITE_PIECE], offset + pos)


def write_file(path: str, data: memoryview) -> None:
    """Write ``data`` to a new (or truncated) file at ``path`` and fsync it: a plain durable
    write, the baseline a store's write is compared with."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_into(path: str, out: memoryview) -> None:
    """Fill ``out`` from the start of the file at ``path`` (``EOFError`` if it is shorter)."""
    with open(path, "rb", buffering=0) as f:
        view = out
        while view:
            n = f.readinto(view)
            if not n:
                raise EOFError(path)
            view = view[n:]


def raw_limits(root: str, nbytes: int, repeat: int) -> RawLimits:
    """Measure the raw limits for ``nbytes`` bytes of random data in directory ``root``."""
    data = memoryview(np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8))
    path = os.path.join(root, "raw.bin")

    def new_file() -> None:
        write_file(path + ".new", data)
        os.replace(path + ".new", path)
        fsync_path(root)

    def overwrite() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read() -> None:
        read_into(path, memoryview(np.empty(nbytes, dtype=np.uint8)))

    t_new = median(new_file, repeat)  # leaves raw.bin allocated and durable for the others
    t_over = median(overwrite, repeat)
    t_read = median(read, repeat)
    try:
        os.unlink(path)
    except OSError:
        pass
    return RawLimits(nbytes, t_new, t_over, t_read)
