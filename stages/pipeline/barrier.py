"""One pipeline barrier in flight: from the stages' acknowledgements to a durable step.

The pipeline driver (``stages/pipeline/pipeline.py``) injects a barrier for step ``s`` as one
``checkpoint(step=s)`` call per stage, queued after the last batch of ``s``. This module
tracks that barrier until the step may be committed, in two phases per stage:

1. **Acknowledged.** The stage's ``checkpoint`` call returned. A synchronous stage returns
   the ``CheckpointInfo`` of a durable generation: done. A stage with
   ``StageSpec(async_checkpoints=True)`` returns ``{"pending": True}`` right after its
   snapshot and goes on processing the next step's records while the flush runs in the
   background.
2. **Durable.** For a pending stage, the driver then calls ``flushed(step)`` (the stage's
   ``flush`` concurrency group, so it never queues behind batches) and the stage answers
   when the flush's header is durable, with its ``CheckpointInfo`` - or raises
   ``CheckpointFailed``.

The step is committable only when every stage is durable (:attr:`Barrier.complete`): the
sink never commits output of a step whose checkpoint could still be lost. A failed or
killed background flush surfaces as a failure of the ``flushed`` call, which the driver
treats like any stage failure: the step is never committed, every stage rolls back to the
previous committed step, and the source replays from there (fail-closed). While a barrier
waits for its flushes, batches of later steps keep flowing; the next barrier is injected
only after this one committed, so each stage has at most one flush in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import ray

__all__ = ["Barrier"]

#: ``(object ref, stage id) -> result``: the driver's ``ray.get`` that sorts failures.
Getter = Callable[[Any, str], Any]


@dataclass(slots=True)
class Barrier:
    """The barrier of ``step``: each stage's acknowledgement, then its durable info.

    Attributes:
        step: the pipeline step.
        position: the source position after the step's last record.
        records: records read in the step.
        acks: stage id -> reference of its ``checkpoint`` call.
        durable: stage id -> reference of its ``flushed`` call (pending stages only).
        infos: stage id -> the ``CheckpointInfo`` dict of its durable generation.
        acked: stages whose ``checkpoint`` call returned.
        commit: the step's commit, running in the driver's committer thread once the
            barrier is complete (``stages/pipeline/committing.py``); ``None`` before.
    """

    step: int
    position: Any
    records: int
    acks: dict[str, Any]
    durable: dict[str, Any] = field(default_factory=dict)
    infos: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    commit: Future[int] | None = None

    @property
    def complete(self) -> bool:
        """True once every stage's checkpoint of the step is durable."""
        return len(self.infos) == len(self.acks)

    def waiting(self) -> list[Any]:
        """References not resolved yet (to ``ray.wait`` on)."""
        out = [r for sid, r in self.acks.items() if sid not in self.acked]
        out.extend(r for sid, r in self.durable.items() if sid not in self.infos)
        return out

    def refs(self) -> list[Any]:
        """Every reference this barrier made (for the driver to drop on recovery)."""
        return [*self.acks.values(), *self.durable.values()]

    def advance(self, get: Getter, handles: Mapping[str, Any]) -> bool:
        """Take in what has arrived, without blocking; ask pending stages for durability.

        Returns :attr:`complete`. Raises what ``get`` raises for a failed call (a stage
        lost, a background flush failed).
        """
        acks = {sid: r for sid, r in self.acks.items() if sid not in self.acked}
        if acks:
            ready = set(ray.wait(list(acks.values()), num_returns=len(acks), timeout=0)[0])
            for sid, ref in acks.items():
                if ref not in ready:
                    continue
                info = get(ref, sid)
                self.acked.add(sid)
                if info.get("pending"):
                    self.durable[sid] = handles[sid].flushed.remote(self.step)
                else:
                    self.infos[sid] = info
        durable = {sid: r for sid, r in self.durable.items() if sid not in self.infos}
        if durable:
            ready = set(ray.wait(list(durable.values()), num_returns=len(durable),
                                 timeout=0)[0])
            for sid, ref in durable.items():
                if ref in ready:
                    self.infos[sid] = get(ref, sid)
        return self.complete
