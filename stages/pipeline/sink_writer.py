"""The sink writer: a step's output goes from the output stages to the sink without the driver.

Why: the driver reads the source, submits every call, injects the barriers and commits the
steps; when it also fetched every output record and encoded it for the sink, it was the
busiest process of a pipeline (bench/bench_engine.py: ~80 % of its CPU was getting the
outputs and writing JSON lines), and a pipeline could go no faster than one driver thread.
With a sink that may commit in another process (:func:`commits_anywhere`), the pipeline
starts one :class:`SinkWriter` actor on the driver's node (the sink's files are where the
driver would have written them) and, per batch, passes the output stages' result references
to its :meth:`SinkWriter.take`: Ray hands the outputs to the writer directly, and the driver
gets back only a record count - or the error of the stage that failed, exactly as a get of
the output would have raised it (an errored argument fails the call with that error).

Order is the actor's: the driver's calls to the writer run one at a time in the order it
submitted them, so every batch of step ``s`` is taken before ``commit(s)``, and ``reset``
after a rollback drops what was taken and not committed before any replayed batch arrives.
Exactly-once is unchanged: the writer commits a step only when the driver asks, at the same
point of the commit protocol (``stages/pipeline/pipeline.py``), and the sink's fencing token
travels with the request. A sink error raised in the writer is returned and raised again in
the driver, so ``RunFencedError`` and the rest reach the caller as before. A writer that dies
loses only uncommitted output: the driver starts another and replays from the committed step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from ..actors.batches import concat, num_rows
from ..actors.routing import merge_parts
from .graph import SinkSet
from .sink import EncodedBatch, EncodedParts, FenceToken, Sink

__all__ = ["SinkWriter", "commits_anywhere", "stage_encoders", "start_writer"]


def commits_anywhere(sink: Sink | SinkSet) -> bool:
    """True if ``sink`` (every sink of a set) says its ``commit`` may run in another process
    on this machine (``commit_anywhere = True``: it touches only its files)."""
    sinks = sink.sinks.values() if isinstance(sink, SinkSet) else [sink]
    return all(getattr(s, "commit_anywhere", False) is True for s in sinks)


class SinkWriter:
    """Takes each batch's outputs per output stage; commits a step's to the sink on request.

    Holds only uncommitted output (steps after the last commit), in memory.
    """

    def __init__(self, sink: Sink | SinkSet, outputs: Sequence[str]) -> None:
        self._sink = sink
        self._outputs = list(outputs)
        self._of = (dict(sink.sinks) if isinstance(sink, SinkSet)
                    else {self._outputs[0]: sink})
        #: step -> output stage -> its batches (or their encoded bytes) and rows
        self._steps: dict[int, dict[str, tuple[list[Any], list[int]]]] = {}

    def ping(self) -> bool:
        return True

    def take(self, step: int, layout: Sequence[tuple[str, int]], *outs: Any) -> int:
        """Keep one batch's outputs for ``step``: ``layout`` lists ``(output stage, calls'
        result count)`` in the order of ``outs`` (one result per instance of each call,
        merged in input order as the driver merged them). Returns the records taken."""
        step_out = self._steps.setdefault(step, {})
        n = 0
        i = 0
        for sid, width in layout:
            batch = merge_parts(list(outs[i:i + width]))
            i += width
            if isinstance(batch, EncodedBatch):  # encoded by the stage that made it
                data, rows = batch.data, batch.rows
            else:
                # Encoded now, while later batches are still being processed: the commit only
                # joins the bytes (a sink without ``encode`` gets the records at the commit).
                rows = num_rows(batch)
                encode = getattr(self._of[sid], "encode", None)
                data = encode(batch) if encode is not None else None
            parts, counts = step_out.setdefault(sid, ([], []))
            parts.append(batch if data is None else data)
            counts.append(rows)
            n += rows
        return n

    def commit(self, step: int, token: FenceToken) -> tuple[int, BaseException | None]:
        """Commit ``step``'s output (not yet visible: the driver publishes it after the run
        record); the records committed and the sink's error, if it raised (not raised here:
        the driver raises it as its own)."""
        by_stage = self._steps.pop(step, {})
        outs: dict[str, Any] = {}
        n_out = 0
        for sid in self._outputs:
            parts, counts = by_stage.get(sid, ([], []))
            n_out += sum(counts)
            encoded = bool(parts) and all(isinstance(p, bytes) for p in parts)
            outs[sid] = EncodedParts(parts, sum(counts)) if encoded else concat(parts)
        try:
            self._sink.commit(step, outs if isinstance(self._sink, SinkSet)
                              else outs[self._outputs[0]], token=token)
        except Exception as exc:  # noqa: BLE001 - handed back whole, raised by the driver
            self._steps[step] = by_stage  # a retry of the same commit finds it again
            return n_out, exc
        return n_out, None

    def reset(self) -> None:
        """Drop every uncommitted step (the driver rewound to its last committed step)."""
        self._steps.clear()


def stage_encoders(sink: Sink | SinkSet, outputs: Sequence[str],
                   read: set[str]) -> dict[str, Any]:
    """Per output stage that no stage reads, its sink's ``encode`` (if it has one): that
    stage encodes its own output, so the records are pickled nowhere."""
    of = dict(sink.sinks) if isinstance(sink, SinkSet) else {outputs[0]: sink}
    return {sid: enc for sid in outputs if sid not in read
            and (enc := getattr(of[sid], "encode", None)) is not None}


def start_writer(sink: Sink | SinkSet, outputs: Sequence[str]) -> Any:
    """A :class:`SinkWriter` actor on this (the driver's) node, needing no CPU of its own."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    cls = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(SinkWriter)
    return cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                       ).remote(sink, list(outputs))
