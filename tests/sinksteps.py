"""The Parquet sink's protocol tests' steps, shared by the local and the S3 sink tests.

Both sinks are driven through the same calls (``fence``, ``commit``, ``publish``,
``discard_after``) with the same small steps, and read back by a plain Parquet reader: the
rows a step writes, the rows a reader should see, and the sequences both files play are
written here once so the two backends are held to the same outcomes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from stages import FenceToken

__all__ = ["discard_after_first_of_four", "expect", "rows", "seen_in", "step_pairs"]


def rows(step: int, n: int = 5) -> pa.Table:
    """Step ``step``'s rows: ``n`` rows of (``step``, ``j``)."""
    return pa.table({"step": [step] * n, "j": list(range(n))})


def expect(*steps: int, n: int = 5) -> list[tuple[int, int]]:
    """The sorted (step, j) pairs a reader sees once ``steps`` (of ``n`` rows) are published."""
    return sorted((s, j) for s in steps for j in range(n))


def step_pairs(table: pa.Table) -> list[tuple[int, int]]:
    """A read table's (step, j) pairs, sorted; empty for a table of no rows."""
    if not table.num_rows:
        return []
    return sorted(zip(table.column("step").to_pylist(), table.column("j").to_pylist()))


def seen_in(directory: Path) -> list[tuple[int, int]]:
    """What a Parquet reader that knows nothing of the sink sees in ``directory``, sorted."""
    return step_pairs(ds.dataset(directory, format="parquet").to_table())


def discard_after_first_of_four(sink: Any) -> FenceToken:
    """Fence ``sink`` for a fresh run, commit and publish steps 1 to 3, commit step 4, then
    fall back to step 1: ``discard_after`` must name steps 2, 3 and 4. Returns the token."""
    t = FenceToken("run", 1)
    sink.fence(t, 0)
    for s in (1, 2, 3):
        sink.commit(s, rows(s), token=t)
        sink.publish(s, token=t)
    sink.commit(4, rows(4), token=t)
    assert sink.discard_after(1, token=t) == [2, 3, 4]
    return t
