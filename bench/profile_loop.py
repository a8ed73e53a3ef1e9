"""A loop of steady-state checkpoints or restores to run under a profiler (``bench/notes/``).

    py-spy record --idle --nonblocking --threads -r 250 -f raw -o out.txt -- \\
        python -m bench.profile_loop [checkpoint|restore] [--mib 256] [--repeat 40] [--key K]

Two checkpoints are taken first (the lease sized, both slots written), then ``--repeat``
checkpoints (or restores of the newest generation) of a float32 state of ``--mib`` MiB on a
FileStore with 1 MiB blocks in a temporary directory. Prints the mean seconds per call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings

import numpy as np


def main() -> None:
    from blockstore import open_store
    from stages import CheckpointedStageState

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["checkpoint", "restore"], nargs="?", default="checkpoint")
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--repeat", type=int, default=40)
    p.add_argument("--key", default=None)
    args = p.parse_args()
    key = args.key.encode() if args.key else None
    root = tempfile.mkdtemp(prefix="bp-profile-")
    try:
        arr = np.random.default_rng(0).random(args.mib * (1 << 20) // 4, dtype=np.float32)
        with open_store(os.path.join(root, "s"), block_size=1 << 20) as store:
            lease = store.acquire("profile")
            css = CheckpointedStageState({"w": arr}, lease, key=key)
            css.checkpoint()
            css.checkpoint()
            reader = store.open_reader(lease.lease_id)
            warnings.simplefilter("ignore")  # the unauthenticated-restore warning
            t = time.perf_counter()
            for _ in range(args.repeat):
                if args.mode == "checkpoint":
                    css.checkpoint()
                else:
                    CheckpointedStageState.restore(reader, key=key)
            print(f"{args.mode}: {(time.perf_counter() - t) / args.repeat:.4f} s per call")
            lease.release()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
