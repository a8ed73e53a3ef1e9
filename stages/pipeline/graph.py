"""DAG pipelines: which stage feeds which, and one sink per output stage (issue 20 item 3).

A stage names its inputs (``StageSpec(inputs=("parse",))``; :data:`SOURCE` is the source);
without ``inputs`` it reads the stage listed before it (the first stage: the source), so a
list of specs is the chain it always was. A stage several stages read is a **fan-out**
(each gets all its output); a stage with several inputs is a **fan-in**, a union.

What a run computes (the pipeline and :func:`~stages.pipeline.reference.run_reference`
alike), per batch read from the source, stages in :attr:`Graph.order`:

* a stage makes one call per output of each of its inputs, inputs in the order it lists
  them; each call's output is one output of the stage (the source has one per batch);
* so a fan-in stage sees, for every batch, its first input's output, then its second's -
  a fixed order, the same in every run and after every recovery (replays start at a
  committed step, which ends a batch, and read the same batches again). The order depends
  on the batches: a driver resumed with another ``batch_size`` interleaves a union's
  inputs differently from then on (nothing is lost or repeated).

Barriers stay aligned without markers in the data: the driver submits every call of a
batch before the next batch's, and a stage's barrier call after every call of its step, and
an actor runs one caller's calls in submission order - so a stage checkpoints step ``s``
only after every input's records of step ``s``, and before any of ``s + 1``. A step commits
when every instance of every stage checkpointed it (as for a chain).

Output: ``Pipeline(..., sink=Sink)`` takes the last listed stage's output;
``sink={stage_id: Sink, ...}`` one sink per output stage (a stage no stage reads must
have one; any stage may have one). Several sinks are driven as one (:class:`SinkSet`):
each commits its stage's output, then the run commits the step, then each publishes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..actors.actor import StageSpec
from ..actors.routing import Splitting
from ..errors import PipelineGraphError
from .sink import FenceToken, Sink

__all__ = ["SOURCE", "Graph", "SinkSet"]

#: The name of the source among a stage's ``inputs``.
SOURCE = "source"


class Graph:
    """The stages' edges, checked: every input exists, no cycle, every output has a sink.

    Raises:
        PipelineGraphError: naming the stage and the problem - an input that is no stage,
            a stage named ``"source"``, a stage reading itself or listing an input twice,
            a cycle (its stages in order), a sink for an unknown stage, a stage whose
            output nothing reads and no sink takes.
    """

    def __init__(self, specs: Sequence[StageSpec], sinks: Sequence[str]) -> None:
        ids = [s.stage_id for s in specs]
        known = set(ids)
        self.inputs: dict[str, tuple[str, ...]] = {}
        for i, spec in enumerate(specs):
            if spec.stage_id == SOURCE:
                raise PipelineGraphError(f"a stage may not be named {SOURCE!r}: it names "
                                         "the source among a stage's inputs")
            ins = spec.inputs if spec.inputs is not None else (
                (ids[i - 1],) if i else (SOURCE,))
            if not ins:
                raise PipelineGraphError(f"stage {spec.stage_id!r} has no inputs (give "
                                         f"inputs=({SOURCE!r},) to read the source)")
            for name in ins:
                if name == spec.stage_id:
                    raise PipelineGraphError(f"stage {spec.stage_id!r} reads itself")
                if name != SOURCE and name not in known:
                    raise PipelineGraphError(f"stage {spec.stage_id!r} reads {name!r}, which "
                                             f"is not a stage of the pipeline ({ids})")
            if len(set(ins)) != len(ins):
                raise PipelineGraphError(f"stage {spec.stage_id!r} lists an input twice: "
                                         f"{list(ins)}")
            self.inputs[spec.stage_id] = tuple(ins)
        self.order: tuple[str, ...] = _topological(ids, self.inputs)
        read = {name for ins in self.inputs.values() for name in ins}
        for sid in sinks:
            if sid not in known:
                raise PipelineGraphError(f"a sink takes the output of {sid!r}, which is not a "
                                         f"stage of the pipeline ({ids})")
        unread = [sid for sid in ids if sid not in read and sid not in sinks]
        if unread:
            raise PipelineGraphError(f"the output of {unread} goes nowhere: no stage reads it "
                                     "and no sink takes it (give sink={stage_id: Sink, ...})")
        self.sinks: tuple[str, ...] = tuple(sinks)
        #: producer (a stage, or :data:`SOURCE`) -> how it splits its output for its only
        #: reader, a keyed stage of several instances (``stages/actors/routing.py``)
        self.splits: dict[str, Splitting] = _splits(specs, self.inputs, self.sinks)

    def record(self) -> dict[str, Any]:
        """The graph as a run's step records keep it (``meta["graph"]``)."""
        return {"inputs": {sid: list(ins) for sid, ins in self.inputs.items()},
                "sinks": list(self.sinks)}

    def check_resume(self, recorded: Mapping[str, Any] | None, step: int) -> None:
        """Refuse to resume a run whose committed step ``step`` was made by another graph:
        the stages' states and the sinks' output follow its edges (a union read in
        another order, a dropped input, a sink that missed the steps before). ``None``: a
        step recorded before graphs were (a chain), not checked."""
        if recorded is None:
            return
        mine = self.record()
        if dict(recorded.get("inputs", {})) != mine["inputs"] or \
                list(recorded.get("sinks", [])) != mine["sinks"]:
            raise PipelineGraphError(
                f"the run's committed step {step} was made by another graph (inputs "
                f"{recorded.get('inputs')}, sinks {recorded.get('sinks')}); this pipeline's "
                f"is inputs {mine['inputs']}, sinks {mine['sinks']}: a run keeps its graph "
                "(start a new run for another)")

    @property
    def is_chain(self) -> bool:
        """True if each stage reads the one before it (the first the source)."""
        names = list(self.inputs)
        return all(ins == ((names[i - 1],) if i else (SOURCE,))
                   for i, ins in enumerate(self.inputs.values()))


