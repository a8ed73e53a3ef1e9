"""The stall of an asynchronous checkpoint, by snapshot strategy, against a sync checkpoint.

One 256 MiB float32 state (``quick``: 64 MiB) on a ``FileStore`` with 1 MiB blocks, steady
state (the lease sized by a first checkpoint), medians of ``repeat``, all in one run:

* ``sync checkpoint``: ``checkpoint()`` - the stage is stalled for all of it;
* ``async stall, copy in 1 thread`` / ``in 2 threads``: ``checkpoint_async()`` returns after
  serializing and copying the array into reused snapshot buffers
  (``stages/checkpoint/background.py``; ``COPY_THREADS`` 1 or 2 - ``numpy.copyto`` releases the GIL);
* ``async stall, no copy``: ``checkpoint_async(copy=False)`` - serialization only; the caller
  promises not to mutate the array in place until ``wait()``;
* ``async whole flush``: from the call to ``wait()`` returning (copy, 2 threads).

``ratio`` is to the sync checkpoint. Issue 13's target: stall <= 0.10x sync.
``python -m bench.bench_async``; ``blockpoint bench --only async``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["run"]

MiB = 1024 * 1024


def _median(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure the rows described in the module docstring."""
    from blockstore import open_store
    from stages import CheckpointedStageState
    from stages.checkpoint import background

    nbytes, repeat = (64 * MiB, 3) if quick else (256 * MiB, 7)
    root = tempfile.mkdtemp(prefix="bench-async-")
    threads = background.COPY_THREADS
    try:
        arr = np.random.default_rng(1).random(nbytes // 4, dtype=np.float32)
        store = open_store(os.path.join(root, "store"), block_size=MiB)
        lease = store.acquire("bench-async")
        css = CheckpointedStageState({"weights": arr, "step": 0}, lease, compression="none")
        css.checkpoint()

        def sync() -> float:
            t = time.perf_counter()
            css.checkpoint()
            return time.perf_counter() - t

        def stall(n_threads: int, copy: bool) -> Callable[[], float]:
            def once() -> float:
                background.COPY_THREADS = n_threads
                pending = css.checkpoint_async(copy=copy)
                pending.wait()
                return pending.stall_s
            return once

        def whole() -> float:
            background.COPY_THREADS = 2
            t = time.perf_counter()
            css.checkpoint_async().wait()
            return time.perf_counter() - t

        stall(2, True)()  # the snapshot buffers, allocated once
        t_sync = _median(sync, repeat)
        rows = [("sync checkpoint", t_sync),
                ("async stall, copy in 1 thread", _median(stall(1, True), repeat)),
                ("async stall, copy in 2 threads", _median(stall(2, True), repeat)),
                ("async stall, no copy", _median(stall(2, False), repeat)),
                ("async whole flush", _median(whole, repeat))]
        lease.release()
        store.close()
    finally:
        background.COPY_THREADS = threads
        shutil.rmtree(root, ignore_errors=True)
    return [{"op": op, "mib": nbytes // MiB, "seconds": s, "ratio": s / t_sync}
            for op, s in rows]


if __name__ == "__main__":
    from blockpoint.table import print_rows

    out = run(quick="--quick" in sys.argv)
    print_rows([{k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in r.items()}
                for r in out], list(out[0]))
