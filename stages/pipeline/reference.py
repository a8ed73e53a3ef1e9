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
from .source import Source

__all__ = ["run_reference"]


def run_reference(source: Source, stages: Sequence[StageSpec | Callable[[], Any]],
                  *, batch_size: int = 1024) -> list[Any]:
    """The output of a failure-free run, computed in this process without Ray or storage.

    ``stages`` are specs or zero-argument factories of :class:`~stages.actors.actor.Stage`; each
    record goes through every stage in order, as in a pipeline.
    """
    impls = [(s.factory() if isinstance(s, StageSpec) else s()) for s in stages]
    states = [impl.initial_state() for impl in impls]
    out: list[Any] = []
    pos = source.initial_position()
    while True:
        records, pos = source.read(pos, batch_size)
        if not records:
            return out
        for impl, state in zip(impls, states):
            nxt: list[Any] = []
            for r in records:
                nxt.extend(impl.process(state, r))
            records = nxt
        out.extend(records)
