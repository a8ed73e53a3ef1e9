"""Routing records to the instances of a parallel stage, and putting their outputs back in order.

A stage with ``StageSpec(parallelism=N)`` runs as N instance actors
(``stages/actors/instance.py``). Each record belongs to one instance:

* **keyed** (``key=...``): record ``r`` belongs to the instance whose key-group range
  (``stages/checkpoint/keygroups.py``) holds ``key_group(key(r), max_parallelism)``;
* **keyless**: record ``j`` of the stage's input stream (counted over every batch since
  the start of the run, a counter each instance keeps in its checkpointed state) belongs to
  instance ``j % N`` - round robin, record by record.

How a batch reaches the instances:

* **split by the producer** (keyed, N > 1, when the producer is the source or a single
  instance whose only reader is the keyed stage): the producer hashes each record once and
  sends each instance only its :class:`Share` - the records it owns, their positions in the
  batch and their key groups (:func:`split`; a stage returns the N shares as N objects,
  ``num_returns=N``, so each instance fetches only its own);
* **broadcast** otherwise (keyless, or a producer whose output has other readers or that is
  itself parallel): every instance receives the whole batch and keeps its own records; each
  deserialises and hashes every record of the batch.

Each instance answers with a :class:`Part`: the outputs of each record it kept, tagged with
the record's position in the batch. :func:`merge_parts` of the N parts of one batch is the
batch's output in input order - the very list one instance would have produced - so the
next stage (and the sink) see the same order at every parallelism, and a keyed stage's
committed output does not depend on its parallelism at all. A split changes none of this:
a share's positions are the batch's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..checkpoint.keygroups import instance_of_group, key_group
from ..errors import KeyGroupError

__all__ = ["Part", "Share", "Splitting", "merge_parts", "record_key", "shaped", "split"]

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


@dataclass(frozen=True, slots=True)
class Splitting:
    """How a producer splits a batch for a keyed stage: its ``key``, ``parallelism`` and
    ``max_parallelism`` (the stage's)."""

    key: KeySpec
    parallelism: int
    max_parallelism: int


@dataclass(frozen=True, slots=True)
class Share:
    """The records of one batch that one instance of a keyed stage owns, split by the
    producer.

    Attributes:
        n: records in the whole batch.
        index: the instance the share is for.
        indices: positions (in the batch, ascending) of ``records``.
        groups: the key group of each of ``records``.
        records: the records themselves.
    """

    n: int
    index: int
    indices: tuple[int, ...]
    groups: tuple[int, ...]
    records: list[Any]


def split(records: Sequence[Any], how: Splitting) -> list[Share]:
    """``records`` split into one :class:`Share` per instance (each record hashed once).
    A record without its key is :class:`KeyGroupError` naming it (see :func:`record_key`)."""
    p, m, key = how.parallelism, how.max_parallelism, how.key
    owner = [instance_of_group(g, p, m) for g in range(m)]
    indices: list[list[int]] = [[] for _ in range(p)]
    groups: list[list[int]] = [[] for _ in range(p)]
    mine: list[list[Any]] = [[] for _ in range(p)]
    for j, record in enumerate(records):
        g = key_group(record_key(key, record), m)
        i = owner[g]
        indices[i].append(j)
        groups[i].append(g)
        mine[i].append(record)
    n = len(records)
    return [Share(n, i, tuple(indices[i]), tuple(groups[i]), mine[i]) for i in range(p)]


def shaped(out: Any, encode: Any, how: Splitting | None, *, parallel: bool) -> Any:
    """A stage's output as the next hop takes it: split into one :class:`Share` per instance
    of the keyed reader (``how``), or encoded for the sink (``encode``, a plain stage's list
    of records: an ``EncodedBatch``; the sink's own error is left for its commit)."""
    from .batches import EncodedBatch, to_records

    if how is not None:
        return tuple(split(to_records(out), how))
    if encode is not None and not parallel and isinstance(out, list):
        try:
            return EncodedBatch(encode(out), len(out))
        except Exception:  # noqa: BLE001 - the sink's error: raised by its commit
            return out
    return out


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
