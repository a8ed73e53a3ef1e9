"""Routing records to the instances of a parallel stage, and putting their outputs back in order.

A stage with ``StageSpec(parallelism=N)`` runs as N instance actors
(``stages/actors/instance.py``). While the driver is still in the data path (issue 20 item 5
moves it out), every instance receives the whole upstream batch and keeps its own records:

* **keyed** (``key=...``): record ``r`` belongs to the instance whose key-group range
  (``stages/checkpoint/keygroups.py``) holds ``key_group(key(r), max_parallelism)``;
* **keyless**: record ``j`` of the stage's input stream (counted over every batch since
  the start of the run, a counter each instance keeps in its checkpointed state) belongs to
  instance ``j % N`` - round robin, record by record.

Each instance answers with a :class:`Part`: the outputs of each record it kept, tagged with
the record's position in the batch. :func:`merge_parts` of the N parts of one batch is the
batch's output in input order - the very list one instance would have produced - so the
next stage (and the sink) see the same order at every parallelism, and a keyed stage's
committed output does not depend on its parallelism at all.

Why broadcast, not split: the split needs no routing task and no per-instance batch, the
order is restored without a sequence number per record, and each instance's keyless
counter advances over the same stream. The cost is that each instance deserialises and
hashes every record of the batch (N times the routing work); the instances' own work - the
stage's ``process`` and their checkpoints - is divided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import KeyGroupError

__all__ = ["Part", "merge_parts", "record_key"]

#: What ``StageSpec.key`` may be: a record field's name, or a function of the record.
KeySpec = str | Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Part:
    """One instance's share of one batch's output.

    Attributes:
        n: records in the input batch (every instance saw the same ``n``).
        indices: positions (in the input batch, ascending) of the records this instance kept.
        outputs: per kept record, the list of its outputs.
    """

    n: int
    indices: tuple[int, ...]
    outputs: tuple[list[Any], ...]


def merge_parts(parts: Sequence[Any]) -> Any:
    """The batch that ``parts`` make, in input order.

    A single batch that is not a :class:`Part` (a plain stage's output, or the source's) is
    returned as it is; the parts of one batch are merged by their indices. Mixing the two,
    or parts of batches of different lengths, is a ``ValueError`` (a routing bug, never
    data to guess at).
    """
    if len(parts) == 1 and not isinstance(parts[0], Part):
        return parts[0]
    if not parts or not all(isinstance(p, Part) for p in parts):
        raise ValueError(f"cannot merge {[type(p).__name__ for p in parts]}: the inputs of a "
                         "stage are one batch or the parts of one batch")
    n = parts[0].n
    if any(p.n != n for p in parts):
        raise ValueError(f"parts of batches of different lengths: {[p.n for p in parts]}")
    slots: list[Sequence[Any]] = [()] * n
    for p in parts:
        for j, out in zip(p.indices, p.outputs):
            slots[j] = out
    return [r for out in slots for r in out]


def record_key(key: KeySpec, record: Any) -> Any:
    """The key of ``record``: ``record[key]`` for a field name, ``key(record)`` for a
    function. A record without the field is :class:`KeyGroupError` naming the record (the
    run stops: replaying it would fail again)."""
    if callable(key):
        return key(record)
    try:
        return record[key]
    except (KeyError, IndexError, TypeError) as exc:
        raise KeyGroupError(f"record {_short(record)} has no key field {key!r} "
                            f"({type(exc).__name__})") from None


def _short(record: Any) -> str:
    text = repr(record)
    return text if len(text) <= 200 else text[:197] + "..."
