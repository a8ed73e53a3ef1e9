"""Batch stages against record stages and Ray Data; the Parquet path against plain pyarrow.

Two questions, each answered in one run (issue 21's targets: batch stages >= 10x record
stages on the demo work; the Parquet path >= 0.8x plain pyarrow):

* **records/s of the demo work.** The demo's three stages (``blockpoint/demo_job.py``:
  Normalize -> KeyedAggregates -> Scorer, per-key state, a 4 MiB histogram) over the same
  generated events stored as Parquet files, read by a ``ParquetSource`` and written by a
  ``ParquetSink`` (fsync'd, committed exactly once), on a local Ray with 2 CPUs and the file
  store, one barrier at the end only (``CheckpointPolicy()``, as ``bench_pipeline``'s ``off``:
  the data path, not the commits; with the default policy, a barrier every 4,096 records,
  each step's commit - three stage checkpoints, the sink's Parquet write and fsyncs, the run
  record - took ~80 ms, and both kinds of stage were bound by it):
  ``record`` - the record stages (each stage iterates rows as dicts, lists of dicts cross
  Ray's object store); ``batch`` - the same computation as batch stages
  (``bench/batch_work.py``: numpy over columns, Arrow tables between stages; the same
  output, checked by ``tests/test_bench_batch.py``); ``ray_data`` - Ray Data's
  ``read_parquet -> map_batches -> write_parquet`` doing the stateless part only
  (``stateless_part``), since Ray Data keeps no per-key state exactly once: a reference
  for the engine's cost, not the same job. Pipelines are timed from their ``started`` to
  their ``done`` event; Ray Data from the call to the end of the write.
* **Parquet MB/s.** A ``ParquetSource`` -> one pass-through batch stage -> ``ParquetSink``
  pipeline over wide files (8 float64 columns) against a plain pyarrow loop reading each
  file (``pq.read_table``) and writing it (``pq.write_table``, zstd, fsync'd) in the driver:
  MB of input Parquet per second.

``python -m bench.bench_batch [--quick] [--events N] [--repeat R] [--demo-only]``;
``blockpoint bench --only batch``.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["run", "write_events", "write_wide"]


def write_events(directory: Path, n: int, files: int = 4) -> None:
    """The demo's generated events (``GeneratedSource(seed=2026, keys=16)``) as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stages import GeneratedSource

    directory.mkdir(parents=True, exist_ok=True)
    src = GeneratedSource(seed=2026, n=n, keys=16)
    per = -(-n // files)
    for f in range(files):
        rows = [src.event(i) for i in range(f * per, min(n, (f + 1) * per))]
        pq.write_table(pa.Table.from_pylist(rows), directory / f"part-{f:03d}.parquet")


def write_wide(directory: Path, rows: int, files: int = 4) -> int:
    """Files of ``rows`` rows in all (an int64 id, 8 float64 columns); their total bytes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(21)
    per = -(-rows // files)
    for f in range(files):
        n = min(per, rows - f * per)
        cols = {"id": np.arange(f * per, f * per + n)}
        cols.update({f"x{c}": rng.standard_normal(n) for c in range(8)})
        pq.write_table(pa.table(cols), directory / f"part-{f:03d}.parquet")
    return sum(p.stat().st_size for p in directory.glob("*.parquet"))


def _pipeline(work: Path, inputs: Path, stages: list[Any], batch_size: int) -> dict[str, Any]:
    from blockstore import open_store
    from stages import CheckpointPolicy, ParquetSink, ParquetSource, Pipeline, StageSpec

    store_url = str(work / "store")
    open_store(store_url, block_size=1 << 20).close()
    specs = [StageSpec(f"s{n}", factory, store_url, resources={"num_cpus": 0.5},
                       compression="none") for n, factory in enumerate(stages)]
    pipe = Pipeline(ParquetSource(inputs), specs, ParquetSink(work / "out"),
                    batch_size=batch_size, max_in_flight=4, call_timeout=300.0,
                    policy=CheckpointPolicy())
    res = pipe.run()
    if not res.finished:
        raise RuntimeError(f"pipeline over {inputs} did not finish")
    t = {e.kind: e.at for e in res.events if e.kind in ("started", "done")}
    return {"records": res.records_in, "seconds": t["done"] - t["started"]}


def _ray_data(work: Path, inputs: Path) -> dict[str, Any]:
    import ray.data

    from .batch_work import stateless_part

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # stdout carries the bench's JSON
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(str(inputs)).map_batches(stateless_part, batch_format="numpy")
    ds.write_parquet(str(work / "ray-data-out"))
    seconds = time.perf_counter() - t0
    n = ray.data.read_parquet(str(work / "ray-data-out")).count()
    return {"records": n, "seconds": seconds}


def _plain_pyarrow(work: Path, inputs: Path) -> float:
    import pyarrow.parquet as pq

    out = work / "plain-out"
    out.mkdir()
    t0 = time.perf_counter()
    for path in sorted(inputs.glob("*.parquet")):
        table = pq.read_table(path)
        target = out / path.name
        pq.write_table(table, target, compression="zstd")
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def run(quick: bool = False, repeat: int | None = None, events: int | None = None,
        demo_only: bool = False) -> list[dict[str, Any]]:
    """One row per case (medians of ``repeat``) with its ratio to the reference case;
    ``events`` overrides the demo's size, ``demo_only`` skips Ray Data and the Parquet
    MB/s cases."""
    import ray

    from blockpoint.demo_job import KeyedAggregates, Normalize, Scorer

    from .batch_work import BatchAggregates, BatchNormalize, BatchScorer, Passthrough

    repeat = repeat or (1 if quick else 3)
    events = events or (8_000 if quick else 300_000)
    wide_rows = 20_000 if quick else 2_000_000
    batch_size = 32_768
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=400 * 1024 * 1024)
    root = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    rates: dict[str, list[float]] = {k: [] for k in ("record", "batch", "ray_data")
                                     if not (demo_only and k == "ray_data")}
    mbps: dict[str, list[float]] = {"pipeline": [], "pyarrow": []}
    try:
        write_events(root / "events", events)
        wide_bytes = 0 if demo_only else write_wide(root / "wide", wide_rows)
        record = [Normalize, functools.partial(KeyedAggregates, 4), Scorer]
        batch = [BatchNormalize, functools.partial(BatchAggregates, 4), BatchScorer]
        for r in range(repeat):
            for case, stages in (("record", record), ("batch", batch)):
                got = _pipeline(Path(tempfile.mkdtemp(dir=root)), root / "events", stages,
                                batch_size)
                rates[case].append(got["records"] / got["seconds"])
            if demo_only:
                print(f"bench batch: round {r + 1} of {repeat} done", file=sys.stderr,
                      flush=True)
                continue
            got = _ray_data(Path(tempfile.mkdtemp(dir=root)), root / "events")
            rates["ray_data"].append(got["records"] / got["seconds"])
            got = _pipeline(Path(tempfile.mkdtemp(dir=root)), root / "wide", [Passthrough],
                            batch_size=65_536)
            mbps["pipeline"].append(wide_bytes / got["seconds"] / 1e6)
            mbps["pyarrow"].append(wide_bytes / _plain_pyarrow(Path(tempfile.mkdtemp(dir=root)),
                                                                root / "wide") / 1e6)
            print(f"bench batch: round {r + 1} of {repeat} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if started:
            ray.shutdown()
    rec = statistics.median(rates["record"])
    plain = statistics.median(mbps["pyarrow"]) if mbps["pyarrow"] else 0.0
    notes = {"record": "record stages, exactly once", "batch": "batch stages, exactly once",
             "ray_data": "stateless part only: Ray Data keeps no exactly-once state"}
    rows: list[dict[str, Any]] = [
        {"case": f"demo work: {case}", "records": events, "batch_size": batch_size,
         "records_per_s": statistics.median(v), "runs": [round(x) for x in v],
         "vs_record": statistics.median(v) / rec, "note": notes[case]}
        for case, v in rates.items()]
    rows += [{"case": f"parquet: {case}", "records": wide_rows, "mb": round(wide_bytes / 1e6, 1),
              "mb_per_s": statistics.median(v), "runs": [round(x, 1) for x in v],
              "vs_pyarrow": statistics.median(v) / plain,
              "note": ("ParquetSource -> pass-through -> ParquetSink, exactly once"
                       if case == "pipeline" else "read_table + write_table + fsync, driver")}
             for case, v in mbps.items() if v]
    return rows


if __name__ == "__main__":
    import argparse

    from blockpoint.table import print_rows

    ap = argparse.ArgumentParser(prog="python -m bench.bench_batch")
    ap.add_argument("--quick", action="store_true", help="8,000 events, one round")
    ap.add_argument("--events", type=int, help="demo events (default 300,000)")
    ap.add_argument("--repeat", type=int, help="rounds (default 3; 1 with --quick)")
    ap.add_argument("--demo-only", action="store_true",
                    help="the record and batch cases only (no Ray Data, no Parquet MB/s)")
    args = ap.parse_args()
    rows = run(quick=args.quick, repeat=args.repeat, events=args.events,
               demo_only=args.demo_only)
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    print_rows([{k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in r.items()}
                for r in rows], cols)
