"""Benchmark: LangGraph checkpointer put/get latency - ``BlockpointSaver`` against
LangGraph's ``InMemorySaver`` and its SQLite saver.

What a LangGraph run pays per super-step is one ``put`` (the checkpoint) and one
``put_writes`` per task, and a resume pays one ``get_tuple``. This measures the three calls
on one thread with a small, steady checkpoint (a list of ten 100-character messages and a
counter, both changing every step), so the figures are per-call overhead, not bandwidth.

Contenders: ``InMemorySaver`` (no durability: the floor), ``SqliteSaver`` on a file
(``langgraph-checkpoint-sqlite``, SQLite's defaults: a durable commit per call), and
``BlockpointSaver`` on the memory store (our overhead without I/O) and on the file store
(durable: one record write and one fsync per change; every ~16 changes at 64 KiB blocks
one of them also folds the log into a snapshot, which costs more with more retained
history), with the default retention (64 checkpoints) and with 8. Each case does ``n``
put + put_writes + get_tuple rounds on a fresh saver; the median and the mean of each call
are reported in milliseconds, and each p50 as a multiple of SqliteSaver's in the same run
(``*_x_sqlite``: below 1 is faster).
Contenders whose package is not installed are skipped. On a shared VM the file figures vary
with the disk; compare rows of one run.

Run ``blockpoint bench --only langgraph`` or ``python -m bench.bench_langgraph [--quick]`` for
a table; :func:`run` returns the rows.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

__all__ = ["run"]


def _checkpoint(step: int) -> dict[str, Any]:
    from langgraph.checkpoint.base.id import uuid6

    return {
        "v": 1, "id": str(uuid6(clock_seq=step)), "ts": datetime.now(timezone.utc).isoformat(),
        "channel_values": {"messages": [f"{step:04d}" + "m" * 96] * 10, "counter": step},
        "channel_versions": {"messages": step + 1, "counter": step + 1},
        "versions_seen": {"agent": {"messages": step}}, "pending_sends": [],
        "updated_channels": None,
    }


@contextmanager
def _savers(kind: str, root: str) -> Iterator[Any]:
    if kind == "InMemorySaver":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
    elif kind == "SqliteSaver (file)":
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(f"{root}/lg.sqlite", check_same_thread=False)
        try:
            yield SqliteSaver(conn)
        finally:
            conn.close()
    else:
        from blockpoint_langgraph import BlockpointSaver

        url = (f"memory://bench-langgraph-{uuid.uuid4().hex}" if "memory" in kind
               else f"{root}/store")
        retention = 8 if "retention 8" in kind else 64
        saver = BlockpointSaver(url, block_size=64 * 1024, retention=retention)
        try:
            yield saver
        finally:
            saver.close()


CONTENDERS = ["InMemorySaver", "SqliteSaver (file)", "BlockpointSaver (memory)",
              "BlockpointSaver (file)", "BlockpointSaver (file, retention 8)"]


def _ms(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples) * 1e3, statistics.fmean(samples) * 1e3


def _case(saver: Any, n: int) -> dict[str, float]:
    timings: dict[str, list[float]] = {"put": [], "put_writes": [], "get_tuple": []}
    thread = {"configurable": {"thread_id": "bench", "checkpoint_ns": ""}}
    parent: str | None = None

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name].append(time.perf_counter() - t0)
        return out

    for step in range(n):
        cp = _checkpoint(step)
        config = {"configurable": {**thread["configurable"],
                                   **({"checkpoint_id": parent} if parent else {})}}
        stored = timed("put", lambda: saver.put(config, cp, {"source": "loop", "step": step,
                                                              "parents": {}},
                                                 dict(cp["channel_versions"])))
        parent = stored["configurable"]["checkpoint_id"]
        timed("put_writes", lambda: saver.put_writes(stored, [("messages", "w" * 100)],
                                                      f"task-{step}"))
        got = timed("get_tuple", lambda: saver.get_tuple(thread))
        assert got is not None and got.checkpoint["id"] == cp["id"]
    row: dict[str, float] = {}
    for name, samples in timings.items():
        row[f"{name}_ms_p50"], row[f"{name}_ms_mean"] = _ms(samples)
    return row


def run(quick: bool = False, n: int | None = None) -> list[dict[str, Any]]:
    """One row per installed contender: p50 and mean ms of put, put_writes, get_tuple."""
    rounds = n if n is not None else (30 if quick else 200)
    rows: list[dict[str, Any]] = []
    for kind in CONTENDERS:
        root = tempfile.mkdtemp(prefix="bp-lgbench-")
        try:
            with _savers(kind, root) as saver:
                rows.append({"saver": kind, "rounds": rounds, **_case(saver, rounds)})
        except ImportError as exc:
            rows.append({"saver": kind, "skipped": f"not installed ({exc.name})"})
        finally:
            shutil.rmtree(root, ignore_errors=True)
    sqlite = next((r for r in rows if r["saver"] == "SqliteSaver (file)" and
                   "skipped" not in r), None)
    for row in rows:
        if sqlite is not None and "skipped" not in row:
            for name in ("put", "put_writes", "get_tuple"):
                row[f"{name}_x_sqlite"] = row[f"{name}_ms_p50"] / sqlite[f"{name}_ms_p50"]
    return rows


COLUMNS = ["saver", "rounds", "put_ms_p50", "put_ms_mean", "put_writes_ms_p50",
           "put_writes_ms_mean", "get_tuple_ms_p50", "get_tuple_ms_mean", "put_x_sqlite",
           "put_writes_x_sqlite", "get_tuple_x_sqlite", "skipped"]


def main() -> None:
    from blockpoint.table import print_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            for r in run(quick=args.quick)]
    print_rows(rows, COLUMNS)


if __name__ == "__main__":
    main()
