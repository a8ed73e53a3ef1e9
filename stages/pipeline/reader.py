"""The source read by an actor of its own: no record of the push data path crosses the driver.

``Pipeline(..., data_path="push", source_reader=True)``: a :class:`SourceReader` actor holds
the (picklable) source, reads it from the positions the driver names and sends each batch -
split by key group for a keyed first stage, as the driver would - straight to the first
stages' instances. The driver gets back, per batch, its record count, the position after it
and the references of the pushes (for its backpressure); it still decides the steps, injects
the barriers and commits.

Steps stay the driver's: a :meth:`SourceReader.feed` reads at most the batches the driver has
room for, and stops after the batch that reaches the record count the barrier policy is
waiting for - exactly where the driver, reading itself, would have injected the barrier. A
time trigger is seen once the feed returns (a feed is at most ``max_in_flight`` batches).

The reader is placed on the node of the first stage's first instance (soft), so the batches
go through that node's shared object store. A lost reader loses nothing: its pushes fail, the
pipeline recovers as from any failure and starts another reader at the rewind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from ..actors.batches import num_rows
from .instances import split_source

__all__ = ["SourceReader", "start_reader"]


class SourceReader:
    """Reads the source and pushes each batch to the first stages (one per attempt)."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._attempt: int | None = None
        self._graph: Any = None
        #: per first stage: (its instances' handles, the source's place among its inputs)
        self._first: list[tuple[list[Any], int]] = []
        self._split = False

    def ping(self) -> bool:
        return True

    def wire(self, attempt: int, graph: Any, first: Sequence[tuple[list[Any], int]],
             split: bool) -> bool:
        """Start ``attempt``: where batches go, and whether the source's are split."""
        self._attempt, self._graph, self._first, self._split = attempt, graph, list(first), split
        return True

    def feed(self, attempt: int, step: int, seq: int, position: Any, batch_size: int,
             batches: int, records: int | None
             ) -> tuple[list[tuple[int, Any, dict[int, list[Any]]]], Exception | None]:
        """Read and push up to ``batches`` batches of ``step`` from ``position``, numbered
        from ``seq``, stopping after the one that reaches ``records`` records (``None``: no
        such stop) or at the source's end; per batch: its rows, the position after it and
        the pushes' references per first stage (by its index in the wiring). An empty read
        ends the list with ``(0, position, {})``. What the source's read (or the split of
        its batch) raised comes back beside the batches pushed before it, for the driver to
        raise as itself - as it would have, reading itself."""
        if attempt != self._attempt:
            raise RuntimeError(f"the reader is wired for attempt {self._attempt}, not "
                               f"{attempt}")
        out: list[tuple[int, Any, dict[int, list[Any]]]] = []
        total = 0
        for k in range(batches):
            try:
                got, after = self._source.read(position, batch_size)
                n = num_rows(got)
                shares = (split_source(self._graph, got, position)
                          if n and self._split and isinstance(got, list) else None)
            except Exception as exc:  # noqa: BLE001 - the source's own error, raised by the driver
                return out, exc
            if not n:
                out.append((0, position, {}))
                break
            refs: dict[int, list[Any]] = {}
            for i, (insts, j) in enumerate(self._first):
                if shares is not None:
                    refs[i] = [h.push.remote(attempt, step, [(seq + k, (j,), 0, share)])
                               for h, share in zip(insts, shares)]
                else:
                    payload = ray.put(got) if len(insts) > 1 else got
                    refs[i] = [h.push.remote(attempt, step, [(seq + k, (j,), 0, payload)])
                               for h in insts]
            out.append((n, after, refs))
            position = after
            total += n
            if records is not None and total >= records:
                break
        return out, None


def start_reader(source: Any, node_id: str | None) -> Any:
    """A :class:`SourceReader` actor (no CPU reserved), near ``node_id`` if given."""
    opts: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_task_retries": 0}
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
    return ray.remote(SourceReader).options(**opts).remote(source)
