"""Replayable sources, and the generated event stream used by the tests and the demo.

A pipeline is exactly-once only if its input can be read again from a recorded position:
after a failure it rolls every stage back to the last committed step and re-reads from that
step's source position. So a :class:`Source` is a pure function of its position:
``read(position, max_n) -> (records, new_position)``, the same records for the same position
every time, positions being small JSON values stored in every checkpoint's metadata.

:class:`GeneratedSource` produces a deterministic event stream (``seed``, ``n`` events, each
``{"i", "key", "value"}``) by hashing the event index, so any position is reachable in O(1)
and two runs with the same seed see the same events. :class:`RunningAggregate` and
:class:`Enrich` are two small stateful stages over that stream (per-key running sums and a
running sequence number), used by the tests and ``blockpoint demo``; they live here with the
stream they consume so that Ray workers can import them from the installed package.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Enrich", "GeneratedSource", "RunningAggregate", "Source"]

_MASK = (1 << 64) - 1


@runtime_checkable
class Source(Protocol):
    """A replayable input: the same position always yields the same records."""

    def initial_position(self) -> Any:
        """Where a new run starts (JSON-able)."""
        ...

    def read(self, position: Any, max_n: int) -> tuple[list[Any], Any]:
        """Up to ``max_n`` records from ``position`` and the position after them.

        The records are a list, or a batch (a ``pyarrow.Table``: its rows are the records;
        ``stages/actors/batches.py``). An empty one means the source is exhausted - unless
        the source also has ``exhausted(position) -> bool`` (a followed directory,
        ``stages/pipeline/files.py``) and it says no: then there is nothing *yet*; the
        driver commits what it read and asks again after ``wait_for_more()``.
        """
        ...


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@dataclass(frozen=True, slots=True)
class GeneratedSource:
    """``n`` deterministic events; the position is the index of the next event.

    Event ``i``: ``{"i": i, "key": "k<h % keys>", "value": h % 1000}`` with ``h`` a hash of
    ``(seed, i)``.
    """

    seed: int
    n: int
    keys: int = 16

    def initial_position(self) -> int:
        return 0

    def event(self, i: int) -> dict[str, Any]:
        h = _mix((self.seed * 0x100000001B3) ^ i)
        return {"i": i, "key": f"k{h % self.keys}", "value": (h >> 20) % 1000}

    def read(self, position: Any, max_n: int) -> tuple[list[dict[str, Any]], int]:
        start = int(position)
        end = min(self.n, start + max(0, int(max_n)))
        return [self.event(i) for i in range(start, end)], end

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.n):
            yield self.event(i)


class RunningAggregate:
    """Per-key running count and sum; emits ``{"i", "key", "count", "sum"}`` per event."""

    def initial_state(self) -> dict[str, list[int]]:
        return {}

    def process(self, state: dict[str, list[int]], record: dict[str, Any]
                ) -> Iterator[dict[str, Any]]:
        agg = state.setdefault(record["key"], [0, 0])
        agg[0] += 1
        agg[1] += record["value"]
        yield {"i": record["i"], "key": record["key"], "count": agg[0], "sum": agg[1]}


class Enrich:
    """Stamps each record with a running sequence number ``seq`` (state: the counter).

    With ``drop_odd``, records whose ``field`` is odd are dropped (a filter with state).
    """

    def __init__(self, drop_odd: bool = False, field: str = "value") -> None:
        self.drop_odd = drop_odd
        self.field = field

    def initial_state(self) -> dict[str, int]:
        return {"seq": 0}

    def process(self, state: dict[str, int], record: dict[str, Any]
                ) -> Iterator[dict[str, Any]]:
        if self.drop_odd and record.get(self.field, 0) % 2:
            return
        state["seq"] += 1
        yield {**record, "seq": state["seq"]}
