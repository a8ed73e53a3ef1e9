"""Stages, input files and a read-along reader shared by the Parquet tests (imported by test
modules; Ray workers get these classes by value: the module registers itself with cloudpickle
on import, as tests/counters.py does, so its importers need not).

``KeyedSum`` is a keyed running aggregation as a record stage (the library's
``RunningAggregate``), written again as a batch stage in each of Ray Data's batch formats;
all of them emit the same rows. ``ReadAlong`` is a plain reader reading an output all along
a run, checking each read is a prefix of the reference.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.cloudpickle

from stages.pipeline.source import RunningAggregate

__all__ = ["KeyedSum", "KeyedSumBatch", "ReadAlong", "write_input"]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


#: Per-key running count and sum of ``value``; one output row per input row: the library's own
#: record stage (``stages/pipeline/source.py``), which the batch stage below must match.
KeyedSum = RunningAggregate


class KeyedSumBatch:
    """:class:`KeyedSum` as a batch stage taking ``batch_format`` batches."""

    def __init__(self, batch_format: str = "numpy") -> None:
        self.batch_format = batch_format

    def initial_state(self) -> dict[str, list[int]]:
        return {}

    def process_batch(self, state: dict[str, list[int]], batch: Any) -> Any:
        if self.batch_format == "pyarrow":
            cols = {c: batch.column(c).to_pylist() for c in ("i", "key", "value")}
        elif self.batch_format == "pandas":
            cols = {c: batch[c].tolist() for c in ("i", "key", "value")}
        else:
            cols = {c: batch[c].tolist() for c in ("i", "key", "value")}
        counts = np.empty(len(cols["i"]), np.int64)
        sums = np.empty(len(cols["i"]), np.int64)
        for n, (key, value) in enumerate(zip(cols["key"], cols["value"])):
            agg = state.setdefault(key, [0, 0])
            agg[0] += 1
            agg[1] += value
            counts[n], sums[n] = agg
        out = {"i": np.asarray(cols["i"], np.int64), "key": np.asarray(cols["key"], object),
               "count": counts, "sum": sums}
        if self.batch_format == "pyarrow":
            return pa.table(out)
        if self.batch_format == "pandas":
            import pandas as pd

            return pd.DataFrame(out)
        return out


def write_input(directory: Path, files: int, rows: int, *, start_file: int = 0,
                row_group_size: int = 64, keys: int = 7) -> list[Path]:
    """``files`` Parquet files of ``rows`` rows each (``i``, ``key``, ``value``), written
    hidden and renamed in (they appear complete)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for f in range(start_file, start_file + files):
        i = np.arange(f * rows, (f + 1) * rows, dtype=np.int64)
        table = pa.table({"i": i, "key": [f"k{(x * 2654435761) % keys}" for x in i.tolist()],
                          "value": (i * 7919) % 1000})
        path = directory / f"part-{f:05d}.parquet"
        pq.write_table(table, directory / f"_{path.name}", row_group_size=row_group_size)
        os.replace(directory / f"_{path.name}", path)
        out.append(path)
    return out


class ReadAlong:
    """A thread calling ``read`` over and over while the ``with`` body runs (a run going on).

    Each read's length is kept in ``observed``; a read that is not a prefix of ``ref`` has its
    length kept in ``wrong`` too. Leaving the block stops the thread and joins it.
    """

    def __init__(self, read: Callable[[], list[dict[str, Any]]],
                 ref: list[dict[str, Any]]) -> None:
        self.read = read
        self.ref = ref
        self.observed: list[int] = []
        self.wrong: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rows = self.read()
            if rows != self.ref[:len(rows)]:  # not a prefix of the output
                self.wrong.append(len(rows))
            self.observed.append(len(rows))

    def __enter__(self) -> ReadAlong:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
