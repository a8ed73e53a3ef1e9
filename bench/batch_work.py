"""The demo's three stages written as batch stages (``pyarrow`` batches), for bench_batch.

Each computes exactly what its record twin in ``blockpoint/demo_job.py`` computes - the same
output rows and the same state, bit for bit - but per batch, with numpy over whole columns
instead of Python per record (no Python loop over records, except the Scorer's):

* ``BatchNormalize``: the per-key sequence number is the key's running count (the row's
  occurrence index within its key in the batch plus the count carried in the state);
* ``BatchAggregates``: per-key running count/sum/min/max by cumulative sums and
  ``ufunc.accumulate`` over each key's slice (a loop over the distinct keys of the batch,
  not over records: with the demo's 16 keys this measured faster than one segmented scan
  over all keys), the histogram by ``np.add.at``;
* ``BatchScorer``: the EWMA recurrence rounds at every step (``round(..., 6)``), so it has
  no closed form and is sequential per key; it runs per key over a Python list of that
  key's values (``ewma_chain``: the same IEEE operations in the same order as the record
  stage, the rounding by ``bench/exact_round.py``'s exact float rule, ~2x cheaper than
  ``round(x, 6)``), the flag vectorised. Running all keys as numpy lanes (one step for
  every key at a time) was measured slower with the demo's 16 keys: ~2,000 steps of
  several ufunc calls on 16 elements per batch, with the exact-half products (~6 % of the
  steps) decided per element.

``tests/test_bench_batch.py`` checks that each chain gives the record chain's output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .exact_round import FAST_LIMIT, round6

__all__ = ["BatchAggregates", "BatchNormalize", "BatchScorer", "Passthrough", "ewma_chain",
           "stateless_part"]


class _Groups:
    """A key column's groups: ``codes`` (row -> distinct key), ``names``, ``counts``,
    ``order`` (rows sorted by key, stably), ``start`` (each key's first place in ``order``)
    and ``occ`` (each row's occurrence index within its key, in input order)."""

    def __init__(self, keys: Any) -> None:
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(keys).combine_chunks()
        self.codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self.names: list[str] = enc.dictionary.to_pylist()
        self.counts = np.bincount(self.codes, minlength=len(self.names))
        self.order = np.argsort(self.codes, kind="stable")
        self.start = np.cumsum(self.counts) - self.counts
        self.occ = np.empty(len(self.codes), np.int64)
        self.occ[self.order] = np.arange(len(self.codes)) - np.repeat(self.start, self.counts)

    def last_rows(self) -> np.ndarray:
        """Each key's last row (input order)."""
        return self.order[self.start + self.counts - 1]

    def first_rows(self) -> np.ndarray:
        """Each key's first row (input order)."""
        return self.order[self.start]


class BatchNormalize:
    """``Normalize`` as a batch stage: ``seq`` is the key's running count."""

    batch_format = "pyarrow"

    def initial_state(self) -> dict[str, int]:
        return {}

    def process_batch(self, state: dict[str, int], table: Any) -> Any:
        import pyarrow as pa

        g = _Groups(table.column("key"))
        base = np.array([state.get(k, 0) for k in g.names], np.int64)
        seq = base[g.codes] + g.occ + 1
        state.update(zip(g.names, (base + g.counts).tolist()))
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
        g = _Groups(table.column("key"))
        n = table.num_rows
        count, total = np.empty(n, np.int64), np.empty(n, np.int64)
        low, high = np.empty(n, np.int64), np.empty(n, np.int64)
        rows_of_hist = np.empty(n, np.int64)
        for j, key in enumerate(g.names):  # numpy per key: no Python per record
            rows = g.order[g.start[j]:g.start[j] + g.counts[j]]
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


def ewma_chain(prev: float, xs: list[float]) -> list[float]:
    """``prev = round(0.9 * prev + x, 6)`` for each ``x`` in turn (``x`` is the record's
    ``0.1 * value``): the values after each step, bit-identical to that expression.

    The rounding is ``bench/exact_round.py``'s rule in scalar form: ``rint(p) / 1e6`` with
    ``p = y * 1e6``, unless ``p`` is exactly a half-integer (the product's error decides) or
    rounds to 0 (the sign of zero): then ``round`` itself (~6 % of the demo's steps). The
    rule needs ``|p| < 2**52``: checked once for the whole chain (``|y|`` never exceeds
    ``max(|prev|, 10 |x|)``), else every step uses ``round``."""
    out: list[float] = []
    append = out.append
    bound = max(abs(prev), 10.0 * max(xs, default=0.0), -10.0 * min(xs, default=0.0))
    if not bound * 1e6 < FAST_LIMIT / 2:
        for x in xs:
            prev = round(0.9 * prev + x, 6)
            append(prev)
        return out
    rnd = round
    for x in xs:
        y = 0.9 * prev + x
        p = y * 1e6
        k = rnd(p)
        prev = k / 1e6 if k and -0.5 < p - k < 0.5 else rnd(y, 6)  # p - k is exact
        append(prev)
    return out


class BatchScorer:
    """``Scorer`` as a batch stage: the rounded EWMA per key (``ewma_chain``), the flag
    vectorised."""

    batch_format = "pyarrow"

    def initial_state(self) -> dict[str, float]:
        return {}

    def process_batch(self, state: dict[str, float], table: Any) -> Any:
        import pyarrow as pa

        v = table.column("value").to_numpy()
        g = _Groups(table.column("key"))
        first = v[g.first_rows()].tolist()
        x01 = 0.1 * v
        ewma = np.empty(len(v))
        for j, (key, f) in enumerate(zip(g.names, first)):
            rows = g.order[g.start[j]:g.start[j] + g.counts[j]]
            chain = ewma_chain(state.get(key, float(f)), x01[rows].tolist())
            ewma[rows] = chain
            state[key] = chain[-1]
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
    score = round6(0.9 * 500.0 + 0.1 * value)  # Python's round(..., 6), as the Scorer
    return {"i": batch["i"], "key": batch["key"], "value": value, "ewma": score,
            "unusual": np.abs(value - score) > 400}
