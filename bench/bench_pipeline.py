"""What checkpoints cost a pipeline: the demo pipeline's records/s with them on and off.

The pipeline is the demo's (``blockpoint/demo.py``): a generated stream of events ->
``Normalize`` -> ``KeyedAggregates`` (64 MiB histogram state) -> ``Scorer`` -> a
``FileSink`` (fsync'd), batches of 500, 4 batches in flight, stages with half a CPU each
and ``compression="none"``, on a local Ray with 2 CPUs and the file store. Modes, every one
in the same run, interleaved (off, sync, async, off, ...), medians of ``repeat``:

* ``off``: no barrier but the final one that closes the stream (one checkpoint per stage
  at the very end: the least a pipeline that commits its output at all can do);
* ``sync``: a barrier every 15,000 records; each stage's checkpoint is durable before its
  ``checkpoint`` call returns (the data path of that stage waits for the flush);
* ``async``: the same barriers with ``StageSpec(async_checkpoints=True)``: a stage
  acknowledges its barrier after a snapshot and flushes in the background; the driver
  commits the step once every flush is durable (``stages/pipeline/barrier.py``).

records/s is records committed over the time from the pipeline's ``started`` event to its
``done`` event (stage launch and Ray start-up excluded; every commit, sink write and fsync
included); ``steps`` lists the committed steps of every run - an async run commits fewer
when a background flush outlasts 15,000 records (the next barrier waits for the previous
step's commit), which makes it cheaper, so compare rates only where the steps agree; ``cpu_s`` is the CPU seconds the three stage actors and the driver used in that
window (``/proc``; Ray's own daemons not counted). No scheduler is attached (its flush observer adds ~1 ms per flush). Issue 13's
target: on >= 0.9x off.

``python -m bench.bench_pipeline`` prints the rows; ``blockpoint bench --only pipeline`` too.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import sys
import tempfile
from typing import Any

__all__ = ["run", "run_once"]

MODES = ("off", "sync", "async")


def run_once(mode: str, root: str, *, events: int, every: int, sketch_mib: int = 64,
             batch_size: int = 500) -> dict[str, Any]:
    """One pipeline run in ``mode`` under ``root`` (Ray must be up); its figures."""
    from blockpoint.demo import KeyedAggregates, Normalize, Scorer
    from blockstore import open_store
    from stages import CheckpointPolicy, FileSink, GeneratedSource, Pipeline, StageSpec

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    work = tempfile.mkdtemp(prefix=f"{mode}-", dir=root)
    store_url = os.path.join(work, "store")
    open_store(store_url, block_size=1 << 20).close()

    def spec(sid: str, factory: Any) -> StageSpec:
        return StageSpec(sid, factory, store_url, resources={"num_cpus": 0.5},
                         compression="none", async_checkpoints=mode == "async")

    specs = [spec("normalize", Normalize),
             spec("aggregate", functools.partial(KeyedAggregates, sketch_mib)),
             spec("score", Scorer)]
    policy = CheckpointPolicy() if mode == "off" else CheckpointPolicy(every_records=every)
    cpu: dict[str, float] = {}
    pids: dict[str, int] = {}

    def on_event(ev: Any) -> None:  # CPU seconds of the stage actors and the driver
        import ray

        if ev.kind == "started":
            pids.update({sid: ray.get(h.info.remote())["pid"] for sid, h in
                         pipe.handles.items()}, driver=os.getpid())
            cpu.update({k: -_cpu_s(pid) for k, pid in pids.items()})
        elif ev.kind == "done":
            cpu.update({k: cpu[k] + _cpu_s(pid) for k, pid in pids.items()})

    pipe = Pipeline(GeneratedSource(seed=2026, n=events, keys=16), specs,
                    FileSink(os.path.join(work, "output")), batch_size=batch_size,
                    max_in_flight=4, policy=policy, call_timeout=120.0, on_event=on_event)
    try:
        res = pipe.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t = {e.kind: e.at for e in res.events if e.kind in ("started", "done")}
    seconds = t["done"] - t["started"]
    return {"mode": mode, "records": res.records_in, "seconds": seconds,
            "records_per_s": res.records_in / seconds, "steps": res.committed_step,
            "checkpoints": res.checkpoints, "finished": res.finished,
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()}}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def run(quick: bool = False, repeat: int | None = None, events: int | None = None,
        every: int | None = None) -> list[dict[str, Any]]:
    """Measure every mode ``repeat`` times (``quick``: 12,000 events, a barrier every 6,000,
    a 16 MiB sketch, once; else a barrier every 15,000 and 64 MiB); one row per mode with
    the median records/s and its ratio to ``off``."""
    import ray

    repeat = repeat or (1 if quick else 3)
    events = events or (12_000 if quick else 300_000)
    every = every or (6_000 if quick else 15_000)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=300 * 1024 * 1024)
    root = tempfile.mkdtemp(prefix="bench-pipeline-")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        for _ in range(repeat):
            for mode in MODES:
                r = run_once(mode, root, events=events, every=every,
                             sketch_mib=16 if quick else 64)
                if not r["finished"]:
                    raise RuntimeError(f"pipeline run {mode} did not finish: {r}")
                runs[mode].append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if started:
            ray.shutdown()
    off = statistics.median(r["records_per_s"] for r in runs["off"])
    rows = []
    for mode in MODES:
        rates = [r["records_per_s"] for r in runs[mode]]
        med = statistics.median(rates)
        rows.append({"mode": mode, "events": events, "every_records": every,
                     "steps": [r["steps"] for r in runs[mode]],
                     "stage_checkpoints": statistics.median(r["checkpoints"]
                                                            for r in runs[mode]),
                     "records_per_s": med, "runs": [round(x) for x in rates],
                     "seconds": statistics.median(r["seconds"] for r in runs[mode]),
                     "cpu_s": statistics.median(sum(r["cpu_s"].values()) for r in runs[mode]),
                     "vs_off": med / off})
    return rows


if __name__ == "__main__":
    from blockpoint.table import print_rows

    rows = run(quick="--quick" in sys.argv)
    print_rows([{k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in r.items()}
                for r in rows], list(rows[0]))
