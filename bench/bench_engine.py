"""The engine's own cost: one 3-stage job as a plain loop, a hand-rolled chain of Ray actors,
and ``Pipeline`` with checkpoints off and on (issue 20 item 5's rows).

The work: ``GeneratedSource`` events (16 keys) -> ``Enrich`` -> ``RunningAggregate`` ->
``Enrich`` (``stages/pipeline/source.py``), batches of 256, on a local Ray with 4 CPUs
(``--quick``: 12,000 events, else 300,000). Every case gets the same records out (checked):

* ``loop``: the three stages' ``process`` applied in one Python loop, one core, no Ray -
  what the work itself costs;
* ``hand-rolled chain``: three plain Ray actors (``num_cpus=0.5``) each running one stage
  over a batch; the driver reads the source, submits batch ``b`` to the first actor and
  passes the returned ref to the next (the data goes actor to actor), keeps 8 batches in
  flight and gets the last actor's outputs - no checkpoint, no lease, no commit: the
  least a chain of actors can cost;
* ``hand-rolled chain, JSONL``: the same, the last actor returning its output as JSON lines
  (the ``FileSink``'s encoding) and the driver appending them to a file - the chain that
  writes the output a pipeline writes;
* ``pipeline off``: ``Pipeline`` of the three as ``StageSpec``s (file store, ``num_cpus=0.5``,
  8 batches in flight, a ``FileSink`` without fsync), one barrier at the end;
* ``pipeline on``: the same with a barrier every 15,000 records (6,000 quick);
* ``push off`` / ``push on``: the same two on ``data_path="push"`` - the driver feeds the
  first stage only, each stage pushes to the next and the last to the sink writer
  (``stages/pipeline/pushing.py``); ``push off, reader``: with the source read by a reader
  actor (``source_reader=True``), the driver reading nothing.

records/s over the whole run of each case (for the pipeline: its ``started`` to ``done``
events, stage launch excluded); medians of ``repeat`` (default 3), cases interleaved per
round. Ratios: ``vs chain`` (pipeline off / hand-rolled chain; the target is >= 0.9),
``vs chain, JSONL`` (pipeline off / the chain writing the same output) and
``vs off`` (on / off; the target is >= 0.9), the same for the push rows and ``vs pipeline
off`` (push off / pipeline off). ``python -m bench.bench_engine``;
``blockpoint bench --only engine``.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from typing import Any

__all__ = ["run"]

BATCH = 256
IN_FLIGHT = 8


def _stages() -> list[Any]:
    from stages.pipeline.source import Enrich, RunningAggregate

    return [Enrich(), RunningAggregate(), Enrich(field="count")]


def _apply(stage: Any, state: Any, batch: list[Any]) -> list[Any]:
    out: list[Any] = []
    for rec in batch:
        out.extend(stage.process(state, rec))
    return out


def loop(events: int) -> tuple[float, list[Any]]:
    """Seconds and outputs of the plain loop."""
    from stages import GeneratedSource

    src = GeneratedSource(seed=2026, n=events, keys=16)
    stages = _stages()
    states = [s.initial_state() for s in stages]
    outs: list[Any] = []
    t = time.perf_counter()
    pos = src.initial_position()
    while True:
        batch, pos = src.read(pos, BATCH)
        if not batch:
            break
        for s, st in zip(stages, states):
            batch = _apply(s, st, batch)
        outs.extend(batch)
    return time.perf_counter() - t, outs


class _PlainStage:
    """One stage in a plain Ray actor: its state in memory, nothing durable; ``lines``: its
    output returned as JSON lines (the FileSink's encoding)."""

    def __init__(self, index: int, lines: bool = False) -> None:
        self.stage = _stages()[index]
        self.state = self.stage.initial_state()
        self.lines = lines

    def process_batch(self, batch: list[Any]) -> Any:
        out = _apply(self.stage, self.state, batch)
        if self.lines:
            from stages.pipeline.sink import encode_jsonl

            return encode_jsonl(out)
        return out


def chain(events: int, out_file: str | None = None) -> tuple[float, list[Any]]:
    """Seconds and outputs of the hand-rolled chain (actors started before the clock);
    ``out_file``: the last actor encodes JSON lines and the driver appends them there."""
    import json

    import ray

    from stages import GeneratedSource

    cls = ray.remote(num_cpus=0.5)(_PlainStage)
    actors = [cls.remote(i, out_file is not None and i == 2) for i in range(3)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    src = GeneratedSource(seed=2026, n=events, keys=16)
    outs: list[Any] = []
    pending: deque[Any] = deque()
    t = time.perf_counter()
    f = open(out_file, "wb") if out_file is not None else None  # noqa: SIM115
    pos = src.initial_position()
    done = False
    while not done or pending:
        while not done and len(pending) < IN_FLIGHT:
            batch, pos = src.read(pos, BATCH)
            if not batch:
                done = True
                break
            ref: Any = batch
            for a in actors:
                ref = a.process_batch.remote(ref)
            pending.append(ref)
        if pending:
            got = ray.get(pending.popleft())
            if f is not None:
                f.write(got)
            else:
                outs.extend(got)
    if f is not None:
        f.close()
    seconds = time.perf_counter() - t
    for a in actors:
        ray.kill(a)
    if out_file is not None:
        with open(out_file, encoding="utf-8") as fh:
            outs = [json.loads(line) for line in fh]
    return seconds, outs


def pipeline(events: int, every: int | None, root: str, data_path: str = "driver",
             source_reader: bool = False) -> tuple[float, list[Any], dict[str, Any]]:
    """Seconds, outputs and figures of one ``Pipeline`` run (``every``: None = off;
    ``data_path``: the driver submits every call, or the stages push)."""
    from blockstore import open_store
    from stages import CheckpointPolicy, FileSink, GeneratedSource, Pipeline, StageSpec
    from stages.pipeline.source import Enrich, RunningAggregate

    work = tempfile.mkdtemp(prefix="engine-", dir=root)
    url = os.path.join(work, "store")
    open_store(url).close()
    res_opts = {"num_cpus": 0.5}
    specs = [StageSpec("enrich", Enrich, url, resources=res_opts, compression="none"),
             StageSpec("agg", RunningAggregate, url, resources=res_opts, compression="none"),
             StageSpec("stamp", functools.partial(Enrich, field="count"), url,
                       resources=res_opts, compression="none")]
    policy = CheckpointPolicy() if every is None else CheckpointPolicy(every_records=every)
    sink = FileSink(os.path.join(work, "out"), fsync=False)
    pipe = Pipeline(GeneratedSource(seed=2026, n=events, keys=16), specs, sink,
                    batch_size=BATCH, max_in_flight=IN_FLIGHT, policy=policy,
                    call_timeout=120.0, data_path=data_path, source_reader=source_reader)
    try:
        res = pipe.run()
        outs = sink.read_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not res.finished:
        raise RuntimeError(f"pipeline run did not finish: {res}")
    t = {e.kind: e.at for e in res.events if e.kind in ("started", "done")}
    return t["done"] - t["started"], outs, {"steps": res.committed_step,
                                             "checkpoints": res.checkpoints}


def run(quick: bool = False, repeat: int | None = None,
        events: int | None = None) -> list[dict[str, Any]]:
    """One row per case: median records/s, the runs, and the ratios of issue 20 item 5."""
    import ray

    repeat = repeat or (1 if quick else 3)
    events = events or (12_000 if quick else 300_000)
    every = 6_000 if quick else 15_000
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 object_store_memory=300 * 1024 * 1024)
    root = tempfile.mkdtemp(prefix="bench-engine-")
    rates: dict[str, list[float]] = {c: [] for c in
                                     ("loop", "hand-rolled chain", "hand-rolled chain, JSONL",
                                      "pipeline off", "pipeline on", "push off",
                                      "push on", "push off, reader")}
    extra: dict[str, dict[str, Any]] = {}
    try:
        _, want = loop(events)
        for _ in range(repeat):
            s, out = loop(events)
            rates["loop"].append(events / s)
            s, out = chain(events)
            _same(out, want, "hand-rolled chain")
            rates["hand-rolled chain"].append(events / s)
            s, out = chain(events, os.path.join(root, "chain.jsonl"))
            _same(out, want, "hand-rolled chain, JSONL")
            rates["hand-rolled chain, JSONL"].append(events / s)
            for case, ev, path in (("pipeline off", None, "driver"),
                                   ("pipeline on", every, "driver"),
                                   ("push off", None, "push"), ("push on", every, "push"),
                                   ("push off, reader", None, "push")):
                s, out, fig = pipeline(events, ev, root, path, case.endswith("reader"))
                _same(out, want, case)
                rates[case].append(events / s)
                extra[case] = fig
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if started:
            ray.shutdown()
    med = {c: statistics.median(v) for c, v in rates.items()}
    rows = []
    for case, v in rates.items():
        row: dict[str, Any] = {"case": case, "events": events, "records_per_s": round(med[case]),
                               "runs": [round(x) for x in v]}
        if case == "pipeline off":
            row["vs chain"] = round(med[case] / med["hand-rolled chain"], 3)
            row["vs chain, JSONL"] = round(med[case] / med["hand-rolled chain, JSONL"], 3)
        if case == "pipeline on":
            row["vs off"] = round(med[case] / med["pipeline off"], 3)
            row["every_records"] = every
        if case == "push off, reader":
            row["vs push off"] = round(med[case] / med["push off"], 3)
        if case == "push off":
            row["vs chain"] = round(med[case] / med["hand-rolled chain"], 3)
            row["vs pipeline off"] = round(med[case] / med["pipeline off"], 3)
        if case == "push on":
            row["vs off"] = round(med[case] / med["push off"], 3)
            row["every_records"] = every
        row.update(extra.get(case, {}))
        rows.append(row)
    return rows


def _same(out: list[Any], want: list[Any], case: str) -> None:
    if out != want:
        raise AssertionError(f"{case}: {len(out)} records out, not the loop's {len(want)} "
                             "(or not the same ones)")


if __name__ == "__main__":
    from blockpoint.table import print_rows

    rows = run(quick="--quick" in sys.argv)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print_rows([{k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in r.items()}
                for r in rows], cols)
