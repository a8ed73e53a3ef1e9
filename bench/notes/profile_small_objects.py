"""Where a checkpoint of 1 M small tuples spends its time, next to pickle + fsync (bench/notes/small_objects.md)."""
import os
import pickle
import statistics
import tempfile
import time

import zstandard
from blockstore import FileStore
from stages import CheckpointedStageState

state = {i: (i, f"k{i % 1000}", i * 0.5) for i in range(1_000_000)}
d = tempfile.mkdtemp()
def med(f, n=5):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
def pk_fsync():
    with open(os.path.join(d, "p.pkl"), "wb") as fh:
        pickle.dump(state, fh, protocol=5); fh.flush(); os.fsync(fh.fileno())
blob = pickle.dumps(state, protocol=5)
cctx = zstandard.ZstdCompressor(level=1)
store = FileStore(os.path.join(d, "s"), 1 << 20)
lease = store.acquire("small")
css = CheckpointedStageState(state, lease)
css.checkpoint()
rows = {
 "pickle.dump + fsync": med(pk_fsync),
 "pickle.dumps alone (one thread)": med(lambda: pickle.dumps(state, protocol=5)),
 "zstd level 1 of the pickled bytes (one thread)": med(lambda: cctx.compress(blob)),
 "blockpoint checkpoint": med(css.checkpoint),
}
print(f"pickled {len(blob)/2**20:.1f} MiB; zstd-1 -> {len(cctx.compress(blob))/2**20:.1f} MiB")
base = rows["pickle.dump + fsync"]
for k, v in rows.items():
    print(f"| {k} | {v:.3f} | {v/base:.2f} |")
