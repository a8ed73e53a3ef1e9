"""Checkpoint and restore of a float32 numpy state vs raw file I/O of the same bytes.

Rows (seconds, best of ``repeat``; ``ratio`` is against the matching raw baseline):

* ``raw write+fsync``: write the array's bytes to a new file, fsync it and its directory.
* ``raw overwrite in place+fsync``: rewrite the same file in place (no new extents), as a
  steady-state checkpoint rewrites blocks the lease already has: the like-for-like baseline.
* ``checkpoint``: ``CheckpointedStageState.checkpoint()`` on a FileStore (1 MiB blocks),
  steady state (the lease already sized by a first checkpoint), durable on return.
* ``np.save+fsync`` / ``pickle+fsync``: the usual alternatives, for reference.
* ``raw read``: read the file into a fresh ``bytearray`` (the lead's baseline) and into a fresh
  ``np.empty`` buffer (huge pages: the fair baseline for restore, which reads into one).
* ``restore``: ``CheckpointedStageState.restore()`` - every CRC verified, zero-copy arrays.
* ``np.load`` / ``pickle.load``: for reference.

Everything runs in a temporary directory on the same filesystem; reads come from the page
cache for every contender alike. ``python -m bench.bench_checkpoint`` prints the table.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["run"]

MiB = 1024 * 1024
BLOCK = 1 * MiB


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _case(root: str, nbytes: int, repeat: int, label: str) -> list[dict[str, Any]]:
    from blockstore import open_store
    from stages import CheckpointedStageState

    rng = np.random.default_rng(0)
    arr = rng.random(nbytes // 4, dtype=np.float32)
    raw_path = os.path.join(root, "raw.bin")

    def raw_write() -> None:
        with open(raw_path, "wb") as f:
            f.write(memoryview(arr).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(root)

    def raw_overwrite() -> None:
        fd = os.open(raw_path, os.O_WRONLY)
        try:
            mv = memoryview(arr).cast("B")
            pos = 0
            while pos < nbytes:
                pos += os.pwrite(fd, mv[pos:pos + 64 * MiB], pos)
            os.fsync(fd)
        finally:
            os.close(fd)

    def raw_read() -> None:
        buf = bytearray(nbytes)
        with open(raw_path, "rb", buffering=0) as f:
            f.readinto(buf)

    def raw_read_np() -> None:
        buf = np.empty(nbytes, dtype=np.uint8)
        with open(raw_path, "rb", buffering=0) as f:
            f.readinto(buf)

    np_path = os.path.join(root, "arr.npy")

    def np_save() -> None:
        with open(np_path, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(root)

    pk_path = os.path.join(root, "arr.pkl")

    def pk_dump() -> None:
        with open(pk_path, "wb") as f:
            pickle.dump(arr, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(root)

    def pk_load() -> None:
        with open(pk_path, "rb") as f:
            pickle.load(f)

    store = open_store(os.path.join(root, "store"), block_size=BLOCK)
    lease = store.acquire(f"bench-{label}")
    css = CheckpointedStageState({"weights": arr, "step": 0}, lease)
    css.checkpoint()  # size the lease once; the measured ones are steady state
    reader = store.open_reader(lease.lease_id)

    def restore() -> None:
        r = CheckpointedStageState.restore(reader)
        assert r.state["weights"].nbytes == nbytes

    stalls: list[float] = []

    def async_checkpoint() -> None:
        pending = css.checkpoint_async()
        stalls.append(pending.stall_s)
        pending.wait()

    t_raw_w = _best(raw_write, repeat)
    t_raw_ow = _best(raw_overwrite, repeat)
    t_ckpt = _best(css.checkpoint, repeat)
    t_async = _best(async_checkpoint, repeat)
    t_stall = min(stalls)
    t_np_w = _best(np_save, repeat)
    t_pk_w = _best(pk_dump, repeat)
    t_raw_r = _best(raw_read, repeat)
    t_raw_np = _best(raw_read_np, repeat)
    t_restore = _best(restore, repeat)
    t_np_r = _best(lambda: np.load(np_path), repeat)
    t_pk_r = _best(pk_load, repeat)
    lease.release()
    store.close()
    mb = nbytes / MiB

    def row(op: str, t: float, base: float) -> dict[str, Any]:
        return {"case": label, "op": op, "seconds": round(t, 4),
                "MiB/s": round(mb / t, 1), "ratio": round(t / base, 3)}

    return [row("raw write+fsync", t_raw_w, t_raw_w),
            row("raw overwrite in place+fsync", t_raw_ow, t_raw_w),
            row("checkpoint", t_ckpt, t_raw_w),
            {**row("", t_ckpt, t_raw_ow), "op": "checkpoint / raw overwrite"},
            {**row("async checkpoint: stall", t_stall, t_ckpt), "op":
             "async checkpoint: stall / sync checkpoint"},
            {**row("async checkpoint: total", t_async, t_ckpt), "op":
             "async checkpoint: total / sync checkpoint"},
            row("np.save+fsync", t_np_w, t_raw_w), row("pickle+fsync", t_pk_w, t_raw_w),
            row("raw read", t_raw_r, t_raw_r), row("raw read (np.empty)", t_raw_np, t_raw_r),
            row("restore (verified)", t_restore, t_raw_r),
            {**row("", t_restore, t_raw_np), "op": "restore / raw read (np.empty)"},
            row("np.load", t_np_r, t_raw_r), row("pickle.load", t_pk_r, t_raw_r)]


def _round_trip_1gib(root: str) -> list[dict[str, Any]]:
    """A1 big case: 1 GiB state checkpointed, restored, compared."""
    from blockstore import open_store
    from stages import CheckpointedStageState

    arr = np.random.default_rng(1).random((1 << 30) // 4, dtype=np.float32)
    store = open_store(os.path.join(root, "big"), block_size=BLOCK)
    lease = store.acquire("bench-1gib")
    t = time.perf_counter()
    CheckpointedStageState({"w": arr}, lease).checkpoint()
    t_ck = time.perf_counter() - t
    t = time.perf_counter()
    back = CheckpointedStageState.restore(lease).state["w"]
    t_rs = time.perf_counter() - t
    equal = bool(np.array_equal(back, arr))
    del back
    lease.release()
    store.close()
    raw_path = os.path.join(root, "big.raw")
    t = time.perf_counter()
    with open(raw_path, "wb") as f:
        f.write(memoryview(arr).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(root)
    t_w = time.perf_counter() - t
    t = time.perf_counter()
    buf = np.empty(1 << 30, dtype=np.uint8)
    with open(raw_path, "rb", buffering=0) as f:
        f.readinto(buf)
    t_r = time.perf_counter() - t

    def row(op: str, secs: float, base: float) -> dict[str, Any]:
        return {"case": "1 GiB float32", "op": op, "seconds": round(secs, 3),
                "MiB/s": round(1024 / secs, 1), "ratio": round(secs / base, 3)}

    return [row("raw write+fsync", t_w, t_w), row("checkpoint (first, grows lease)", t_ck, t_w),
            row("raw read (np.empty)", t_r, t_r), row(f"restore (equal={equal})", t_rs, t_r)]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure; ``quick`` uses 64 MiB, best of two, and skips the 1 GiB round trip."""
    root = tempfile.mkdtemp(prefix="bench-ckpt-")
    try:
        if quick:
            return _case(root, 64 * MiB, 2, "64 MiB float32")
        rows = _case(root, 256 * MiB, 3, "256 MiB float32")
        shutil.rmtree(os.path.join(root, "store"), ignore_errors=True)
        rows += _round_trip_1gib(root)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    import sys

    from blockpoint.table import print_rows

    rows = run(quick="--quick" in sys.argv)
    print_rows(rows, ["case", "op", "seconds", "MiB/s", "ratio"])


if __name__ == "__main__":
    main()
