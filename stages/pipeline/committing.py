"""How a pipeline commits: barriers, draining outputs in order, committing a step.

The driver's side of a step (``stages/pipeline/pipeline.py``'s module docstring,
docs/ARCHITECTURE.md): once a step's records are all submitted a barrier asks every stage
(instance) to checkpoint the step; the outputs of the step's batches are drained in order;
when every stage's checkpoint is durable the step's outputs go to the sink (through the sink
writer, by reference, or from the driver), the run record of the step is saved, and the sink
publishes it. :class:`Committing` is mixed into :class:`~stages.pipeline.pipeline.Pipeline`;
it uses the pipeline's handles, counters and events and owns no state of its own.

**The commit runs beside the data path.** A step's commit (the sink's commit, the run record,
the status write - the commit point - the publish and the prune) is the same sequence as
ever, but it runs in the driver's one committer thread while the driver goes on reading the
source and submitting the next step's batches: a commit waits on disks (each write of the
run store is made durable), and the stages ran dry while the driver waited with them (18 ms
a step, a tenth of the engine benchmark's run with a barrier every 15,000 records). What
stays sequential is what the protocol needs: the next barrier is injected only once the
commit ended (at most one step past the committed one, as before), the driver thread applies
the commit's result (the counters, the ``commit`` event) and raises its error exactly where it
would have raised it, and a recovery or a return first waits for a running commit - one that
reached its status write committed its step, whatever failed meanwhile.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
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

__all__ = ["PIPELINE_TRACK", "Committer", "Committing"]

#: The policy track of the pipeline as a whole in its :class:`CheckpointManager`.
PIPELINE_TRACK = "pipeline"


class Committer:
    """One daemon thread that runs the calls given to it in order (a step's commit): a
    commit stuck on a disk never keeps the driver's process from exiting."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> futures.Future[Any]:
        """Run ``fn(*args)`` after everything submitted before; its future."""
        fut: futures.Future[Any] = futures.Future()
        self._queue.put((fut, fn, args))
        return fut

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - the future carries it
                fut.set_exception(exc)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop after what was submitted; wait for it (at most ``timeout`` seconds)."""
        self._queue.put(None)
        self._thread.join(timeout)


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
        refs = (self._push_barrier(step, meta) if self._push else
                {sid: h.checkpoint.remote(step=step, meta=meta)
                 for sid, h in self._handles.items()})
        self._barrier = Barrier(step, self._position, self._open_records, refs)
        self._open_step += 1
        self._open_records = 0
        self._open_since = self._clock()
        self._emit("barrier", step, detail={"source_position": self._position})

    def _step_full(self) -> bool:
        """The open step is due by its policy (records or seconds since its barrier was
        injected) while the barrier before it is still outstanding: the driver reads no
        further, so a step stays the size its policy says while the one before commits."""
        if self._barrier is None:
            return False
        policy = self.manager.policy_for(PIPELINE_TRACK)
        return policy.due(self._open_records, self._clock() - self._open_since) is not None

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
        elif bar is not None and bar.commit is not None:  # only the commit is running
            futures.wait([bar.commit], timeout=1.0)
        # Which batches are complete: one look at every batch in flight (not one per batch).
        inflight = [r for b in self._batches for r in b.refs]
        done = set(ray.wait(inflight, num_returns=len(inflight), timeout=0)[0]) if inflight \
            else set()
        while self._batches and all(r in done for r in self._batches[0].refs):
            b = self._batches.popleft()
            if self._push:  # the first stages' answers: their errors raised here
                for sid, calls in b.outs.items():
                    for group in calls:
                        for r in group:
                            self._push_answered(r, sid)
                continue
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
        if bar.commit is not None:  # committing: take its result if it ended
            self._settle(wait=False)
        elif bar.advance(self._get, self._handles):  # every stage's checkpoint is durable
            self._start_commit(bar)

    def _start_commit(self, bar: Barrier) -> None:
        """Hand the step's commit to the committer thread; what it needs of the driver's
        state (the outputs, the writer's hand-off) is taken here, in the driver thread."""
        hold = self._driver()
        if self._push:  # the outputs were pushed to the writer by the output stages
            bar.commit = self._committer.submit(self._commit_step, bar,
                                                self._push_commit(bar.step, hold.token), None)
        elif self._handoff is not None:
            call = self._handoff.commit(bar.step, hold.token)
            bar.commit = self._committer.submit(self._commit_step, bar, call, None)
        else:
            bar.commit = self._committer.submit(self._commit_step, bar, None,
                                                self._outputs.pop(bar.step, {}))

    def _commit_step(self, bar: Barrier, call: Any,
                     by_stage: Mapping[str, list[Any]] | None) -> int:
        """The commit of ``bar``'s step (in the committer thread): the sink's commit - by
        the writer (``call``, its reply) or here (``by_stage``, the outputs) - then the run
        record and the status write, the publish, the prune. Returns the records out."""
        hold = self._driver()
        if call is not None:
            # The step's outputs went to the writer as refs: Ray hands them over, and an
            # output that is a stage's error fails the call with it, as a get here would
            # have. No call timeout, as for a commit in the driver: a slow disk is not a
            # lost stage (a writer that dies still fails the call).
            n_out, error = get_sorted(call, None, timeout=None, actor_ids=self._actor_ids)
            if error is not None:  # the sink's own error (e.g. RunFencedError), as if here
                raise error
        else:
            assert by_stage is not None
            # a list, or a table of batches, per output stage
            outs = {sid: concat(by_stage.get(sid, [])) for sid in self.graph.sinks}
            n_out = sum(num_rows(o) for o in outs.values())
            self.sink.commit(bar.step, outs if isinstance(self.sink, SinkSet)
                             else outs[self.graph.sinks[0]], token=hold.token)
        stages = [StageCommit(stage_id=sid, lease_id=info.get("lease_id"),
                              epoch=self._epochs.get(sid), generation=info.get("generation"),
                              node_id=self._nodes.get(sid), **layout_of(self._spec_of[sid]))
                  for sid, info in bar.infos.items()]
        hold.save_step(bar.step, source_position=bar.position, stages=stages,
                       meta={"records_in": bar.records, "records_out": n_out,
                             "graph": self._graph_record})
        self.sink.publish(bar.step, token=hold.token)
        hold.prune(self.keep_steps)
        return n_out

    def _settle(self, *, wait: bool) -> None:
        """Apply the running commit's result if it ended (``wait``: once it ends): the
        step is committed here, or the commit's error is raised here."""
        bar = self._barrier
        if bar is None or bar.commit is None or (not wait and not bar.commit.done()):
            return
        try:
            n_out = bar.commit.result()
        except BaseException:
            bar.commit = None  # raised once, here; the recovery replays the step
            raise
        self._finish_commit(bar, n_out)

    def _finish_commit(self, bar: Barrier, n_out: int) -> None:
        infos = bar.infos
        self._committed = bar.step
        self._committed_position = bar.position
        self._barrier = None
        self._records_in += bar.records
        self._records_out += n_out
        self._uncommitted_read -= bar.records
        self._checkpoints += len(infos)
        self._steps_this_run += 1
        self._step_counts[bar.step] = (bar.records, n_out)
        # The open step began at the barrier, not now: its records and its time count
        # towards the next barrier.
        self.manager.complete(PIPELINE_TRACK, {"step": bar.step, "generation": None},
                              since=self._open_since)
        if self._open_records:
            self.manager.record(PIPELINE_TRACK, self._open_records)
        self._emit("commit", bar.step, detail={
            "source_position": bar.position, "records_in": bar.records,
            "records_out": n_out,
            "generations": {sid: i.get("generation") for sid, i in infos.items()},
            "stored_bytes": {sid: i.get("stored_bytes") for sid, i in infos.items()}})
