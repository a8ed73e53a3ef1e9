"""Profile of incremental checkpoints (bench/notes/incremental.md): 256 MiB float32 on a
FileStore with 1 MiB blocks, 3 changed blocks per checkpoint, 40 checkpoints under
pyinstrument (a bench tool: ``pip install pyinstrument``, not a dependency)."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from pyinstrument import Profiler

from blockstore import open_store
from stages import CheckpointedStageState

MiB = 1 << 20
arr = np.random.default_rng(0).random(64 * MiB, dtype=np.float32)
root = tempfile.mkdtemp()
try:
    store = open_store(os.path.join(root, "s"), block_size=MiB)
    # full_every large: every profiled checkpoint is incremental
    css = CheckpointedStageState({"w": arr}, store.acquire("inc"), incremental=True,
                                 full_every=10**6)
    css.checkpoint()
    rng = np.random.default_rng(1)

    def change() -> None:
        for b in rng.choice(256, 3, replace=False):
            arr[int(b) * (MiB // 4) + 5] += 1

    ts = []
    for _ in range(5):
        change()
        t = time.perf_counter()
        css.checkpoint()
        ts.append(time.perf_counter() - t)
    print("median", statistics.median(ts))
    p = Profiler(interval=0.0005)
    p.start()
    for _ in range(40):
        change()
        css.checkpoint()
    p.stop()
    print(p.output_text(unicode=False, color=False, show_all=False))
    store.close()
finally:
    shutil.rmtree(root, ignore_errors=True)
