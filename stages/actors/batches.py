"""Batches between stages: records (a list) or an Arrow table; batch stages' formats.

A stage is a record stage (``process(state, record)`` yields outputs, one record at a time)
or a batch stage: it defines ``process_batch(state, batch) -> batch`` and says which format
it wants in ``batch_format``, named like Ray Data's ``map_batches(batch_format=...)``:

* ``"numpy"`` (the default): ``dict[str, numpy.ndarray]``, one array per column;
* ``"pyarrow"``: a ``pyarrow.Table``;
* ``"pandas"``: a ``pandas.DataFrame``.

It may return any of the three (or a list of record dicts, or ``None`` for nothing).

What flows between stage actors is either a **list of records** (what record stages make,
and what record sources give) or a **``pyarrow.Table``** (what batch stages and the Parquet
source make): each is converted only where a stage needs the other form - a record stage
iterates a table's rows as dicts, a batch stage gets a list as a table - so a chain of batch
stages never leaves Arrow, and a batch crosses Ray's object store as Arrow buffers. The
same conversions (:func:`run_stage`) serve the stage actor and ``run_reference``, so a batch
stage and a record stage computing the same thing commit the same output.

Why Arrow in the middle: it is Ray Data's own block format, the Parquet sink writes it
without a conversion, and a table splits by rows without copying. A later keyed stage
(records hash-partitioned into key groups) can split a batch by key group vectorised: hash
the key column (``pyarrow.compute``), take the group of every row modulo
``max_parallelism``, and ``Table.take`` the rows of each instance - no per-record Python.

A batch stage must be deterministic like any stage; its output should not depend on where
the driver cut the input into batches (``batch_size``), which may change when a run is
resumed with other settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BATCH_FORMATS", "EncodedBatch", "batch_format_of", "concat", "mark_raised",
           "num_rows", "raised_in", "run_stage", "to_format", "to_records", "to_table",
           "warm_up"]

#: The batch formats a batch stage may ask for.
BATCH_FORMATS = ("numpy", "pyarrow", "pandas")


def warm_up(stage: Any) -> None:
    """Import now what a batch stage's worker will need at its first batch: Ray's
    serializer of Arrow tables imports ``pyarrow.compute`` at the first table a worker
    sends (~0.3 s of CPU in each stage actor of ``bench_batch``, in the middle of the run's
    first batches). A record stage imports nothing."""
    if batch_format_of(stage) is not None:
        import pyarrow.compute  # noqa: F401


def batch_format_of(stage: Any) -> str | None:
    """The batch format of a batch stage (``None`` for a record stage); checked."""
    if not callable(getattr(stage, "process_batch", None)):
        return None
    fmt = getattr(stage, "batch_format", "numpy")
    if fmt == "default":
        fmt = "numpy"
    if fmt not in BATCH_FORMATS:
        raise ValueError(f"batch_format of {type(stage).__name__} must be one of "
                         f"{BATCH_FORMATS}, got {fmt!r}")
    return fmt


def _is_table(batch: Any) -> bool:
    import pyarrow as pa

    return isinstance(batch, pa.Table)


def num_rows(batch: Any) -> int:
    """Rows of a list, table, numpy dict or data frame."""
    if isinstance(batch, list):
        return len(batch)
    if isinstance(batch, dict):
        return len(next(iter(batch.values()))) if batch else 0
    if batch is None:
        return 0
    return len(batch)


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """One batch's output as its sink stores it (a sink's ``encode``, e.g. JSON lines),
    encoded by the stage that made it, and its records (rows)."""

    data: bytes
    rows: int


def to_records(batch: Any) -> list[Any]:
    """The rows of ``batch`` as a list of dicts (a list is returned as is)."""
    if isinstance(batch, list):
        return batch
    if batch is None:
        return []
    return to_table(batch).to_pylist()


def to_table(batch: Any) -> Any:
    """``batch`` as a ``pyarrow.Table`` (records as rows, a numpy dict as columns)."""
    import pyarrow as pa

    if _is_table(batch):
        return batch
    if batch is None:
        return pa.table({})
    if isinstance(batch, list):
        first = batch[0].keys() if batch and isinstance(batch[0], dict) else None
        if first is None or all(isinstance(r, dict) and r.keys() == first for r in batch):
            return pa.Table.from_pylist(batch)
        # from_pylist takes the columns of the first row only: never drop a later row's key.
        names = dict.fromkeys(k for r in batch for k in r)
        return pa.table({k: [r.get(k) for r in batch] for k in names})
    if isinstance(batch, dict):
        return pa.table({k: _column(v) for k, v in batch.items()})
    if type(batch).__module__.startswith("pandas"):
        return pa.Table.from_pandas(batch, preserve_index=False)
    raise TypeError(f"not a batch: {type(batch).__name__} (a list of records, a "
                    f"pyarrow.Table, a dict of numpy arrays or a pandas.DataFrame)")


def _column(values: Any) -> Any:
    import numpy as np
    import pyarrow as pa

    if isinstance(values, np.ndarray) and values.ndim > 1:  # a tensor column: one list per row
        return pa.array(list(values))
    return pa.array(values)


def to_format(batch: Any, fmt: str) -> Any:
    """``batch`` in a batch stage's format (see the module docstring)."""
    table = to_table(batch)
    if fmt == "pyarrow":
        return table
    if fmt == "pandas":
        return table.to_pandas()
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in table.column_names}


def run_stage(stage: Any, state: Any, batch: Any) -> Any:
    """Feed ``batch`` to ``stage``: its output, a list (record stage) or a table (batch).

    If the stage raises, the exception propagates and ``state`` may hold part of the batch.
    """
    fmt = batch_format_of(stage)
    if fmt is not None:
        if num_rows(batch) == 0:
            return []
        out = stage.process_batch(state, to_format(batch, fmt))
        return out if isinstance(out, list) else ([] if out is None else to_table(out))
    process = stage.process
    result: list[Any] = []
    for record in to_records(batch):
        result.extend(process(state, record))
    return result


def concat(batches: Sequence[Any]) -> Any:
    """One batch of ``batches`` in order: a list if all are lists, else a table."""
    if all(isinstance(b, list) for b in batches):
        return [r for b in batches for r in b]
    import pyarrow as pa

    tables = [to_table(b) for b in batches if num_rows(b)]
    if not tables:
        return []
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables,
                                                                promote_options="default")


#: the attribute naming the stage whose ``process`` raised an exception (it travels with the
#: exception's pickle, through every call that had the failed output as an argument)
_RAISED_IN = "blockpoint_stage_id"


def mark_raised(exc: BaseException, stage_id: str) -> None:
    """Note on ``exc`` that stage ``stage_id`` raised it (the first stage to note it wins)."""
    if getattr(exc, _RAISED_IN, None) is None:
        try:
            setattr(exc, _RAISED_IN, stage_id)
        except (AttributeError, TypeError):  # an exception without a __dict__
            pass


def raised_in(exc: BaseException | None) -> str | None:
    """The stage :func:`mark_raised` named on ``exc``, if any."""
    return getattr(exc, _RAISED_IN, None)
