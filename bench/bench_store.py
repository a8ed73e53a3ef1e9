"""Benchmark: block store throughput against plain file I/O of the same bytes.

Issue 2 asks what a vectorised write of 1 MiB blocks to a file-store lease, made durable by
``flush()``, costs against the plainest durable alternative: ``write`` of the same bytes to a
file and ``fsync``. This measures that, and the read side (``read_run_into`` a preallocated
buffer against ``readinto`` of the plain file), with the memory store as a reference for the
store's own overhead. Per-call overhead (the fencing check: a shared ``flock`` plus a read of
the lease record on every write) is measured separately with small blocks, where it is
largest relative to the data.

Method: every repetition writes a fresh lease / a fresh file (so both allocate the same
blocks, and neither pays for truncating or freeing an earlier one); the contenders run in
turn, repetition by repetition, and the best of ``repeats`` runs is reported. Reads run
right after a write, with the page cache warm for both sides: this compares the store's read
path with a plain read, not the disk (dropping the cache would need root and disturbs
everything else on the machine). On a shared VM the write figures vary by +-30% from run to
run; compare rows of one run, not across runs.

Run ``python -m bench.bench_store [--quick]`` for a table; :func:`run` returns the rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from blockstore import BlockStore, FileStore, MemoryStore
from bench.limits import read_into, write_file

__all__ = ["run"]

MIB = 1 << 20


def _best(fn: Callable[[int], None], repeats: int) -> float:
    """Best wall time of ``fn(k)`` for k in range(repeats)."""
    best = float("inf")
    for k in range(repeats):
        t0 = time.perf_counter()
        fn(k)
        best = min(best, time.perf_counter() - t0)
    return best


def _interleaved(cases: dict[str, Callable[[int], object]], repeats: int, *,
                 cleanup: dict[str, Callable[[int], object]]) -> dict[str, float]:
    """Best wall time of each case, running the cases in turn ``repeats`` times."""
    best = dict.fromkeys(cases, float("inf"))
    for k in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn(k)
            best[name] = min(best[name], time.perf_counter() - t0)
            if name in cleanup:
                cleanup[name](k)
    return best


def _row(case: str, backend: str, nbytes: int, seconds: float, *, baseline: float | None,
         **extra: Any) -> dict[str, Any]:
    mbps = nbytes / MIB / seconds
    row = {"bench": "store", "case": case, "backend": backend, "MiB": nbytes // MIB,
           "best_s": round(seconds, 4), "MiB/s": round(mbps, 1),
           "vs_plain": round(baseline / seconds, 2) if baseline else None}
    row.update(extra)
    return row


def _store_write(store: BlockStore, name: str, blocks: list[memoryview]) -> None:
    with store.acquire(name, num_blocks=len(blocks)) as lease:
        lease.write_blocks(enumerate(blocks))
        lease.flush()


def run(quick: bool = False, *, directory: str | None = None,
        total_mib: int | None = None, repeats: int | None = None) -> list[dict[str, Any]]:
    """Measure and return one row per case.

    Args:
        quick: 32 MiB and best of 2 instead of 256 MiB and best of 3.
        directory: where the files go (default: a temporary directory, removed after).
        total_mib: bytes per case in MiB (overrides ``quick``).
        repeats: repetitions per case (overrides ``quick``).

    Rows: ``case``, ``backend``, ``MiB``, ``best_s``, ``MiB/s``, ``vs_plain`` (the plain
    baseline's time divided by this case's: 1.0 is as fast as plain I/O, 0.5 half as fast),
    plus ``us_per_call`` for the per-call rows.
    """
    total = total_mib or (32 if quick else 256)
    reps = repeats or (2 if quick else 3)
    n = total  # 1 MiB blocks
    data = np.random.default_rng(0).integers(0, 256, total * MIB, dtype=np.uint8)
    whole = memoryview(data).cast("B")
    blocks = [whole[i * MIB:(i + 1) * MIB] for i in range(n)]
    out = bytearray(total * MIB)
    tmp = tempfile.mkdtemp(prefix="bp-bench-", dir=directory)
    rows: list[dict[str, Any]] = []
    try:
        plain = os.path.join(tmp, "plain.bin")
        fs = FileStore(os.path.join(tmp, "store"), MIB)
        ms = MemoryStore(MIB)

        def one_per_call(k: int) -> None:
            # One call per block: the fencing check (flock + record read) paid n times.
            with fs.acquire(f"s{k}", num_blocks=n) as lease:
                for i, b in enumerate(blocks):
                    lease.write_block(i, b)
                lease.flush()

        # Interleaved, so that page-cache writeback left by one case burdens every case alike.
        best = _interleaved({
            "plain": lambda k: write_file(f"{plain}.{k}", whole),
            "vector": lambda k: _store_write(fs, f"w{k}", blocks),
            "single": one_per_call,
            "memory": lambda k: _store_write(ms, f"w{k}", blocks),
        }, reps, cleanup={
            # Every contender writes a new file; freeing the old one is not timed for any.
            "plain": lambda k: k and os.unlink(f"{plain}.{k}"),
            "vector": lambda k: k and fs.delete_lease(f"w{k}"),
            "single": lambda k: fs.delete_lease(f"s{k}"),
            "memory": lambda k: k and ms.delete_lease(f"w{k}"),
        })
        t_plain_w = best["plain"]
        rows.append(_row("write+fsync", "plain file", total * MIB, t_plain_w, baseline=None))
        with fs:
            rows.append(_row("vectorised write+flush", "FileStore", total * MIB,
                             best["vector"], baseline=t_plain_w, blocks_per_call=n))
            rows.append(_row("write+flush, 1 block/call", "FileStore", total * MIB,
                             best["single"], baseline=t_plain_w, blocks_per_call=1))
            t_plain_r = _best(lambda k: read_into(f"{plain}.0", memoryview(out)), reps)
            assert out == whole
            rows.append(_row("read (warm cache)", "plain file", total * MIB, t_plain_r,
                             baseline=None))
            out[:] = bytes(len(out))
            reader = fs.open_reader("w0")
            t_fs_r = _best(lambda k: reader.read_run_into(0, memoryview(out)), reps)
            assert out == whole, "the store read back different bytes"
            rows.append(_row("read_run_into (warm cache)", "FileStore", total * MIB, t_fs_r,
                             baseline=t_plain_r))
            t_fs_rb = _best(lambda k: reader.read_blocks(range(n)), reps)
            rows.append(_row("read_blocks -> bytes", "FileStore", total * MIB, t_fs_rb,
                             baseline=t_plain_r))

        with ms:
            rows.append(_row("vectorised write+flush", "MemoryStore", total * MIB,
                             best["memory"], baseline=t_plain_w, blocks_per_call=n))
            mreader = ms.open_reader("w0")
            t_ms_r = _best(lambda k: mreader.read_run_into(0, memoryview(out)), reps)
            rows.append(_row("read_run_into", "MemoryStore", total * MIB, t_ms_r,
                             baseline=t_plain_r))

        rows.extend(_per_call_rows(tmp, 500 if quick else 2000, reps))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _per_call_rows(tmp: str, calls: int, reps: int) -> list[dict[str, Any]]:
    """Small (4 KiB) single-block writes: the cost of a call, not of the bytes."""
    bs = 4096
    payload = os.urandom(bs)
    rows = []
    path = os.path.join(tmp, "plain-small.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        def plain(k: int) -> None:
            for i in range(calls):
                os.pwrite(fd, payload, i * bs)
        t_plain = _best(plain, reps)
    finally:
        os.close(fd)
    rows.append(_row("4 KiB pwrite", "plain file", calls * bs, t_plain, baseline=None,
                     us_per_call=round(t_plain / calls * 1e6, 1)))
    with FileStore(os.path.join(tmp, "small"), bs) as fs, \
            fs.acquire("small", num_blocks=calls) as lease:
        def store(k: int) -> None:
            for i in range(calls):
                lease.write_block(i, payload)
        t_store = _best(store, reps)
        # The part of a call spent on the fencing check: lock + record read, no data.
        t0 = time.perf_counter()
        for _ in range(calls):
            with fs._lease_lock(lease.lease_id, exclusive=False):
                fs._read_record(lease.lease_id)
        t_check = time.perf_counter() - t0
    rows.append(_row("4 KiB write_block", "FileStore", calls * bs, t_store, baseline=t_plain,
                     us_per_call=round(t_store / calls * 1e6, 1),
                     us_fencing_check=round(t_check / calls * 1e6, 1)))
    with MemoryStore(bs) as ms, ms.acquire("small", num_blocks=calls) as mlease:
        t_mem = _best(lambda k: [mlease.write_block(i, payload) for i in range(calls)], reps)
    rows.append(_row("4 KiB write_block", "MemoryStore", calls * bs, t_mem, baseline=t_plain,
                     us_per_call=round(t_mem / calls * 1e6, 1)))
    return rows


COLUMNS = ["case", "backend", "MiB", "best_s", "MiB/s", "vs_plain", "us_per_call",
           "us_fencing_check"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="32 MiB, best of 2")
    p.add_argument("--dir", help="directory for the files (default: a temporary one)")
    args = p.parse_args(argv)
    from blockpoint.table import print_rows

    print_rows(run(args.quick, directory=args.dir), COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
