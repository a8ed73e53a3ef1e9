"""What ``@checkpointed`` costs a Ray actor, against a plain Ray actor in the same run.

Rows (``ratio`` is checkpointed / plain):

* ``call, no checkpoint due``: sequential round trips ``ray.get(a.add.remote(1))`` (the
  latency a caller sees) and ``pipelined`` (N calls submitted, then one ``ray.get``: the
  actor's own per-call cost dominates), microseconds per call. The decorated actor has no
  policy (``every_calls=None``), so this is the decorator's bookkeeping alone; a plain actor
  declaring the same concurrency groups is measured too (Ray runs such an actor's default
  group on a thread of its own, which changes the cost of a call by itself).
* ``checkpoint 64 MiB``: ``ray.get(a.checkpoint.remote())`` of a 64 MiB float32 array (a
  durable, verified generation) against a plain actor method doing ``np.save`` to a new
  file + fsync of the file and its directory - the hand-written checkpoint it replaces.
  Seconds, best of ``repeat``, steady state (after a first checkpoint sized the lease).

Needs Ray; starts a local one (2 CPUs) when none is running and shuts it down after.
``python -m bench.bench_actor`` prints the rows; ``blockpoint bench --only actor`` too.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

from .limits import best as _best

__all__ = ["run"]

MiB = 1024 * 1024


class _Plain:
    def __init__(self, nbytes: int, path: str) -> None:
        self.state = {"n": 0, "w": np.random.default_rng(0).random(nbytes // 4,
                                                                   dtype=np.float32)}
        self.path = path

    def add(self, k: int) -> int:
        self.state["n"] += k
        return self.state["n"]

    def save(self) -> int:
        """The hand-written durable save: np.save to a new file, fsync it and its dir."""
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, self.state["w"])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return self.state["n"]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure (``quick``: fewer calls, best of two, a 16 MiB state); returns the rows
    described above."""
    import ray

    from stages import checkpointed

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = tempfile.mkdtemp(prefix="bench-actor-")
    n_calls, repeat = (100, 2) if quick else (2000, 3)
    nbytes = (16 if quick else 64) * MiB
    try:
        plain_cls = ray.remote(_Plain)
        # the same concurrency groups as the decorated actor: Ray then runs the default group
        # on its own thread, which alone changes the per-call cost; this row isolates it
        grouped_cls = ray.remote(concurrency_groups=checkpointed.GROUPS)(_Plain)
        ckpt_cls = ray.remote(concurrency_groups=checkpointed.GROUPS)(
            checkpointed(store=os.path.join(root, "store"), key="bench-actor",
                         block_size=1 * MiB)(_Plain))
        plain = plain_cls.remote(nbytes, os.path.join(root, "plain.npy"))
        grouped = grouped_cls.remote(8, os.path.join(root, "unused.npy"))
        ckpt = ckpt_cls.remote(nbytes, os.path.join(root, "unused.npy"))
        ray.get([plain.add.remote(0), grouped.add.remote(0), ckpt.add.remote(0)])
        actors = (("plain", plain), ("plain, same concurrency groups", grouped),
                  ("checkpointed", ckpt))
        rows: list[dict[str, Any]] = []
        for mode in ("sequential", "pipelined"):
            per: dict[str, float] = {}
            for label, h in actors:
                if mode == "sequential":
                    def go(h: Any = h) -> None:
                        for _ in range(n_calls):
                            ray.get(h.add.remote(1))
                else:
                    def go(h: Any = h) -> None:
                        ray.get([h.add.remote(1) for _ in range(n_calls)])
                go()  # warm-up
                per[label] = _best(go, repeat) / n_calls * 1e6
            for label, _ in actors:
                rows.append({"case": f"call, no checkpoint due ({mode})", "actor": label,
                             "us_per_call": per[label],
                             "ratio": per[label] / per["plain"]})
        ray.get(plain.save.remote())
        ray.get(ckpt.checkpoint.remote())  # sizes the lease: steady state from here
        t_plain = _best(lambda: ray.get(plain.save.remote()), repeat)
        t_ckpt = _best(lambda: ray.get(ckpt.checkpoint.remote()), repeat)
        for label, t in (("plain np.save+fsync", t_plain), ("checkpointed", t_ckpt)):
            rows.append({"case": f"checkpoint {nbytes // MiB} MiB float32", "actor": label,
                         "seconds": t, "ratio": t / t_plain})
        for _, h in actors:
            ray.kill(h)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if started:
            ray.shutdown()


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
