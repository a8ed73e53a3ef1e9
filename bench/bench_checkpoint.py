"""Checkpoint and restore of a float32 numpy state against the raw limits, and where the time
of a synchronous checkpoint goes.

Rows (medians of ``repeat`` after a warm-up; ratios to the raw limits of the same number of
bytes measured in the same run by :func:`bench.limits.raw_limits`):

* the three raw limits: new file + fsync, in-place overwrite + fsync, read into ``np.empty``;
* ``checkpoint``: ``CheckpointedStageState.checkpoint()`` on a FileStore (1 MiB blocks),
  steady state (the lease already sized by earlier checkpoints), durable on return;
* ``async``: the stall of ``checkpoint_async()`` and its whole flush;
* ``restore (verified)``: every chunk's CRC-32C checked before the state is returned, and
  the same with a checkpoint key (payload MAC and header MAC checked too);
* the keyed rows (AES-GMAC, the default MAC) are timed alternating with their unkeyed
  counterparts, in rotating order, so the ratio in their note (issue 23's target: <= 1.1x)
  compares like with like on a busy machine;
* the breakdown of a sync checkpoint: serializing, CRC-32C of every chunk on one thread,
  the fsyncs one checkpoint makes (counted), and the commit protocol done by hand on a raw
  file (erase the slot, overwrite, fsync, write the header block, fsync) with and without
  starting write-back per 8 MiB - what bounds the checkpoint (``bench/notes/sync.md``).

``python -m bench.bench_checkpoint [--quick]`` prints the table.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import warnings
from typing import Any

import numpy as np

from bench.limits import MiB, RawLimits, median, ratio, raw_limits

__all__ = ["run"]

BLOCK = 1 * MiB
BATCH = 8 * MiB  # the checkpoint writer's write batch (stages.checkpoint.writer.WRITE_BATCH)


def _row(label: str, op: str, secs: float | None, raw: RawLimits, kind: str,
         note: str = "") -> dict[str, Any]:
    r: dict[str, Any] = {"case": label, "op": op,
                         "seconds": None if secs is None else round(secs, 6)}
    if kind == "read":
        r["/ raw read"] = ratio(secs, raw.read)
    elif kind == "write":
        r["/ raw new file"] = ratio(secs, raw.new)
        r["/ raw overwrite"] = ratio(secs, raw.overwrite)
    if note:
        r["note"] = note
    return r


def _protocol_by_hand(root: str, data: memoryview, repeat: int) -> dict[str, float]:
    """The commit protocol's I/O on a raw file: what the checkpoint cannot go below."""
    from blockstore.fileio import start_writeback

    nbytes = data.nbytes
    path = os.path.join(root, "proto.bin")
    header = bytearray(BLOCK)
    header[:256] = os.urandom(256)
    zero = bytes(BLOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    out: dict[str, list[float]] = {"fsync 2": [], "plain": [], "kicked": []}
    try:
        os.pwrite(fd, data, BLOCK)
        os.pwrite(fd, zero, 0)
        os.fsync(fd)

        def once(kick: bool) -> None:
            t = time.perf_counter()
            os.pwrite(fd, zero, 0)                      # erase the target slot
            for pos in range(0, nbytes, BATCH):         # the data, in the writer's batches
                n = os.pwrite(fd, data[pos:pos + BATCH], BLOCK + pos)
                if kick:
                    start_writeback(fd, BLOCK + pos, n)
            os.fsync(fd)                                # flush 1: data and erasure
            t2 = time.perf_counter()
            os.pwrite(fd, header, 0)                    # the header block
            os.fsync(fd)                                # flush 2: the commit
            end = time.perf_counter()
            out["kicked" if kick else "plain"].append(end - t)
            out["fsync 2"].append(end - t2)

        once(False)
        once(True)
        for v in out.values():
            v.clear()
        for _ in range(repeat):
            once(False)
            once(True)
    finally:
        os.close(fd)
        os.unlink(path)
    return {k: statistics.median(v) for k, v in out.items()}


def _alternating(fns: list[Any], repeat: int) -> list[float]:
    """Median seconds of each of ``fns``, run in turn (order rotated every round) after one
    warm-up call each: contenders see the same background load."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for r in range(repeat):
        for i in [(r + j) % len(fns) for j in range(len(fns))]:
            t = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def _count_fsyncs(fn: Any) -> int:
    """How many ``os.fsync`` calls ``fn()`` makes (counted around one call, for the table)."""
    real = os.fsync
    calls = 0

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        real(fd)
    os.fsync = counting
    try:
        fn()
    finally:
        os.fsync = real
    return calls


def _case(root: str, nbytes: int, repeat: int, label: str) -> list[dict[str, Any]]:
    from blockstore import crc32c, open_store
    from stages import CheckpointedStageState
    from stages.checkpoint import codec as codecs
    from stages.checkpoint.writer import chunks

    arr = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    state = {"weights": arr, "step": 0}
    raw = raw_limits(root, codecs.encode(state, "pickle").length, repeat)
    rows = [_row(label, "raw new file + fsync", raw.new, raw, "write"),
            _row(label, "raw overwrite in place + fsync", raw.overwrite, raw, "write"),
            _row(label, "load: raw read into np.empty", raw.read, raw, "read")]

    store = open_store(os.path.join(root, "store"), block_size=BLOCK)
    lease = store.acquire(f"bench-{label}")
    css = CheckpointedStageState(state, lease)
    css.checkpoint()  # size the lease once; the measured ones are steady state
    reader = store.open_reader(lease.lease_id)
    key = os.urandom(32)
    keyed_lease = store.acquire(f"bench-{label}-keyed")
    keyed = CheckpointedStageState(state, keyed_lease, key=key)
    keyed.checkpoint()
    keyed.checkpoint()
    keyed_reader = store.open_reader(keyed_lease.lease_id)
    stalls: list[float] = []

    def async_checkpoint() -> None:
        pending = css.checkpoint_async()
        stalls.append(pending.stall_s)
        pending.wait()

    def restore() -> None:
        r = CheckpointedStageState.restore(reader)
        assert r.state["weights"].nbytes == nbytes

    def restore_keyed() -> None:
        r = CheckpointedStageState.restore(keyed_reader, key=key)
        assert r.state["weights"].nbytes == nbytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unauthenticated-restore warning
        t_ckpt, t_keyed_ckpt = _alternating([css.checkpoint, keyed.checkpoint], repeat)
        t_async = median(async_checkpoint, repeat)
        t_stall = statistics.median(stalls[1:])
        t_restore, t_restore_keyed = _alternating([restore, restore_keyed], repeat)
    fsyncs = _count_fsyncs(css.checkpoint)
    payload = codecs.encode(state, "pickle")
    t_encode = median(lambda: codecs.encode(state, "pickle"), repeat)
    t_crc = median(lambda: [crc32c(c) for c in chunks(payload.segments, BLOCK)], repeat)
    proto = _protocol_by_hand(root, memoryview(arr).cast("B"), repeat)
    lease.release()
    keyed_lease.release()
    store.close()
    rows += [
        _row(label, "blockpoint checkpoint", t_ckpt, raw, "write",
             note=f"{fsyncs} fsyncs"),
        _row(label, "blockpoint async: stall", t_stall, raw, "write",
             note=f"{t_stall / t_ckpt:.3f}x the sync one"),
        _row(label, "blockpoint async: whole flush", t_async, raw, "write",
             note=f"{t_async / t_ckpt:.3f}x the sync one"),
        _row(label, "blockpoint checkpoint with a key (AES-GMAC)", t_keyed_ckpt, raw,
             "write", note=f"{t_keyed_ckpt / t_ckpt:.3f}x the unkeyed one"),
        _row(label, "load: blockpoint restore (verified)", t_restore, raw, "read"),
        _row(label, "load: blockpoint restore with a key (CRCs + MAC)", t_restore_keyed, raw,
             "read", note=f"{t_restore_keyed / t_restore:.3f}x the unkeyed one"),
        _row(label, "part: serialize (pickle-5, out of band)", t_encode, raw, "write"),
        _row(label, "part: CRC-32C of every chunk, one thread", t_crc, raw, "write"),
        _row(label, "protocol by hand: erase, overwrite, fsync, header, fsync", proto["plain"],
             raw, "write", note=f"second fsync {proto['fsync 2'] * 1e3:.1f} ms"),
        _row(label, "protocol by hand, write-back started per 8 MiB", proto["kicked"], raw,
             "write", note="what the file store does"),
    ]
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure; ``quick`` uses 64 MiB and medians of two."""
    root = tempfile.mkdtemp(prefix="bench-ckpt-")
    try:
        if quick:
            return _case(root, 64 * MiB, 2, "numpy 64 MiB")
        return _case(root, 256 * MiB, 5, "numpy 256 MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


COLUMNS = ["case", "op", "seconds", "/ raw new file", "/ raw overwrite", "/ raw read", "note"]


def main() -> None:
    import sys

    from blockpoint.table import print_rows

    print_rows(run(quick="--quick" in sys.argv), COLUMNS)


if __name__ == "__main__":
    main()
