"""The reference output of a pipeline: what a failure-free run commits.

Exactly-once is checked by comparison: a pipeline's committed output, across any failures,
must equal this record for record (for deterministic stages). It runs the stages' own code
in this process, without Ray, storage or checkpoints, so it shares nothing with the
machinery it checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..actors.actor import StageSpec
from ..actors.batches import concat, num_rows, run_stage, to_records
from .source import Source

__all__ = ["run_reference"]


def run_reference(source: Source, stages: Sequence[StageSpec | Callable[[], Any]],
                  *, batch_size: int = 1024) -> list[Any]:
    """The output of a failure-free run, computed in this process without Ray or storage.

    ``stages`` are specs or zero-argument factories of :class:`~stages.actors.actor.Stage`; each
    record goes through every stage in order, as in a pipeline (batch stages get batches of
    ``batch_size`` rows). The output is a list of records (a table's rows as dicts).
    """
    impls = [(s.factory() if isinstance(s, StageSpec) else s()) for s in stages]
    states = [impl.initial_state() for impl in impls]
    out: list[Any] = []
    pos = source.initial_position()
    while True:
        batch, pos = source.read(pos, batch_size)
        if not num_rows(batch):
            return to_records(concat(out))
        for impl, state in zip(impls, states):
            batch = run_stage(impl, state, batch)
        out.append(batch)