def _splits(specs: Sequence[StageSpec], inputs: Mapping[str, tuple[str, ...]],
            sinks: Sequence[str]) -> dict[str, Splitting]:
    """The producers that split their output: the source or a single-instance stage, read
    by one keyed stage of parallelism > 1 only and taken by no sink."""
    by_id = {s.stage_id: s for s in specs}
    readers: dict[str, list[str]] = {}
    for sid, ins in inputs.items():
        for name in ins:
            readers.setdefault(name, []).append(sid)
    out: dict[str, Splitting] = {}
    for name, who in readers.items():
        spec = by_id[who[0]]
        if (len(who) == 1 and spec.key is not None and spec.parallelism > 1
                and name not in sinks and (name == SOURCE or not by_id[name].parallel)):
            out[name] = Splitting(spec.key, spec.parallelism, spec.max_parallelism)
    return out


def _topological(ids: Sequence[str], inputs: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The stages in an order where each comes after its inputs (ties: as listed)."""
    done: list[str] = []
    placed = {SOURCE}
    left = list(ids)
    while left:
        ready = next((s for s in left if all(i in placed for i in inputs[s])), None)
        if ready is None:
            raise PipelineGraphError(f"the stages {_cycle(left, inputs)} form a cycle")
        done.append(ready)
        placed.add(ready)
        left.remove(ready)
    return tuple(done)


def _cycle(left: Sequence[str], inputs: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One cycle among the stages ``left`` (each has an input among them), in edge order."""
    pending = set(left)
    path: list[str] = [left[0]]
    while True:
        nxt = next(i for i in inputs[path[-1]] if i in pending)
        if nxt in path:
            ring = list(reversed(path[path.index(nxt):]))  # feeder before reader
            k = min(range(len(ring)), key=lambda j: left.index(ring[j]))
            ring = ring[k:] + ring[:k]  # from the stage listed first
            return ring + [ring[0]]
        path.append(nxt)


def _place(sink: Sink) -> str | None:
    """Where a sink keeps its output (a directory, a URL), if it says."""
    for attr in ("directory", "url"):
        where = getattr(sink, attr, None)
        if where is not None:
            return os.path.realpath(where) if attr == "directory" else str(where)
    return None


class SinkSet:
    """Several sinks driven as one: ``commit`` takes ``{stage_id: records}`` and commits each
    sink's share; every other call goes to each sink (the order of the mapping).

    Each sink keeps its own fencing and publication, so a crash between two sinks' commits
    or publishes is mended by the next ``fence`` of each, as for one sink.
    """

    def __init__(self, sinks: Mapping[str, Sink]) -> None:
        if not sinks:
            raise PipelineGraphError("sink={} names no sink")
        seen: dict[Any, str] = {}
        for sid, sink in sinks.items():
            if not isinstance(sink, Sink):
                raise PipelineGraphError(f"the sink of {sid!r} is a {type(sink).__name__}, "
                                         "not a Sink")
            # One sink per output: two stages committing a step into one sink would
            # overwrite each other's output of that step.
            for place in (("object", id(sink)), ("place", _place(sink))):
                if place[1] is None:
                    continue
                if place in seen:
                    raise PipelineGraphError(
                        f"the outputs of {seen[place]!r} and {sid!r} go to one sink"
                        f"{'' if place[0] == 'object' else ' (one place)'}: each output "
                        "stage needs a sink of its own")
                seen[place] = sid
        self.sinks: dict[str, Sink] = dict(sinks)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sinks)

    def fence(self, token: FenceToken, committed_step: int) -> None:
        for sink in self.sinks.values():
            sink.fence(token, committed_step)

    def commit(self, step: int, records: Mapping[str, Any], *,  # type: ignore[override]
               token: FenceToken | None = None) -> None:
        for sid, sink in self.sinks.items():
            sink.commit(step, records.get(sid, []), token=token)

    def publish(self, step: int, *, token: FenceToken) -> None:
        for sink in self.sinks.values():
            sink.publish(step, token=token)

    def discard_after(self, step: int, *, token: FenceToken | None = None) -> list[int]:
        dropped: set[int] = set()
        for sink in self.sinks.values():
            dropped.update(sink.discard_after(step, token=token))
        return sorted(dropped)

    def committed_steps(self) -> list[int]:
        """Steps every sink shows."""
        steps = [set(s.committed_steps()) for s in self.sinks.values()]
        return sorted(set.intersection(*steps))
