"""The driver's side of the push data path: wire the stages, feed the first ones, barriers.

``Pipeline(..., data_path="push")``: the driver reads the source and sends each batch to the
instances of the stages that read the source; from there every instance sends its output to
the next stages' instances and the output stages to the sink writer
(``stages/actors/pushing.py``). The driver's part per batch is one call per first-stage
instance; per step, one barrier message per first-stage instance and one
``barrier_done`` per instance, then the commit - whose outputs the writer already holds.

What stays the driver path's: the steps, their barrier policy, the commit protocol and its
order (sink commit, run record, status write, publish), recovery (relaunch, roll back,
replay), the order of every call and so the committed output, bit for bit. What changes:
backpressure is per edge (each sender keeps at most :attr:`Pushing.edge_bound` pushes
unanswered per receiver, the driver's own edge too), and after a
rollback the driver wires a new *attempt*: every instance and the writer drop what the
attempt before left and refuse its late messages.

It needs the sink writer (a sink that commits anywhere, ``stages/pipeline/sink_writer.py``):
the outputs go to it, not to the driver. :class:`Pushing` is mixed into
:class:`~stages.pipeline.pipeline.Pipeline`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from ..actors.pushing import MAX_PUSH_SENDERS, PUSH_CONCURRENCY, PUSH_RESERVE, STALE, Edge, Route
from .committing import PIPELINE_TRACK
from ..errors import CheckpointFailed
from .graph import SOURCE
from .reader import start_reader
from .recovery import StageFailure, alive

__all__ = ["DATA_PATHS", "Pushing"]

#: ``Pipeline(data_path=...)``: the driver submits every call, or the stages push.
DATA_PATHS = ("driver", "push")


class Pushing:
    """The push data path's methods of :class:`~stages.pipeline.pipeline.Pipeline` (a mixin:
    the attributes it uses are the pipeline's)."""

    def _calls(self, sid: str) -> list[tuple[int, ...]]:
        """The call keys of stage ``sid`` for one batch, in the order it runs them."""
        if sid == SOURCE:
            return [()]
        return [(j, *k) for j, name in enumerate(self.graph.inputs[sid])
                for k in self._calls(name)]

    def _width(self, name: str) -> int:
        """Instances of ``name`` (the source: one)."""
        return 1 if name == SOURCE else len(self._by_id[name].instances())

    def _senders(self) -> tuple[int, str]:
        """The most sending instances any stage's instance has, and that stage."""
        return max((sum(self._width(n) for n in self.graph.inputs[sid]), sid)
                   for sid in self.graph.order)

    @property
    def edge_bound(self) -> int:
        """Pushes a sender keeps unanswered per receiving instance: ``max_in_flight``, less
        where a receiver has so many senders that its push threads would not hold them - a
        sender may hold one past its bound, so ``senders x (bound + 1)`` threads (fewer
        was a run that never ended with 12 senders or more: review of session 19)."""
        most = max(1, self._senders()[0])
        return max(1, min(self.max_in_flight, (PUSH_CONCURRENCY - PUSH_RESERVE) // most - 1))

    def _check_senders(self) -> None:
        """Refuse a graph whose widest fan-in no bound of 1 fits (``ValueError``)."""
        most, sid = self._senders()
        if most > MAX_PUSH_SENDERS:
            raise ValueError(
                f"data_path='push': stage {sid!r} reads {most} instances, more than the "
                f"{MAX_PUSH_SENDERS} a receiver's {PUSH_CONCURRENCY} push threads hold (each "
                "sender may hold two); use data_path='driver' or fewer instances")

    def _routes(self, attempt: int) -> dict[str, Route]:
        """Each instance's :class:`Route` for ``attempt``."""
        g = self.graph
        bound = self.edge_bound
        readers: dict[str, list[tuple[str, int]]] = {}
        for sid in g.order:
            for j, name in enumerate(g.inputs[sid]):
                readers.setdefault(name, []).append((sid, j))
        out: dict[str, Route] = {}
        for sid in g.order:
            spec = self._by_id[sid]
            expected = []
            for j, name in enumerate(g.inputs[sid]):
                parts = 1 if name in g.splits else self._width(name)
                expected.extend(((j, *k), parts) for k in self._calls(name))
            edges = tuple(Edge(tuple(self._handles[i.stage_id] for i in self._by_id[r].instances()),
                               j, split=sid in g.splits)
                          for r, j in readers.get(sid, []))
            is_output = sid in g.sinks
            for inst in spec.instances():
                out[inst.stage_id] = Route(
                    attempt=attempt, step=self._committed + 1, expected=tuple(expected),
                    senders=sum(self._width(n) for n in g.inputs[sid]), edges=edges,
                    writer=self._writer if is_output else None,
                    output=sid if is_output else None, part=inst.index or 0, bound=bound,
                    encode=self._encoders.get(sid), split=g.splits.get(sid))
        return out

    def _wire(self) -> None:
        """A new attempt: the writer drops what it holds, every instance gets its route."""
        self._attempt += 1
        self._seq = self._step_first_seq = 0
        self._push_batches: dict[int, int] = {}
        self._loose_pushes: list[Any] = []
        routes = self._routes(self._attempt)
        self._get(self._writer.reset_pushed.remote(self._attempt), None)
        if self._reader_wanted:
            self._wire_reader()
        refs = {sid: self._handles[sid].wire.remote(route) for sid, route in routes.items()}
        for sid, ref in refs.items():
            self._get(ref, sid)

    def _wire_reader(self) -> None:
        """The source reader for this attempt: started (again, if it was lost), then told
        where the source's batches go."""
        if self._reader is not None and not alive(self._reader, self.ping_timeout):
            with contextlib.suppress(Exception):
                ray.kill(self._reader, no_restart=True)
            self._reader = None
        first = self._first()
        if self._reader is None:
            lead = self._by_id[first[0][0]].instances()[0].stage_id
            self._reader = start_reader(self.source, self._nodes.get(lead))
        wiring = [([self._handles[i.stage_id] for i in self._by_id[sid].instances()], j)
                  for sid, j in first]
        self._get(self._reader.wire.remote(self._attempt, self.graph, wiring,
                                           SOURCE in self.graph.splits), None)

    def _fill_from_reader(self) -> None:
        """``Pipeline._fill`` with the reader reading: one feed per round, as many batches
        as there is room for, up to the record count the barrier policy waits for."""
        self._idle = False
        self._maybe_barrier(final=False)
        first = [sid for sid, _ in self._first()]
        while (not self._exhausted and len(self._batches) < self._room
               and not self._step_full()):
            every = self.manager.policy_for(PIPELINE_TRACK).every_records
            budget = (1 if self.manager.pending(PIPELINE_TRACK) is not None
                      else None if every is None else max(1, every - self._open_records))
            fed, error = self._get(self._reader.feed.remote(
                self._attempt, self._open_step, self._seq, self._position, self.batch_size,
                self._room - len(self._batches), budget), None)
            ended = False
            for n, after, refs in fed:
                if not n:
                    ended = True
                    break
                self._seq += 1
                self._add_batch(n, after, {sid: [refs[i]] for i, sid in enumerate(first)})
            if error is not None:  # the source's own error: as the driver reading raises it
                raise error
            self._maybe_barrier(final=False)
            if ended:
                self._source_ended()
                break
        self._maybe_barrier(final=self._exhausted or self._idle)

    def _first(self) -> list[tuple[str, int]]:
        """The stages that read the source, with the source's place among their inputs."""
        return [(sid, self.graph.inputs[sid].index(SOURCE)) for sid in self.graph.order
                if SOURCE in self.graph.inputs[sid]]

    def _push_submit(self, records: Any, shares: list[Any] | None
                     ) -> dict[str, list[list[Any]]]:
        """Send one batch to the first stages' instances (``shares``: the source's batch
        split for its keyed reader); the references of those pushes, per stage."""
        seq, step = self._seq, self._open_step
        self._seq += 1
        outs: dict[str, list[list[Any]]] = {}
        for sid, j in self._first():
            insts = [self._handles[i.stage_id] for i in self._by_id[sid].instances()]
            if shares is not None:
                refs = [h.push.remote(self._attempt, step, [(seq, (j,), 0, share)])
                        for h, share in zip(insts, shares)]
            else:
                payload = ray.put(records) if len(insts) > 1 else records
                refs = [h.push.remote(self._attempt, step, [(seq, (j,), 0, payload)])
                        for h in insts]
            outs[sid] = [refs]
        return outs

    def _push_barrier(self, step: int, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Barrier ``step`` into the first stages; each instance's ``barrier_done``."""
        last = self._seq - 1
        self._push_batches[step] = self._seq - self._step_first_seq
        self._step_first_seq = self._seq
        for sid, _ in self._first():
            for inst in self._by_id[sid].instances():
                self._loose_pushes.append(self._handles[inst.stage_id].push_barrier.remote(
                    self._attempt, step, last, dict(meta)))
        if len(self._loose_pushes) > 64:
            self._loose_pushes = ray.wait(self._loose_pushes,
                                          num_returns=len(self._loose_pushes), timeout=0)[1]
        return {sid: h.barrier_done.remote(self._attempt, step)
                for sid, h in self._handles.items()}

    def _push_answered(self, ref: Any, sid: str) -> None:
        """A push the driver made was answered: raise what failed (a stale answer means
        the stage's attempt ended under the driver: a failure to recover from)."""
        if self._get(ref, sid) == STALE:
            raise StageFailure({sid}, RuntimeError(f"stage {sid!r} ended the attempt"))

    def _push_commit(self, step: int, token: Any) -> Any:
        """The writer's commit call of ``step`` (its outputs are there already)."""
        n = self._push_batches.pop(step)
        expected = {sid: (n * len(self._calls(sid)), self._width(sid))
                    for sid in self.graph.sinks}
        return self._writer.commit_pushed.remote(step, token, expected)

    def _named_in(self, exc: BaseException) -> set[str]:
        """The stage a failure passed on through pushes names: the actor that died, the
        lease a checkpoint failed on, the stage that was stopped."""
        inner: Any = exc
        while isinstance(inner, RayTaskError) and inner.cause is not None \
                and inner.cause is not inner:
            inner = inner.cause
        if isinstance(inner, RayActorError):
            sid = self._actor_ids.get(getattr(inner, "actor_id", None) or "")
            return {sid} if sid else set()
        if isinstance(inner, CheckpointFailed) and inner.lease_id:
            return {sid for sid, lease in self._lease_ids.items() if lease == inner.lease_id}
        who = getattr(inner, "stage_id", None)
        return {who} if isinstance(who, str) and who in self._handles else set()
