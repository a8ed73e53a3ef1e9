"""Keyed state (``stages.KeyedState``): a checkpoint after a few key groups changed vs a full
one, same state, same run (issue 20 item 2).

Two cases on a FileStore with 64 KiB blocks, ``max_parallelism`` key groups:

* ``arrays``: 16,384 keys (``--quick``: 4,096), each a 4 KiB float32 array - 64 MiB (16 MiB);
  128 key groups, 1 changed (0.8 %) before each measured checkpoint, and 1,024 key groups
  with 10 changed (1.0 %).
* ``small keys``: 1,000,000 keys (``--quick``: 100,000) ``"user-<i>" -> (i, float)``,
  128 and 1,024 key groups, 10 keys changed before each measured checkpoint (at most 10
  groups: a written group is re-serialised whole, so finer groups cost less).

Rows, medians (and min..max) of ``repeat`` runs; the change is made outside the timing:

* ``full keyed checkpoint``: every group serialised and written (``full_every=1``, all
  groups written) - what a checkpoint without change tracking costs;
* ``full plain checkpoint``: ``CheckpointedStageState`` of the same data as one dict;
* ``pickle.dumps of the whole state``: serialising alone, no I/O (the bound a checkpoint
  that re-serialises everything cannot beat);
* ``keyed checkpoint, N groups changed``: ``KeyedState.checkpoint()`` after the change.

``bytes`` is ``CheckpointInfo.bytes_written`` (data, map, erased slot and header blocks
handed to the store). ``python -m bench.bench_keyed_state``; ``blockpoint bench --only keyed``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.limits import timed_runs

__all__ = ["run"]

MiB = 1024 * 1024
BLOCK = 64 * 1024


def _case(store: Any, label: str, data: dict[Any, Any], m: int, changed: str,
          change: Callable[[Any, int], None], repeat: int,
          pickle_row: bool) -> list[dict[str, Any]]:
    from stages import CheckpointedStageState, KeyedState

    tag = label.replace(" ", "-")
    full = KeyedState(store.acquire(f"{tag}-full-{m}"), max_parallelism=m, full_every=1)
    inc = KeyedState(store.acquire(f"{tag}-inc-{m}"), max_parallelism=m)
    for ks in (full, inc):
        for k, v in data.items():
            ks[k] = v
        ks.checkpoint()  # size the lease; the first base
    plain = CheckpointedStageState(data, store.acquire(f"{tag}-plain-{m}"))
    plain.checkpoint()
    state = {"n": 0}

    def touch_all() -> None:
        full.touch_all()  # every group written: a full re-serialisation

    def change_some() -> None:
        state["n"] += 1
        change(inc, state["n"])

    # The disk settles before each row (os.sync): a row's fsyncs do not wait for the write-back
    # of the row before it (the full rows write ~1 GiB).
    os.sync()
    t_full, i_full = timed_runs(full.checkpoint, repeat, before=touch_all)
    os.sync()
    t_plain, i_plain = timed_runs(plain.checkpoint, repeat)
    os.sync()
    t_inc, i_inc = timed_runs(inc.checkpoint, repeat, before=change_some)
    groups = inc.last_groups_written
    rows = []
    f_med = statistics.median(t_full)
    f_bytes = statistics.median(i.bytes_written for i in i_full)

    def row(op: str, times: list[float], infos: list[Any] | None,
            note: str = "") -> dict[str, Any]:
        med = statistics.median(times)
        r: dict[str, Any] = {"case": f"{label}, {m} groups", "op": op,
                             "seconds": round(med, 5),
                             "range": f"{min(times):.4f}..{max(times):.4f}",
                             "/ full keyed": round(med / f_med, 4)}
        if infos is not None:
            b = statistics.median(i.bytes_written for i in infos)
            r["bytes"] = int(b)
            r["/ full bytes"] = round(b / f_bytes, 4)
        if note:
            r["note"] = note
        return r

    rows.append(row("full keyed checkpoint", t_full, i_full))
    rows.append(row("full plain checkpoint (one dict)", t_plain, i_plain))
    if pickle_row:
        t_pk, _ = timed_runs(lambda: pickle.dumps(data, protocol=5), repeat)
        rows.append(row("pickle.dumps of the whole state (no I/O)", t_pk, None))
    med_inc = statistics.median(t_inc)
    rows.append(row(f"keyed checkpoint, {changed} changed", t_inc, i_inc,
                    note=f"{f_med / med_inc:.1f}x faster than full keyed; "
                         f"{statistics.median(t_plain) / med_inc:.1f}x than full plain; "
                         f"groups serialised {groups:g}"))
    for ks in (full, inc):
        ks.lease.release()
    plain.lease.release()
    return rows


def run(quick: bool = False, repeat: int | None = None) -> list[dict[str, Any]]:
    """Rows: case, op, median seconds, range, ratio to the full keyed checkpoint, bytes."""
    from blockstore import open_store
    from stages.checkpoint.keygroups import key_group

    repeat = repeat or (3 if quick else 7)
    rng = np.random.default_rng(0)
    n_arr = 4096 if quick else 16384
    arrays = {f"sensor-{i}": rng.random(1024, dtype=np.float32) for i in range(n_arr)}
    n_small = 100_000 if quick else 1_000_000
    small = {f"user-{i}": (i, i * 0.5) for i in range(n_small)}
    by_group: dict[int, dict[int, list[str]]] = {}
    for m in (128, 1024):
        groups: dict[int, list[str]] = {}
        for k in arrays:
            groups.setdefault(key_group(k, m), []).append(k)
        by_group[m] = groups

    def change_arrays(m: int, n_groups: int) -> Callable[[Any, int], None]:
        def change(ks: Any, n: int) -> None:
            for j in range(n_groups):
                g = (n * 37 + j * 101) % m
                key = by_group[m][g][0]
                ks[key] = rng.random(1024, dtype=np.float32)
        return change

    def change_small(ks: Any, n: int) -> None:
        for j in range(10):
            i = (n * 7919 + j * 104729) % n_small
            ks[f"user-{i}"] = (i, float(n))

    root = tempfile.mkdtemp(prefix="bench-keyed-")
    rows: list[dict[str, Any]] = []
    try:
        store = open_store(os.path.join(root, "store"), block_size=BLOCK)
        label = f"arrays {n_arr * 4096 // MiB} MiB"
        rows += _case(store, label, arrays, 128, "1 of 128 groups", change_arrays(128, 1),
                      repeat, False)
        rows += _case(store, label, arrays, 1024, "10 of 1024 groups",
                      change_arrays(1024, 10), repeat, False)
        for m in (128, 1024):
            rows += _case(store, f"small keys {n_small:,}", small, m, "10 keys", change_small,
                          repeat, True)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    import sys

    from blockpoint.table import print_rows

    rows = run(quick="--quick" in sys.argv)
    print_rows(rows, ["case", "op", "seconds", "range", "/ full keyed", "bytes",
                      "/ full bytes", "note"])


if __name__ == "__main__":
    main()
