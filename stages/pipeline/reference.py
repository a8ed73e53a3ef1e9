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
from .graph import SOURCE, Graph
from .source import Source

__all__ = ["run_reference"]


def run_reference(source: Source, stages: Sequence[StageSpec | Callable[[], Any]],
                  *, batch_size: int = 1024, outputs: Sequence[str] | None = None
                  ) -> Any:
    """The output of a failure-free run, computed in this process without Ray or storage.

    ``stages`` are specs or zero-argument factories of :class:`~stages.actors.actor.Stage`;
    records go through them as in a pipeline - a chain, or the DAG the specs' ``inputs``
    make, with the pipeline's order of calls (``stages/pipeline/graph.py``); batch stages
    get batches of ``batch_size`` rows, parallel stages as :class:`_Runner` says.

    Returns:
        The last listed stage's output as a list of records (a table's rows as dicts); with
        ``outputs`` (stage ids), ``{stage_id: records}`` of each.
    """
    ids = [_id(s, i) for i, s in enumerate(stages)]
    if not ids and outputs is None:  # no stage: the source's records as they are
        batches, pos = [], source.initial_position()
        while True:
            batch, pos = source.read(pos, batch_size)
            if not num_rows(batch):
                return to_records(concat(batches))
            batches.append(batch)
    if len(set(ids)) != len(ids):
        raise ValueError(f"stage ids must be unique, got {ids}")
    specs_only = all(isinstance(s, StageSpec) for s in stages)
    if not specs_only and any(isinstance(s, StageSpec) and s.inputs is not None
                              for s in stages):
        raise ValueError("a graph (specs with inputs) needs specs for every stage, not "
                         "factories: a list with a factory is a chain")
    wanted = list(outputs) if outputs is not None else [ids[-1]]
    if len(set(wanted)) != len(wanted) or not set(wanted) <= set(ids):
        raise ValueError(f"outputs must be distinct stages of {ids}, got {wanted}")
    runners = {sid: _Runner(s) for sid, s in zip(ids, stages)}
    if specs_only:
        graph = Graph(stages, wanted)  # type: ignore[arg-type]
        order, inputs = graph.order, graph.inputs
    else:  # factories: a chain
        order = tuple(ids)
        inputs = {sid: ((ids[i - 1],) if i else (SOURCE,)) for i, sid in enumerate(ids)}
    got: dict[str, list[Any]] = {sid: [] for sid in wanted}
    pos = source.initial_position()
    while True:
        batch, pos = source.read(pos, batch_size)
        if not num_rows(batch):
            out = {sid: to_records(concat(v)) for sid, v in got.items()}
            return out if outputs is not None else out[wanted[0]]
        outs: dict[str, list[Any]] = {SOURCE: [batch]}
        for sid in order:
            outs[sid] = [runners[sid].run(b) for name in inputs[sid] for b in outs[name]]
        for sid in wanted:
            got[sid].extend(outs[sid])


def _id(stage: StageSpec | Callable[[], Any], i: int) -> str:
    return stage.stage_id if isinstance(stage, StageSpec) else f"stage-{i}"


class _Runner:
    """One stage of the reference run, as its pipeline would run it (without instances).

    A keyed stage keeps one dict for every key (its state starts empty, as each key group's
    does; a stage that changes only the record's key - the keyed contract - gives the same
    outputs as with its keys spread over groups and instances). A keyless parallel stage of
    N instances keeps N states and gives record ``j`` of its input to state ``j % N``.
    """

    def __init__(self, stage: StageSpec | Callable[[], Any]) -> None:
        spec = stage if isinstance(stage, StageSpec) else None
        self.impl = spec.factory() if spec is not None else stage()  # type: ignore[operator]
        self.keyed = spec is not None and spec.key is not None
        self.n = spec.parallelism if spec is not None and not self.keyed else 1
        self.states = ([{}] if self.keyed else
                       [self.impl.initial_state() for _ in range(self.n)])
        self.seen = 0

    def run(self, batch: Any) -> Any:
        if self.n == 1:
            return run_stage(self.impl, self.states[0], batch)
        out: list[Any] = []
        for record in to_records(batch):
            out.extend(self.impl.process(self.states[self.seen % self.n], record))
            self.seen += 1
        return out
