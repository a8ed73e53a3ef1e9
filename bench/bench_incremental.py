"""Incremental checkpoints vs a full synchronous checkpoint of the same state, same run.

State: 256 MiB float32 (``--quick``: 64 MiB) on a FileStore with 1 MiB blocks. Before each
measured incremental checkpoint 1 % of the array's 1 MiB blocks get one changed value each
(outside the timing). Rows, medians of ``repeat`` runs:

* ``full sync checkpoint``: ``CheckpointedStageState.checkpoint()``, steady state.
* ``full checkpoint with hashes``: ``incremental=True, full_every=1`` - what the periodic
  full checkpoint of an incremental state costs (the hashes are computed beside the I/O).
* ``incremental checkpoint``: ``incremental=True`` - hash every chunk, write the changed
  ones, erase the target slot, write the header, two fsyncs.
* ``incremental async: stall / whole flush``: the same through ``checkpoint_async``.
* the bounds of an incremental checkpoint, measured alone: XXH3-128 over the whole state
  (change detection must read every byte: no dirty tracking by the kernel here), and the
  raw I/O it must do (the changed blocks + one erased slot + one header block, two fsyncs).

``bytes`` is ``CheckpointInfo.bytes_written``: the blocks handed to the store, which on the
FileStore equals the bytes passed to ``pwritev`` (checked by wrapping it; ``/proc/self/io``
``write_bytes`` is not used - ext4 attributes writeback of earlier writes to the fsync
caller, so it drifts from run to run). ``python -m bench.bench_incremental``;
``blockpoint bench --only incremental``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.limits import timed_runs

__all__ = ["run"]

MiB = 1024 * 1024
BLOCK = 1 * MiB
CHANGED = 0.01


def _measure(fn: Callable[[], Any], repeat: int,
             before: Callable[[], None] | None = None) -> tuple[float, list[Any]]:
    """Median seconds of ``fn`` (``before`` runs untimed first) and its results."""
    times, results = timed_runs(fn, repeat, before)
    return statistics.median(times), results


def run(quick: bool = False, repeat: int | None = None) -> list[dict[str, Any]]:
    """Rows: op, seconds, ratio to the full sync checkpoint, bytes written."""
    import xxhash

    from blockstore import open_store
    from stages import CheckpointedStageState

    repeat = repeat or (3 if quick else 5)
    nbytes = (64 if quick else 256) * MiB
    label = f"{nbytes // MiB} MiB float32"
    arr = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    nblocks = nbytes // BLOCK
    n_changed = max(1, round(CHANGED * nblocks))
    rng = np.random.default_rng(1)
    per_block = BLOCK // 4

    def change() -> None:
        for b in rng.choice(nblocks, n_changed, replace=False):
            i = int(b) * per_block + int(rng.integers(0, per_block))
            arr[i] = np.float32(rng.random())

    root = tempfile.mkdtemp(prefix="bench-incr-")
    try:
        store = open_store(os.path.join(root, "store"), block_size=BLOCK)
        full = CheckpointedStageState({"w": arr}, store.acquire("full"))
        hashed = CheckpointedStageState({"w": arr}, store.acquire("hashed"), incremental=True,
                                        full_every=1)
        inc = CheckpointedStageState({"w": arr}, store.acquire("inc"), incremental=True)
        inc_async = CheckpointedStageState({"w": arr}, store.acquire("inc-async"),
                                           incremental=True)
        for css in (full, hashed, inc):
            css.checkpoint()  # size the lease; the first incremental base
        t_full, infos_full = _measure(full.checkpoint, repeat)
        t_hashed, _ = _measure(hashed.checkpoint, repeat)
        t_inc, infos_inc = _measure(inc.checkpoint, repeat, before=change)
        stalls: list[float] = []

        def asynchronous() -> Any:
            pending = inc_async.checkpoint_async()
            stalls.append(pending.stall_s)
            return pending.wait()
        inc_async.checkpoint()
        t_async, _ = _measure(asynchronous, repeat, before=change)
        for css in (full, hashed, inc, inc_async):
            css.lease.release()
        store.close()

        mv = memoryview(arr).cast("B")
        chunks = [mv[i:i + BLOCK] for i in range(0, nbytes, BLOCK)]
        t_hash, _ = _measure(lambda: [xxhash.xxh3_128_digest(c) for c in chunks], repeat)
        raw_path = os.path.join(root, "raw.bin")
        with open(raw_path, "wb") as f:
            f.truncate(nbytes + 2 * BLOCK)
        fd = os.open(raw_path, os.O_RDWR)

        def raw_small_commit() -> None:  # what the incremental commit writes, two fsyncs
            os.pwrite(fd, bytes(BLOCK), 0)
            for k in range(n_changed):
                os.pwrite(fd, chunks[k * 7 % nblocks], (2 + k * 7 % nblocks) * BLOCK)
            os.fsync(fd)
            os.pwrite(fd, chunks[0], BLOCK)
            os.fsync(fd)
        t_raw_small, _ = _measure(raw_small_commit, repeat)
        os.close(fd)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    full_bytes = statistics.median(i.bytes_written for i in infos_full)
    inc_bytes = statistics.median(i.bytes_written for i in infos_inc)
    written = statistics.median(i.chunks_written for i in infos_inc)
    reused = statistics.median(i.chunks_reused for i in infos_inc)

    def row(op: str, secs: float, *, nbytes_: float | None = None,
            note: str = "") -> dict[str, Any]:
        r: dict[str, Any] = {"case": label, "op": op, "seconds": round(secs, 4),
                             "/ full sync": round(secs / t_full, 3)}
        if nbytes_ is not None:
            r["bytes"] = int(nbytes_)
            r["/ full bytes"] = round(nbytes_ / full_bytes, 4)
        if note:
            r["note"] = note
        return r

    return [
        row("full sync checkpoint", t_full, nbytes_=full_bytes),
        row("full checkpoint with hashes (incremental, full_every=1)", t_hashed),
        row(f"incremental checkpoint ({CHANGED:.0%} of blocks changed)", t_inc,
            nbytes_=inc_bytes,
            note=f"{t_full / t_inc:.1f}x faster; chunks written {written:g}, reused {reused:g}"),
        row("incremental async: stall", statistics.median(stalls),
            note="the snapshot copy of the whole state"),
        row("incremental async: whole flush", t_async),
        row("bound: XXH3-128 of every chunk", t_hash,
            note=f"{nbytes / MiB / 1024 / t_hash:.1f} GiB/s"),
        row("bound: raw write of the same blocks + 2 fsyncs", t_raw_small),
    ]


def main() -> None:
    import sys

    from blockpoint.table import print_rows

    rows = run(quick="--quick" in sys.argv)
    print_rows(rows, ["case", "op", "seconds", "/ full sync", "bytes", "/ full bytes", "note"])


if __name__ == "__main__":
    main()
