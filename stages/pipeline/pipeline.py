"""Fault-tolerant pipelines: a replayable source, stage actors (a chain or a DAG), idempotent sinks.

``Pipeline(source, [StageSpec, ...], sink).run()`` drives records through the stage actors on
Ray and commits output exactly once across stage and node loss.

How, and why this way:

* **The driver submits, Ray carries.** Each batch read from the source (a list of records
  or an Arrow table, ``stages/actors/batches.py``) becomes a chain of actor calls,
  ``s1.process_batch(batch) -> s2.process_batch(ref) -> ...``; the object references flow
  stage to stage without passing through the driver, and the last one is the batch's output.
  In a DAG (``stages/pipeline/graph.py``) a stage makes one call per output of each of its
  inputs, and each output stage's outputs go to its own sink. At most ``max_in_flight``
  batches are outstanding (backpressure: the source is not read further until the oldest
  batch's output arrived). With a sink that may commit in another process (a ``FileSink``),
  the outputs go to the sink writer (``stages/pipeline/sink_writer.py``), encoded for the
  sink by the stage that made them, and the driver gets back only record counts.
* **Barriers travel with the data.** A checkpoint barrier for step ``s`` is one
  ``checkpoint(step=s, meta={"source_position": p})`` call per stage, submitted right after
  the last batch of step ``s``. A stage actor runs its data-path calls one at a time in
  submission order, so each stage checkpoints exactly the state after every record before the
  barrier and none after it - consistent across stages, like aligned barriers, with no
  records in flight between stages at the cut (``RunStep.in_flight`` is therefore empty).
* **A step commits in one place.** When every stage's checkpoint of ``s`` is durable (it
  returned; for ``async_checkpoints`` stages, its background flush ended too:
  ``stages/pipeline/barrier.py``) and every output of ``s`` arrived, the sink commits step ``s``'s
  output (idempotently, not yet visible), then the run record of ``s`` is saved and
  committed by the driver's status write under the run's control lease
  (:class:`~stages.pipeline.run_driver.RunDriver`): that write is the commit point; then the sink
  publishes ``s``. At most one barrier is outstanding (records keep flowing while it waits
  for background flushes, and while the step commits in the driver's committer thread:
  ``stages/pipeline/committing.py``), so every stage's lease holds the last committed step
  and at most one newer, uncommitted one, and each stage has at most one flush in flight.
* **One driver per run, fenced** (``stages/pipeline/run_driver.py``). ``run()`` holds the run's
  control lease (keepalive) from start to return; sink writes and step commits carry its
  epoch. A second driver is refused (``RunActiveError``) before it touches anything, or with
  ``takeover=True`` fences the first, whose next commit - or recovery, before it could
  steal stage leases back - fails with ``RunFencedError`` and stops it.
* **Recovery is rollback and replay.** On any stage failure (actor died, node removed,
  checkpoint failed - e.g. the stage was killed mid-flush - or a call timed out), the driver
  drops everything in flight, relaunches the lost stages (``on_stage_lost`` hook, e.g. the
  scheduler's restore; default: :func:`~stages.actors.actor.launch_stage` preferring another live
  node), rolls *every* stage back to the last committed step ``c`` (the newest generation
  ``<= c``: a stage that already checkpointed ``c+1`` drops it), and re-reads the source from
  ``c``'s position. Replayed records reach the sink only through a later commit, so committed
  output has no loss and no duplicate, provided stages are deterministic.
* **One step on every stage, or an error.** If a stage's generation of ``c`` does not verify,
  it can only restore an older step; then every stage is rolled back to the newest step ``t``
  they all restore (``stages/pipeline/recovery.py``), the run's step records after ``t`` are deleted,
  the sink's output after ``t`` is discarded (``discard_after``) and
  the source is replayed from ``t``'s position, so steps ``t+1..c`` are committed again,
  idempotently. A ``fallback`` event and ``PipelineResult.fallbacks`` say so. When no step is
  left that every stage restores, the pipeline stops with ``PipelineError``.
* **A driver restart resumes.** ``run()`` on an existing run id starts from the run's newest
  committed step (the sink's ``fence`` discards output of later, uncommitted steps); the
  same one-step-everywhere rule applies to the stages it launches. A driver that died holds
  the control lease until its TTL (``run_ttl``) runs out; restarting earlier needs
  ``takeover=True``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayTaskError

from ..actors.actor import StageSpec, launch_stage, open_store_for
from ..actors.pushing import STALE
from ..actors.batches import num_rows
from .barrier import Barrier
from .graph import SOURCE, Graph, SinkSet
from ..errors import PipelineError, StageProcessError
from .run_errors import RunFencedError
from .events import PipelineEvent, PipelineResult
from ..actors.hooks import StageLostHook
from ..checkpoint.observer import CheckpointFlushObserver
from ..checkpoint.policy import CheckpointManager, CheckpointPolicy
from .metering import note_event, note_replayed
from .recovery import StageFailure, alive, get_sorted, stop_stages
from .reference import run_reference
from .committing import PIPELINE_TRACK, Committer, Committing
from .pushing import DATA_PATHS, Pushing
from .rollback import Recovering
from .run_driver import RunDriver
from .instances import check_layout, expand, split_source
from .run_records import RunStep
from .runs import RunClaim, RunStore
from .sink import Sink
from .sink_writer import Handoff, commits_anywhere, stage_encoders, start_writer, writer_sees
from .source import Source

__all__ = [
    "Pipeline",
    "PipelineError",
    "PipelineEvent",
    "PipelineResult",
    "StageLostHook",
    "StageProcessError",
    "run_reference",
]

log = logging.getLogger(__name__)



@dataclass(slots=True)
class _Batch:
    step: int
    end_position: Any
    n: int
    #: per output stage (a sink's), its outputs of this batch: each one ref, or one per
    #: instance (Parts) - one output per call the stage made (``graph.py``)
    outs: dict[str, list[list[Any]]]

    @property
    def refs(self) -> list[Any]:
        return [r for calls in self.outs.values() for group in calls for r in group]


class Pipeline(Recovering, Committing, Pushing):
    """Checkpointed stage actors - a chain, or a DAG - between a replayable source and sinks.

    Args:
        source: replayable input (:class:`~stages.pipeline.source.Source`).
        stages: the stages (at least one); their ``stage_id``\\ s must be unique. Each reads
            its spec's ``inputs``, by default the stage listed before it (a chain;
            ``stages/pipeline/graph.py``).
        sink: where committed output goes, per step (:class:`~stages.pipeline.sink.Sink`):
            one sink for the last listed stage's output, or ``{stage_id: Sink, ...}`` for
            several output stages (every stage no stage reads needs one).
        run_id: the run (a new one if ``None``); an existing run resumes from its last
            committed step.
        run_store_url: where run records live (default: the first stage's store).
        batch_size: records read from the source per batch.
        max_in_flight: batches outstanding at once (backpressure).
        policy: when to inject a barrier (every N records and/or T seconds; ``retention``
            is the stages' business, set in their specs). A final barrier always closes the
            stream.
        observer: flush observer given to every stage actor.
        observer_for: per-stage observer factory (e.g. ``lambda spec:
            PreemptionCheckpointObserver(spec.stage_id, "blockpoint-scheduler")``); wins
            over ``observer``.
        on_stage_lost: relaunch hook (:data:`~stages.actors.hooks.StageLostHook`, e.g.
            ``scheduler.SchedulerRestore``); default: :func:`launch_stage` on the node
            :func:`~stages.pipeline.recovery.relaunch_node` picks, preferring one the stage was not on.
        placement: initial node id per stage id (hard affinity), e.g. for tests and demos.
        on_event: called with every :class:`PipelineEvent`, in the driver thread.
        max_recoveries: give up (``PipelineError``) after this many rollbacks in one run.
        keep_steps: committed step records kept in the run store (older ones are deleted
            after each commit, so storage stays bounded); default: the largest ``retention``
            of the stages, i.e. exactly the steps whose stage checkpoints still exist.
        call_timeout: seconds to wait for any one stage call before treating it as lost.
        ping_timeout: seconds a liveness probe may take during recovery.
        clock: for the policy's time trigger (injectable).
        takeover: fence a live driver of the run and take over (default: refuse).
        run_ttl: TTL of the run's control lease (kept alive while this driver runs): how
            long after a driver died its run needs ``takeover`` to be driven.
        data_path: ``"driver"`` (the driver submits every stage's call of every batch) or
            ``"push"`` (it feeds the first stages; each stage sends its output to the next
            ones and to the sink writer itself, backpressure per edge:
            ``stages/pipeline/pushing.py``). The same calls in the same order, the same
            committed output; ``"push"`` needs a sink the writer commits.
        source_reader: on the push path, read the source in an actor of its own
            (``stages/pipeline/reader.py``; the source must pickle): no record crosses the
            driver, which gets back each batch's count and end position only.
    """

    def __init__(self, source: Source, stages: Sequence[StageSpec],
                 sink: Sink | Mapping[str, Sink], *,
                 run_id: str | None = None, run_store_url: str | None = None,
                 batch_size: int = 256, max_in_flight: int = 8,
                 policy: CheckpointPolicy | None = None,
                 observer: CheckpointFlushObserver | None = None,
                 observer_for: Callable[[StageSpec], CheckpointFlushObserver | None]
                 | None = None,
                 on_stage_lost: StageLostHook | None = None,
                 placement: Mapping[str, str] | None = None,
                 on_event: Callable[[PipelineEvent], None] | None = None,
                 max_recoveries: int = 20, call_timeout: float = 60.0,
                 ping_timeout: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 keep_steps: int | None = None, takeover: bool = False,
                 run_ttl: float = 10.0, data_path: str = "driver",
                 source_reader: bool = False) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        if keep_steps is not None and keep_steps < 1:
            raise ValueError(f"keep_steps must be >= 1, got {keep_steps}")
        ids = [s.stage_id for s in stages]
        if len(set(ids)) != len(ids):
            raise ValueError(f"stage ids must be unique, got {ids}")
        for s in stages:
            if s.index is not None:
                raise ValueError(f"{s.stage_id!r} is an instance spec: give the stage's own")
        if batch_size < 1 or max_in_flight < 1:
            raise ValueError("batch_size and max_in_flight must be >= 1")
        if data_path not in DATA_PATHS:
            raise ValueError(f"data_path must be one of {DATA_PATHS}, got {data_path!r}")
        if source_reader and data_path != "push":
            raise ValueError("source_reader=True sends batches from the reader to the first "
                             "stages: it needs data_path='push'")
        self.source = source
        self.specs = list(stages)
        if isinstance(sink, Mapping):
            sink = SinkSet(sink)
        #: the edges, checked (``PipelineGraphError`` here, before anything runs)
        self.graph = Graph(self.specs, list(sink) if isinstance(sink, SinkSet)
                           else [self.specs[-1].stage_id])
        self._by_id = {s.stage_id: s for s in self.specs}
        self._graph_record = self.graph.record()
        #: every instance of every stage (a plain stage is its own), in pipeline order
        self.instances = expand(self.specs)
        self._spec_of = {s.stage_id: s for s in self.instances}
        self._records: dict[int, RunStep | None] = {}  # step records read by a rollback
        self.sink = sink
        #: outputs go stage -> sink writer -> sink, never through the driver, when the sink
        #: may commit in another process (``stages/pipeline/sink_writer.py``)
        self.remote_commit = commits_anywhere(sink, pushed=data_path == "push")
        if data_path == "push" and not self.remote_commit:
            names = sorted({type(x).__name__ for x in (
                sink.sinks.values() if isinstance(sink, SinkSet) else [sink])})
            raise ValueError(f"data_path='push' sends the outputs to the sink writer, but "
                             f"{names} commit(s) in the driver (no commit_anywhere = True nor "
                             "commit_pushed_anywhere = True): "
                             "use data_path='driver'")
        #: the stages push to each other (``stages/pipeline/pushing.py``)
        self._push = data_path == "push"
        self._attempt = 0
        self._loose_pushes: list[Any] = []
        self._reader_wanted = source_reader
        self._reader: Any = None  # the source reader actor (``source_reader``)
        self._writer: Any = None
        self._handoff: Handoff | None = None  # the driver's side of the writer
        self._committer: Any = None  # the thread a step's commit runs in (per run)
        read = {name for ins in self.graph.inputs.values() for name in ins}
        self._encoders = {sid: enc for sid, enc in stage_encoders(
            sink, self.graph.sinks, read).items()
            if self.remote_commit and not self._by_id[sid].parallel}
        self.run_id = run_id or uuid.uuid4().hex[:16]
        self.runs = RunStore(open_store_for(
            run_store_url or stages[0].store_url,
            stages[0].block_size if run_store_url is None else None), claim_ttl=run_ttl)
        self.takeover = takeover
        self._hold: RunDriver | None = None
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        if self._push:
            self._check_senders()
        #: batches the driver keeps in flight: on the push path its edge has the bound of
        #: every other (a push holds a thread of its receiver until its call ran)
        self._room = min(max_in_flight, self.edge_bound) if self._push else max_in_flight
        # Step records older than every stage's retained generations can no longer be
        # restored; keeping them would grow the store by a lease per step forever.
        self.keep_steps = keep_steps or max(s.retention for s in stages)
        self._clock = clock
        self.manager = CheckpointManager(policy or CheckpointPolicy(every_records=4096),
                                         clock=clock)
        self.observer = observer
        self.observer_for = observer_for
        self.on_stage_lost = on_stage_lost
        self.placement = dict(placement or {})
        self.on_event = on_event
        self.max_recoveries = max_recoveries
        self.call_timeout = call_timeout
        self.ping_timeout = ping_timeout
        self._handles: dict[str, Any] = {}
        self._nodes: dict[str, str | None] = {}
        self._epochs: dict[str, int] = {}
        self._actor_ids: dict[str, str] = {}
        self._lease_ids: dict[str, str | None] = {}
        self._events: list[PipelineEvent] = []
        self._reset_counters()

    # -- public --------------------------------------------------------------------------
    @property
    def handles(self) -> dict[str, Any]:
        """Current actor handle per stage id - per instance id (``<stage>@<i>of<N>``) for a
        parallel stage (changes when a stage is relaunched)."""
        return dict(self._handles)

    def node_of(self, stage_id: str) -> str | None:
        """Node id the current incarnation of ``stage_id`` runs on (as last reported)."""
        return self._nodes.get(stage_id)

    @property
    def committed_step(self) -> int:
        return self._committed

    def request_checkpoint(self, note: str | None = None) -> None:
        """Ask for a barrier as soon as possible (e.g. before a risky operation)."""
        self.manager.request(PIPELINE_TRACK, note=note)

    def run(self, *, max_steps: int | None = None, pause: bool = False,
            claim: RunClaim | None = None) -> PipelineResult:
        """Run until the source is exhausted and all is committed (or ``max_steps`` steps
        were committed by this call). Stage actors are stopped on return or error.

        Args:
            max_steps: stop after committing this many steps (the run stays resumable).
            pause: when stopping early, record a savepoint: the run becomes ``paused`` at its
                last committed step, to be resumed exactly once by whoever claims it.
            claim: resume a paused run claimed with ``RunStore.claim``; the claim is
                completed once every stage is restored (so a crash before that leaves the
                claim orphaned, for ``recover_orphaned``).

        Raises ``PipelineError`` (``StageProcessError`` for a stage's own exception);
        ``CheckpointKeyRequired`` before the first record when a stage could never
        checkpoint (pickle without a key on a shared store: a setting, not replayed);
        ``RunNotPausedError`` for a paused run without a claim; ``RunActiveError`` if another
        driver drives the run (no ``takeover``); ``RunFencedError`` if one took it over.
        """
        t0 = time.monotonic()
        self._reset_counters()
        self._events = []
        self._max_steps = max_steps
        orphans = self.runs.recover_orphaned()  # start-up duty: re-arm crashed claims
        if claim is not None:
            if claim.run_id != self.run_id:
                raise ValueError(f"claim is for run {claim.run_id!r}, not {self.run_id!r}")
        else:
            self.runs.create_run(self.run_id)
        hold = self._hold = RunDriver.acquire(self.runs, self.run_id, takeover=self.takeover,
                                              claim=claim)
        failure: StageFailure | None = None
        fenced = False
        self._committer = Committer(f"commit-{self.run_id}")
        clean = False
        try:
            last = self.runs.latest_step(self.run_id)
            self._committed = last.step if last is not None else 0
            self._committed_position = (last.source_position if last is not None
                                        else self.source.initial_position())
            if last is not None:  # before anything is fenced, launched or replayed
                self.graph.check_resume(last.meta.get("graph"), last.step)
            self.sink.fence(hold.token, self._committed)
            try:
                check_layout(last, self.specs)
                self._launch_all(orphans)
            except BaseException:
                if claim is not None:
                    claim.abort()  # give the run back (paused) for another attempt
                raise
            if claim is not None:
                claim.complete()
            while True:
                try:
                    if failure is not None:
                        self._recover(failure)
                        failure = None
                    self._rewind()
                    if self._drive():
                        break
                except StageFailure as f:
                    failure = f
            finished = self._exhausted and self._barrier is None and not self._batches
            if finished:
                hold.finish()
            elif pause:
                hold.pause(self._committed)
            self._emit("done", self._committed, detail={"finished": finished})
            clean = True
        except RunFencedError:
            fenced = True
            raise
        finally:
            # A running commit ends before all else - on an error (Ctrl-C) for a while
            # only: a commit cut short is a driver crash mid-commit, which loses nothing.
            self._committer.shutdown(None if clean else self.ping_timeout)
            stop_stages(self.instances, self._handles, timeout=self.ping_timeout,
                        unregister=not fenced)
            for helper in (self._writer, self._reader):
                if helper is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(helper, no_restart=True)
            self._writer = self._handoff = self._reader = None
            hold.release()
        return PipelineResult(
            run_id=self.run_id, committed_step=self._committed,
            source_position=self._committed_position, finished=finished,
            records_in=self._records_in, records_out=self._records_out,
            checkpoints=self._checkpoints, recoveries=self._recoveries,
            relaunches=self._relaunches, replayed_records=self._replayed,
            recovery_s=self._recovery_s, duration_s=time.monotonic() - t0,
            events=tuple(self._events), fallbacks=tuple(self._fallbacks))

    # -- internals: lifecycle -----------------------------------------------------------------
    def _reset_counters(self) -> None:
        self._batches: deque[_Batch] = deque()
        self._barrier: Barrier | None = None
        # step -> output stage -> the outputs of its batches
        self._outputs: dict[int, dict[str, list[Any]]] = {}
        self._committed = 0
        self._committed_position: Any = None
        self._position: Any = None
        self._open_step = 1
        self._open_records = 0
        self._open_since = 0.0  # when the open step's barrier before it was injected
        self._uncommitted_read = 0
        self._exhausted = False
        self._idle = False
        self._records_in = self._records_out = self._checkpoints = 0
        self._recoveries = self._relaunches = self._replayed = 0
        self._recovery_s = 0.0
        self._steps_this_run = 0
        self._step_counts: dict[int, tuple[int, int]] = {}  # committed here: (in, out)
        self._fallbacks: list[tuple[int, int]] = []
        self._max_steps: int | None = None
        self._last_progress = time.monotonic()

    def _emit(self, kind: str, step: int | None = None, stage_id: str | None = None,
              detail: Mapping[str, Any] | None = None) -> None:
        ev = PipelineEvent(kind, step, stage_id, dict(detail or {}), time.time())
        self._events.append(ev)
        note_event(self.run_id, kind, ev.detail)
        if self.on_event is not None:
            self.on_event(ev)

    def _launch_all(self, orphans: Sequence[str] = ()) -> None:
        if self.remote_commit:
            self._writer = start_writer(self.sink, self.graph.sinks)
            self._check_writer_sees_the_sink()
            if self._writer is not None:
                self._handoff = Handoff(self._writer)
        for spec in self.instances:
            node = self.placement.get(spec.stage_id, self.placement.get(spec.base_id))
            self._handles[spec.stage_id] = launch_stage(
                spec, node_id=node, observer=self._observer(spec), restore_step=self._committed)
        refs = {sid: h.info.remote() for sid, h in self._handles.items()}
        infos: dict[str, Mapping[str, Any]] = {}
        for sid, ref in refs.items():
            try:
                infos[sid] = self._get(ref, sid)
                self._note_info(sid, infos[sid])
            except StageFailure as exc:  # what Ray said: an error in its constructor, a lost worker
                raise PipelineError(f"stage {sid!r} did not start: {exc.cause!r}") from exc
        # Keyed instances start empty: their restore is the rollback's (from the leases the
        # committed step names), so they are not among the ``first`` infos.
        first = {sid: i for sid, i in infos.items() if self._spec_of[sid].key is None}
        try:
            self._roll_back(self._committed, first=first, announce=False)
        except StageFailure as exc:
            raise PipelineError(f"stages did not start at step {self._committed}: "
                                f"{exc}") from exc
        self._emit("started", self._committed, detail={
            "nodes": dict(self._nodes), "epochs": dict(self._epochs),
            "source_position": self._committed_position, "orphans_recovered": list(orphans),
            "driver_epoch": self._driver().epoch})

    def _check_writer_sees_the_sink(self) -> None:
        """Where the writer does not see the sink's directories as this process does, the
        sink commits here, as before the writer (``sink_writer.writer_sees``)."""
        if writer_sees(self._writer, self.sink, self.call_timeout, self.run_id):
            return
        self._writer = None
        self.remote_commit = False
        self._encoders = {}
        if self._push:
            log.warning("run %s: data_path='push' needs the sink writer: the driver submits "
                        "every call instead", self.run_id)
            self._push = self._reader_wanted = False
            self._room = self.max_in_flight

    def _rewind(self) -> None:
        """Reset the driver's cursor to the last committed step."""
        self._batches.clear()
        self._barrier = None
        self._outputs.clear()
        if self._writer is not None:
            if not alive(self._writer, self.ping_timeout):  # lost: uncommitted output only
                with contextlib.suppress(Exception):
                    ray.kill(self._writer, no_restart=True)
                self._writer = start_writer(self.sink, self.graph.sinks)
                assert self._handoff is not None
                self._handoff.rewind(self._writer)
            else:
                assert self._handoff is not None
                self._handoff.rewind()  # the chunks of the attempt before: never named again
        if self._push:  # a new attempt: the stages' inboxes and the writer start afresh
            self._wire()
        self._replayed += self._uncommitted_read
        note_replayed(self.run_id, self._uncommitted_read)
        self._uncommitted_read = 0
        self._position = self._committed_position
        self._open_step = self._committed + 1
        self._open_records = 0
        self._exhausted = False
        self._idle = False
        self._last_progress = time.monotonic()
        pending = self.manager.pending(PIPELINE_TRACK)
        if pending is not None and pending.running:
            self.manager.fail(PIPELINE_TRACK, "rolled back")
        self.manager.restart(PIPELINE_TRACK)  # the replay counts from the committed step

    # -- internals: the data path ---------------------------------------------------------------
    def _submit(self, records: Any) -> dict[str, list[list[Any]]]:
        # One call per output of each input, inputs in their listed order (``graph.py``).
        # A keyed stage's instances get their shares when the producer splits for them,
        # else the whole batch (or the parts of it), each keeping its share
        # (``stages/actors/routing.py``). An output stage the sink writer takes from encodes
        # its own output (``encoders``).
        splits = self.graph.splits
        shared: set[str] = set()  # the producers whose outputs are shares, one per instance
        source = [records]
        if SOURCE in splits and isinstance(records, list):
            shared.add(SOURCE)
            source = split_source(self.graph, records, self._position)
        if self._push:
            return self._push_submit(records, source if shared else None)
        outs: dict[str, list[list[Any]]] = {SOURCE: [source]}
        for sid in self.graph.order:
            instances = [self._handles[inst.stage_id]
                         for inst in self._by_id[sid].instances()]
            kw: dict[str, Any] = {"encode": self._encoders[sid]} if sid in self._encoders else {}
            how = splits.get(sid)
            calls: list[list[Any]] = []
            for name in self.graph.inputs[sid]:
                for group in outs[name]:
                    if name in shared:
                        calls.append([h.process_batch.remote(share, **kw)
                                      for h, share in zip(instances, group)])
                    elif how is not None:  # one instance: its output as one share per reader
                        calls.append(list(instances[0].process_batch.options(
                            num_returns=how.parallelism).remote(*group, split=how, **kw)))
                    else:
                        calls.append([h.process_batch.remote(*group, **kw) for h in instances])
            outs[sid] = calls
            if how is not None:
                shared.add(sid)
        return {sid: outs[sid] for sid in self.graph.sinks}

    def _drive(self) -> bool:
        """Run until done (True) or until ``max_steps`` were committed (True)."""
        while True:
            if self._max_steps is not None and self._steps_this_run >= self._max_steps:
                return True
            self._fill()
            if not self._batches and self._barrier is None:
                if self._exhausted:
                    return True
                if self._idle:  # a followed source with nothing new, nothing in flight
                    getattr(self.source, "wait_for_more", lambda: time.sleep(0.2))()
                    continue
            self._await_progress()

    def _fill(self) -> None:
        if self._reader_wanted:  # the source is read by the reader actor
            return self._fill_from_reader()
        self._idle = False
        self._maybe_barrier(final=False)  # a step already due (read while one committed)
        while (not self._exhausted and len(self._batches) < self._room
               and not self._step_full()):
            records, new_position = self.source.read(self._position, self.batch_size)
            n = num_rows(records)
            if not n:
                self._source_ended()
                break
            self._add_batch(n, new_position, self._submit(records))
            self._maybe_barrier(final=False)
        self._maybe_barrier(final=self._exhausted or self._idle)

    def _source_ended(self) -> None:
        """The source gave nothing: exhausted, or (a followed directory, ``exhausted``)
        nothing yet - commit, ask again."""
        ended = getattr(self.source, "exhausted", None)
        if ended is None or ended(self._position):
            self._exhausted = True
        else:
            self._idle = True

    def _add_batch(self, n: int, new_position: Any, outs: dict[str, list[list[Any]]]) -> None:
        """A batch of the open step was sent: in flight, counted towards the step."""
        self._batches.append(_Batch(self._open_step, new_position, n, outs))
        self._position = new_position
        self._open_records += n
        self._uncommitted_read += n
        self.manager.record(PIPELINE_TRACK, n)

    def _get(self, ref: Any, sid: str | None) -> Any:
        try:
            got = get_sorted(ref, sid, timeout=self.call_timeout, actor_ids=self._actor_ids)
        except StageFailure as f:
            # On the push path a stage passes on what failed further down (a receiver lost,
            # a fenced checkpoint): the suspect is the stage the error names, not the one
            # whose call carried it; none named - the recovery probes every stage.
            if self._push and isinstance(f.cause, RayTaskError):
                raise StageFailure(self._named_in(f.cause), f.cause) from f.cause
            raise
        if self._push and isinstance(got, str) and got == STALE:  # its attempt ended
            raise StageFailure({sid} if sid else set(),
                               RuntimeError(f"stage {sid!r} ended the push attempt"))
        return got

    def _driver(self) -> RunDriver:
        assert self._hold is not None, "only while run() runs"  # set for the whole of it
        return self._hold
