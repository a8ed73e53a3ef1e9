"""How a pipeline recovers from a lost or failed stage: relaunch, roll back, fall back.

The driver's side of "recovery is rollback and replay" (``stages/pipeline/pipeline.py``'s
module docstring, docs/ARCHITECTURE.md): on a :class:`~stages.pipeline.recovery.StageFailure`
the lost stages are relaunched (``on_stage_lost``, else :func:`launch_stage` on the node
:func:`~stages.pipeline.recovery.relaunch_node` picks), every stage is rolled back to the last
committed step, and when one cannot restore it, all of them fall back to the newest step they
all restore (the steps after it are re-opened in the run store and the sink and replayed).
:class:`Recovering` is mixed into :class:`~stages.pipeline.pipeline.Pipeline`; it uses the
pipeline's handles, counters and events and owns no state of its own.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from ..actors.actor import StageSpec, launch_stage
from ..checkpoint.observer import CheckpointFlushObserver
from ..errors import PipelineError
from .metering import note_recovery, note_replayed
from .instances import sources_for
from .recovery import (
    StageFailure,
    alive,
    discard,
    relaunch_node,
    reopen_after,
    roll_back_all,
)
from .runs import RunNotFoundError

__all__ = ["Recovering"]

log = logging.getLogger(__name__)


class Recovering:
    """The recovery methods of :class:`~stages.pipeline.pipeline.Pipeline` (a mixin: the
    attributes it uses are the pipeline's, set in its constructor and ``_reset_counters``)."""

    def _recover(self, failure: StageFailure) -> None:
        t0 = time.monotonic()
        try:
            self._recover_inner(failure)
        finally:
            self._recovery_s += time.monotonic() - t0
            note_recovery(self.run_id, time.monotonic() - t0)

    def _recover_inner(self, failure: StageFailure) -> None:
        # A commit still running ends first: one that reached its status write committed
        # its step, whatever failed meanwhile (``committing.py``); its own failure is this
        # recovery's, except a fenced driver's or a sink's error, raised as before.
        with contextlib.suppress(StageFailure):
            self._settle(wait=True)
        # A failure may be the stages' leases taken by a driver that took the run over:
        # relaunching would steal them back. A fenced driver stops here.
        self._driver().check()
        self._recoveries += 1
        first_line = str(failure.cause).strip().splitlines()[:1]
        self._emit("failure", self._committed, detail={
            "error": f"{type(failure.cause).__name__}: {(first_line or [''])[0][:200]}",
            "suspects": sorted(failure.stages)})
        if self._recoveries > self.max_recoveries:
            raise PipelineError(f"giving up after {self.max_recoveries} recoveries; last "
                                f"failure: {failure}") from failure.cause
        dropped = [r for b in self._batches for r in b.refs]
        if self._handoff is not None:  # drained outputs kept as references for the writer
            dropped.extend(self._handoff.refs())
        if self._barrier is not None:
            dropped.extend(self._barrier.refs())
        dropped.extend(self._loose_pushes)
        lost = set(failure.stages) | {s for s, h in self._handles.items()
                                      if s not in failure.stages
                                      and not alive(h, self.ping_timeout)}
        c = self._committed
        for sid in sorted(lost):
            spec = self._spec_of[sid]
            old_node = self._nodes.get(sid)
            with contextlib.suppress(Exception):  # already dead
                ray.kill(self._handles[sid], no_restart=True)  # a zombie must not linger
            exclude = [old_node] if old_node else []
            try:
                if self.on_stage_lost is not None:
                    handle = self.on_stage_lost(spec, exclude, c)
                else:
                    handle = self._relaunch(spec, exclude, c)
            except Exception as exc:  # e.g. no node free yet: retry later
                time.sleep(1.0)
                raise StageFailure({sid}, exc) from exc
            self._handles[sid] = handle
            self._relaunches += 1
            self._emit("relaunched", c, sid, detail={"from_node": old_node})
        self._roll_back(c)
        discard(dropped)

    def _roll_back(self, step: int, *, first: Mapping[str, Mapping[str, Any]] | None = None,
                   announce: bool = True) -> None:
        """Every stage to ``step`` - or, if one cannot restore it, all to the same older
        committed step (:func:`~stages.pipeline.recovery.roll_back_all`), then :meth:`_fall_back`."""
        self._records.clear()  # step records are read afresh by each rollback
        target, infos = roll_back_all(self._handles, step, self._get, first=first,
                                      options=self.rollback_options)
        for sid, info in infos.items():
            self._note_info(sid, info)
        if target < step:
            self._fall_back(step, target, infos)
        if announce or target < step:
            self._emit("rollback", target, detail={
                "nodes": dict(self._nodes), "epochs": dict(self._epochs),
                "source_position": self._committed_position,
                "restored_steps": {sid: i.get("restored_step") for sid, i in infos.items()},
                "generations": {sid: i.get("generation") for sid, i in infos.items()},
                **({"fell_back_from": step} if target < step else {})})

    def _fall_back(self, step: int, target: int, infos: Mapping[str, Mapping[str, Any]]) -> None:
        """Re-open the committed steps after ``target``: every stage is now at ``target``.

        :func:`~stages.pipeline.recovery.reopen_after` forgets the steps after ``target`` in the run
        store and the sink; the driver's cursor moves to ``target``'s source position and its
        counters drop those steps, which the replay commits again. Raises ``PipelineError``
        if ``target``'s own record is gone (pruned): nothing to replay from.
        """
        try:
            position = reopen_after(self._driver(), self.sink, target,
                                    self.source.initial_position())
        except RunNotFoundError as exc:
            raise PipelineError(f"stages fell back to step {target}, whose run record is "
                                f"gone; cannot replay") from exc
        reasons = {sid: i.get("restored_skipped") for sid, i in infos.items()
                   if i.get("restored_skipped")}
        log.warning("run %s: step %d cannot be restored on every stage (%s); fell back to "
                    "step %d", self.run_id, step, reasons, target)
        for s in [s for s in self._step_counts if s > target]:
            n_in, n_out = self._step_counts.pop(s)
            self._records_in -= n_in
            self._records_out -= n_out
            self._replayed += n_in
            note_replayed(self.run_id, n_in)
            self._steps_this_run -= 1
        self._committed = target
        self._committed_position = position
        self._fallbacks.append((step, target))
        self._emit("fallback", target, detail={
            "requested_step": step, "restored_step": target, "source_position": position,
            "skipped": reasons})

    def rollback_options(self, sid: str, step: int) -> dict[str, Any]:
        """The ``rollback`` arguments of stage (instance) ``sid`` to ``step``: a keyed
        instance's source leases, from ``step``'s run record (``instances.sources_for``)."""
        spec = self._spec_of[sid]
        if spec.key is None:
            return {}
        if step not in self._records:
            self._records[step] = self.runs.load_step(self.run_id, step) if step else None
        return {"sources": sources_for(spec, self._records[step])}

    def _relaunch(self, spec: StageSpec, exclude: Sequence[str], step: int) -> Any:
        node = relaunch_node(spec, exclude, self._nodes, self._spec_of)
        return launch_stage(spec, node_id=node, soft=True, spill=True,
                            observer=self._observer(spec), restore_step=step)

    def _note_info(self, sid: str, info: Mapping[str, Any]) -> None:
        self._nodes[sid] = info.get("node_id")
        self._lease_ids[sid] = info.get("lease_id")
        self._epochs[sid] = int(info.get("epoch", 0))
        try:
            self._actor_ids[self._handles[sid]._actor_id.hex()] = sid
        except AttributeError:  # pragma: no cover - handle without an id
            pass

    def _observer(self, spec: StageSpec) -> CheckpointFlushObserver | None:
        if self.observer_for is not None:
            return self.observer_for(spec)
        return self.observer
