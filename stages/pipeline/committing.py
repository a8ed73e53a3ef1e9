"""How a pipeline commits: barriers, draining outputs in order, committing a step.

The driver's side of a step (``stages/pipeline/pipeline.py``'s module docstring,
docs/ARCHITECTURE.md): once a step's records are all submitted a barrier asks every stage
(instance) to checkpoint the step; the outputs of the step's batches are drained in order;
when every stage's checkpoint is durable the step's outputs go to the sink (through the sink
writer, by reference, or from the driver), the run record of the step is saved, and the sink
publishes it. :class:`Committing` is mixed into :class:`~stages.pipeline.pipeline.Pipeline`;
it uses the pipeline's handles, counters and events and owns no state of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from ..actors.batches import concat, num_rows
from ..actors.routing import merge_parts
from .barrier import Barrier
from .graph import SinkSet
from .instances import layout_of
from .recovery import StageFailure, get_sorted
from .runs import StageCommit

__all__ = ["PIPELINE_TRACK", "Committing"]

#: The policy track of the pipeline as a whole in its :class:`CheckpointManager`.
PIPELINE_TRACK = "pipeline"


class Committing:
    """The commit methods of :class:`~stages.pipeline.pipeline.Pipeline` (a mixin: the
    attributes it uses are the pipeline's, set in its constructor and ``_reset_counters``)."""

    def _maybe_barrier(self, *, final: bool) -> None:
        if self._barrier is not None or self._open_records == 0:
            return
        due = (self.manager.pending(PIPELINE_TRACK) is not None
               or self.manager.poll(PIPELINE_TRACK) is not None or final)
        if not due:
            return
        self.manager.begin(PIPELINE_TRACK)
        step = self._open_step
        meta = {"source_position": self._position, "run_id": self.run_id}
        refs = {sid: h.checkpoint.remote(step=step, meta=meta)
                for sid, h in self._handles.items()}
        self._barrier = Barrier(step, self._position, self._open_records, refs)
        self._open_step += 1
        self._open_records = 0
        self._emit("barrier", step, detail={"source_position": self._position})

    def _await_progress(self) -> None:
        """Wait (at most ~1 s) for the oldest batch or a pending barrier call; drain outputs
        in order; commit the barrier once its step is complete. Never spins on results that
        are already in."""
        bar = self._barrier
        waiting: list[Any] = []
        if self._batches:
            waiting.extend(self._batches[0].refs)
        barrier_due = bar is not None and (not self._batches or self._batches[0].step > bar.step)
        if bar is not None and barrier_due:
            waiting.extend(bar.waiting())
        if waiting:
            ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
            if not ready:
                if time.monotonic() - self._last_progress > self.call_timeout:
                    raise StageFailure(set(), GetTimeoutError(
                        f"no progress for {self.call_timeout:.0f}s"))
                return
            self._last_progress = time.monotonic()
        # Which batches are complete: one look at every batch in flight (not one per batch).
        inflight = [r for b in self._batches for r in b.refs]
        done = set(ray.wait(inflight, num_returns=len(inflight), timeout=0)[0]) if inflight \
            else set()
        while self._batches and all(r in done for r in self._batches[0].refs):
            b = self._batches.popleft()
            if self._handoff is not None:  # the refs: to the writer, in chunks as they come
                for sid, calls in b.outs.items():
                    for group in calls:
                        self._handoff.add(b.step, sid, group)
                continue
            step_out = self._outputs.setdefault(b.step, {})
            for sid, calls in b.outs.items():
                step_out.setdefault(sid, []).extend(
                    merge_parts([self._get(r, None) for r in group]) for group in calls)
        if bar is None or (self._batches and self._batches[0].step <= bar.step):
            return
        if bar.advance(self._get, self._handles):  # every stage's checkpoint is durable
            self._commit(bar, bar.infos)

    def _commit(self, bar: Barrier, infos: Mapping[str, Mapping[str, Any]]) -> None:
        hold = self._driver()
        if self._handoff is not None:
            # The step's outputs went (or go now) to the writer as refs: Ray hands them over,
            # and an output that is a stage's error fails the call with it, as a get here
            # would have. No call timeout, as for a commit in the driver: a slow disk is not
            # a lost stage (a writer that dies still fails the call).
            n_out, error = get_sorted(self._handoff.commit(bar.step, hold.token), None,
                                      timeout=None, actor_ids=self._actor_ids)
            if error is not None:  # the sink's own error (e.g. RunFencedError), as if here
                raise error
        else:
            by_stage = self._outputs.pop(bar.step, {})
            # a list, or a table of batches, per output stage
            outs = {sid: concat(by_stage.get(sid, [])) for sid in self.graph.sinks}
            n_out = sum(num_rows(o) for o in outs.values())
            self.sink.commit(bar.step, outs if isinstance(self.sink, SinkSet)
                             else outs[self.graph.sinks[0]], token=hold.token)
        stages = [StageCommit(stage_id=sid, lease_id=info.get("lease_id"),
                              epoch=self._epochs.get(sid), generation=info.get("generation"),
                              node_id=self._nodes.get(sid), **layout_of(self._spec_of[sid]))
                  for sid, info in infos.items()]
        hold.save_step(bar.step, source_position=bar.position, stages=stages,
                       meta={"records_in": bar.records, "records_out": n_out,
                             "graph": self._graph_record})
        self.sink.publish(bar.step, token=hold.token)
        hold.prune(self.keep_steps)
        self._committed = bar.step
        self._committed_position = bar.position
        self._barrier = None
        self._records_in += bar.records
        self._records_out += n_out
        self._uncommitted_read -= bar.records
        self._checkpoints += len(infos)
        self._steps_this_run += 1
        self._step_counts[bar.step] = (bar.records, n_out)
        self.manager.complete(PIPELINE_TRACK, {"step": bar.step, "generation": None})
        self._emit("commit", bar.step, detail={
            "source_position": bar.position, "records_in": bar.records,
            "records_out": n_out,
            "generations": {sid: i.get("generation") for sid, i in infos.items()},
            "stored_bytes": {sid: i.get("stored_bytes") for sid, i in infos.items()}})
