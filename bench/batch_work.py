"""The demo's three stages written as batch stages (``pyarrow`` batches), for bench_batch.

Each computes exactly what its record twin in ``blockpoint/demo_job.py`` computes - the same
output rows and the same state - but per batch, with numpy over whole columns instead of
Python per record:

* ``BatchNormalize``: the per-key sequence number is the key's running count (a stable sort
  by key, the rank within each key's run, plus the count carried in the state);
* ``BatchAggregates``: per-key running count/sum/min/max by segmented cumulative sums and
  ``ufunc.accumulate`` over each key's slice (a loop over the distinct keys of the batch,
  not over records), the histogram by ``np.add.at``;
* ``BatchScorer``: the EWMA recurrence rounds at every step (``round(..., 6)``), so it is not
  a closed form; it runs per key over a Python list of that key's values (plain float
  arithmetic, the same operations in the same order as the record stage), and the flag is
  vectorised.

``tests/test_bench_batch.py`` checks that each chain gives the record chain's output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["BatchAggregates", "BatchNormalize", "BatchScorer", "Passthrough", "stateless_part"]


def _groups(keys: Any) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(order, distinct keys, start, end) of a key column: ``order`` sorts rows by key
    stably; the rows of distinct key ``j`` are ``order[start[j]:end[j]]``, in input order."""
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(keys).combine_chunks()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(enc.dictionary))
    end = np.cumsum(counts)
    return order, enc.dictionary.to_pylist(), end - counts, end


class BatchNormalize:
    """``Normalize`` as a batch stage: ``seq`` is the key's running count."""

    batch_format = "pyarrow"

    def initial_state(self) -> dict[str, int]:
        return {}

    def process_batch(self, state: dict[str, int], table: Any) -> Any:
        import pyarrow as pa

        order, names, start, end = _groups(table.column("key"))
        seq = np.empty(table.num_rows, np.int64)
        for j, key in enumerate(names):
            rows = order[start[j]:end[j]]
            base = state.get(key, 0)
            seq[rows] = np.arange(base + 1, base + 1 + len(rows))
            state[key] = base + len(rows)
        value = table.column("value").cast(pa.int64())
        return pa.table({"i": table.column("i"), "key": table.column("key"),
                         "seq": pa.array(seq), "value": value})


class BatchAggregates:
    """``KeyedAggregates`` as a batch stage (the same state layout: ``agg`` and ``hist``)."""

    batch_format = "pyarrow"

    def __init__(self, sketch_mib: int = 32, keys: int = 16) -> None:
        self.keys = keys
        self.bins = max(1, sketch_mib * 1024 * 1024 // 8 // keys)

    def initial_state(self) -> dict[str, Any]:
        return {"agg": {}, "hist": np.zeros((self.keys, self.bins), dtype=np.float64)}

    def process_batch(self, state: dict[str, Any], table: Any) -> Any:
        import pyarrow as pa

        v = table.column("value").to_numpy()
        order, names, start, end = _groups(table.column("key"))
        n = table.num_rows
        count, total = np.empty(n, np.int64), np.empty(n, np.int64)
        low, high = np.empty(n, np.int64), np.empty(n, np.int64)
        rows_of_hist = np.empty(n, np.int64)
        for j, key in enumerate(names):
            rows = order[start[j]:end[j]]
            vals = v[rows]
            a = state["agg"].setdefault(key, [0, 0, int(vals[0]), int(vals[0])])
            count[rows] = a[0] + np.arange(1, len(rows) + 1)
            total[rows] = a[1] + np.cumsum(vals)
            low[rows] = np.minimum.accumulate(np.minimum(vals, a[2]))
            high[rows] = np.maximum.accumulate(np.maximum(vals, a[3]))
            a[0], a[1] = int(count[rows[-1]]), int(total[rows[-1]])
            a[2], a[3] = int(low[rows[-1]]), int(high[rows[-1]])
            rows_of_hist[rows] = int(key[1:]) % self.keys
        np.add.at(state["hist"], (rows_of_hist, (v * 7919) % self.bins), 1.0)
        return pa.table({"i": table.column("i"), "key": table.column("key"),
                         "seq": table.column("seq"), "value": table.column("value"),
                         "count": count, "sum": total, "min": low, "max": high})


class BatchScorer:
    """``Scorer`` as a batch stage: the rounded EWMA per key, the flag vectorised."""

    batch_format = "pyarrow"

    def initial_state(self) -> dict[str, float]:
        return {}

    def process_batch(self, state: dict[str, float], table: Any) -> Any:
        import pyarrow as pa

        v = table.column("value").to_numpy()
        order, names, start, end = _groups(table.column("key"))
        ewma = np.empty(table.num_rows, np.float64)
        for j, key in enumerate(names):
            rows = order[start[j]:end[j]]
            vals = v[rows].tolist()
            prev = state.get(key, float(vals[0]))
            out = []
            for x in vals:
                prev = round(0.9 * prev + 0.1 * x, 6)
                out.append(prev)
            state[key] = prev
            ewma[rows] = out
        return table.append_column("ewma", pa.array(ewma)).append_column(
            "unusual", pa.array(np.abs(v - ewma) > 400))


class Passthrough:
    """A batch stage that forwards its table unchanged (the Parquet path's stage)."""

    batch_format = "pyarrow"

    def initial_state(self) -> None:
        return None

    def process_batch(self, state: None, table: Any) -> Any:
        return table


def stateless_part(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The demo work's stateless part (for Ray Data's ``map_batches``): the value as an int,
    a score against a fixed mean and the flag - no per-key state, which Ray Data cannot
    keep exactly once."""
    value = batch["value"].astype(np.int64)
    score = np.round(0.9 * 500.0 + 0.1 * value, 6)
    return {"i": batch["i"], "key": batch["key"], "value": value, "ewma": score,
            "unusual": np.abs(value - score) > 400}
