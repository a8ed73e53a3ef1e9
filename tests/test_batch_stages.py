"""Batch stages: the same output as record stages, in every batch format (no Ray).

``stages/actors/batches.py``: ``run_stage`` is what the stage actor and ``run_reference`` both
run, so a keyed aggregation written as a batch stage (numpy, pyarrow, pandas batches) and
as a record stage give the same rows, whatever the batch size, from a Parquet source (tables)
and from a record source (lists).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from parquet_stages import KeyedSum, KeyedSumBatch, write_input

from stages import GeneratedSource, ParquetSource, run_reference
from stages.actors.batches import (
    batch_format_of,
    concat,
    run_stage,
    to_format,
    to_table,
)


@pytest.mark.parametrize("fmt", ["numpy", "pyarrow", "pandas"])
def test_batch_stage_equals_record_stage(fmt: str, tmp_path: Path) -> None:
    write_input(tmp_path / "in", files=3, rows=150)
    src = ParquetSource(tmp_path / "in")
    want = run_reference(src, [KeyedSum], batch_size=1000)
    assert len(want) == 450 and want[0].keys() == {"i", "key", "count", "sum"}
    for batch_size in (1, 37, 1000):
        got = run_reference(src, [lambda: KeyedSumBatch(fmt)], batch_size=batch_size)
        assert got == want, (fmt, batch_size)
    # Mixed chains: batch -> record and record -> batch stages meet through conversions.
    gen = GeneratedSource(seed=3, n=300, keys=5)
    plain = run_reference(gen, [KeyedSum], batch_size=64)
    assert run_reference(gen, [lambda: KeyedSumBatch(fmt)], batch_size=64) == plain


def test_formats_and_conversions() -> None:
    table = pa.table({"a": [1, 2, 3], "t": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]})
    assert to_format(table, "pyarrow") is table
    arrays = to_format(table, "numpy")
    assert isinstance(arrays["a"], np.ndarray) and arrays["a"].tolist() == [1, 2, 3]
    assert to_format(table, "pandas")["a"].tolist() == [1, 2, 3]
    assert to_table({"a": np.arange(3), "m": np.ones((3, 2))}).num_rows == 3
    assert concat([[{"a": 1}], [{"a": 2}]]) == [{"a": 1}, {"a": 2}]
    mixed = to_table([{"a": 1}, {"a": 2, "b": "x"}])  # a later row's column is kept
    assert mixed.to_pylist() == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]
    assert concat([[{"a": 1}], pa.table({"a": [2]})]).column("a").to_pylist() == [1, 2]

    class Bad:
        batch_format = "arrow"

        def process_batch(self, state: object, batch: object) -> object:
            return batch

    with pytest.raises(ValueError, match="batch_format"):
        batch_format_of(Bad())
    assert batch_format_of(KeyedSum()) is None and batch_format_of(KeyedSumBatch()) == "numpy"
    assert run_stage(KeyedSumBatch(), {}, []) == []  # an empty batch never reaches the stage
