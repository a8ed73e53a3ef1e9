"""Stage actors: a user's plain class turned into a checkpointed, fenced Ray actor.

A user writes a :class:`Stage` - a plain, picklable class with ``initial_state()`` and
``process(state, record)`` - and describes it with a :class:`StageSpec` (stage id, a factory,
the store URL, checkpoint options, resources). :func:`launch_stage` starts a
:class:`StageActor` from the spec anywhere in the cluster; the spec alone is enough to start
it again somewhere else after a crash, which is what the scheduler and the pipeline do.

Why the design is as it is:

* **One lease per stage, taken by force; restore on start** - the mechanism every stateful
  actor of :mod:`stages` shares, :class:`~stages.actors.incarnation.Incarnation` (also under
  ``@checkpointed`` actors): ``steal=True`` bumps the fencing epoch, so the previous
  incarnation - dead, or a zombie on a node Ray has declared lost - can never write a
  checkpoint again; the newest generation that verifies is restored (or, for a pipeline
  rollback, the newest at or before a step), else ``factory().initial_state()``; a lease
  whose generations all fail verification is ``CheckpointCorrupt``, never a silent restart.
  A stage checkpoints when its pipeline (a barrier) or the scheduler asks, never by itself.
* **Concurrency groups** (in :func:`remote_stage_class`). Data-path methods (``process_batch``, ``checkpoint``,
  ``rollback``, ``stop``, ``get_state``) run in Ray's default group, one at a time and in the
  order a caller submitted them; this is what lets a pipeline's barrier (a ``checkpoint``
  call queued after a batch) travel *with* the data. Control methods (``info``, ``ping``) run
  in a separate ``control`` group so that the scheduler can look at a stage while it is in
  the middle of a long checkpoint flush; ``flushed`` (waiting for a background flush) in a
  ``flush`` group of its own, so waiting never takes a thread the control calls need; the
  push data path's messages in a ``push`` group (``stages/actors/pushing.py``).
* **Pipeline stages are "aligned".** Their state is meaningful only at barriers (a step
  ``>= 1``); an out-of-band checkpoint request (the scheduler's, before a preemption or a
  drain) is answered with the last barrier checkpoint instead of writing one, because the
  pipeline replays from its last committed step anyway, and an extra generation would evict
  one the rollback may need. Plain stages checkpoint whenever asked.
* **Asynchronous barrier checkpoints** (``StageSpec(async_checkpoints=True)``). A barrier
  ``checkpoint(step >= 1)`` takes a snapshot (``stages/checkpoint/background.py``: serialize, copy the
  numpy buffers) and returns ``{"pending": True, ...}`` at once, so the data path goes on
  while the flush runs in the background; the caller learns that the step is durable from
  :meth:`StageActor.flushed`, which runs in its own ``flush`` concurrency group and returns
  the ``CheckpointInfo`` or raises ``CheckpointFailed``. A pipeline commits the step only
  then (``stages/pipeline/barrier.py``). At most one flush is in flight: a second barrier while one
  runs waits for it (no coalescing: every barrier is a step), and ``rollback``/``shutdown``
  wait for it before they replace the state or give up the lease. Out-of-band checkpoints
  (``step < 1``) and ``shutdown(checkpoint=True)`` stay synchronous: their callers (the
  scheduler before a preemption) need the state durable when the call returns.
* **The flush observer is passed through, untouched**: the scheduler supplies a picklable
  object; the actor hands it to ``CheckpointedStageState`` which calls it around every flush.
* **Registration is fire-and-forget, through a hook.** When ``spec.registrar`` is set (a
  :class:`~stages.actors.hooks.StageRegistrar`, e.g. ``scheduler.SchedulerRegistrar``), the stage
  hands it a :class:`StageRegistration` from ``__init__`` and does not wait: the scheduler
  may call back into the stage, which cannot answer before ``__init__`` returns. The stage
  never names a scheduler method itself (``stages/actors/hooks.py`` says why).
* **One reading of a stage's resources.** :meth:`StageSpec.ray_options` (the keywords for
  Ray's ``.options``) and :meth:`StageSpec.ray_resources` (the same amounts keyed as a
  node's resource view, for placement) come from one parse of ``spec.resources``, so the
  actor Ray starts and the node a placer chose for it can never disagree.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import ray

from blockstore import BlockStore, Lease, parse_store_url

from ..checkpoint.background import PendingCheckpoint
from ..errors import CheckpointFailed, CheckpointKeyRequired, StageError
from .batches import mark_raised, num_rows, run_stage, warm_up
from .control import StageView
from .pushing import PUSH_CONCURRENCY, PUSH_GROUP, PushGroupMethods, Pushed
from .hooks import StageRegistrar, StageRegistration
from .instance import InstanceWork
from .routing import KeySpec, Part, Splitting, merge_parts
from .routing import shaped
from .stage import Stage, check_parallel, ray_context
from .incarnation import Incarnation, RollbackUnavailable, open_store_for, register_quietly
from .incarnation import restore_or_initial
from ..checkpoint.incremental import DEFAULT_FULL_EVERY
from ..checkpoint.keygroups import DEFAULT_MAX_PARALLELISM
from ..checkpoint.observer import CheckpointFlushObserver
from .resources import _default_resources, resource_amounts, resource_keywords, resources_held
from ..checkpoint.state import CheckpointedStageState

if TYPE_CHECKING:
    from ray.actor import ActorHandle

__all__ = [
    "CONTROL_GROUP",
    "FLUSH_GROUP",
    "ControlledStageActor",
    "RollbackUnavailable",
    "Stage",
    "StageActor",
    "StageRegistration",
    "StageSpec",
    "StageStopped",
    "actor_options",
    "launch_stage",
    "remote_stage_class",
    "resource_amounts",
    "resource_keywords",
    "resources_held",
    "restore_state",
]

log = logging.getLogger(__name__)

#: Concurrency group of the methods that must answer while a checkpoint is flushing.
CONTROL_GROUP = "control"
CONTROL_CONCURRENCY = 2
#: Concurrency group of :meth:`StageActor.flushed` (waits for a background flush).
FLUSH_GROUP = "flush"
FLUSH_CONCURRENCY = 2


@dataclass(frozen=True, slots=True)
class StageSpec:
    """Everything needed to (re)create a stage anywhere; picklable.

    Attributes:
        stage_id: unique in the store; also the name of the stage's lease.
        factory: zero-argument callable returning a :class:`Stage` (a class works).
        store_url: where checkpoints live (``file://`` or a path; every node must reach it).
        priority: for the scheduler; higher is more important.
        resources: Ray resource options (``num_cpus``, ``num_gpus``, ``memory``; any other key
            is a custom resource).
        retention, codec, compression: passed to ``CheckpointedStageState``.
        allow_unauthenticated: write pickle checkpoints without a key even on a shared
            store (an object store); passed to ``CheckpointedStageState``. The key itself
            is deliberately not part of the spec (specs are pickled into the scheduler's
            registry and shown by it): it is read from the environment
            (``$BLOCKPOINT_CHECKPOINT_KEY_FILE`` or ``$BLOCKPOINT_CHECKPOINT_KEY``,
            ``blockstore/keys.py``) where the state is opened, in the stage's own worker
            process - so a key file on every node reaches every incarnation, the ones the
            scheduler restores included (never the key in a runtime env, which Ray shows
            in its job table: docs/OPERATIONS.md, "Keys on a cluster").
        block_size: block size if the store must be created (``None``: the default); an
            existing store keeps its own.
        lease_ttl: TTL of the stage's lease; a keepalive thread renews it every third.
        registrar: where every incarnation registers (a picklable
            :class:`~stages.actors.hooks.StageRegistrar`, e.g. ``scheduler.SchedulerRegistrar``),
            or None.
        async_checkpoints: barrier checkpoints (``step >= 1``) snapshot the state and flush
            it in the background; :meth:`StageActor.flushed` says when it is durable. The
            stage's ``process`` may then mutate the state in any way during a flush (the
            flush writes the snapshot). Costs one copy of the state's numpy buffers in
            memory (reused from one snapshot to the next).
        incremental, full_every: passed to ``CheckpointedStageState``: chunks unchanged
            since the last generation this incarnation wrote or restored are not rewritten,
            and every ``full_every``-th checkpoint is full (``stages/checkpoint/incremental.py``).
        parallelism: instances (actors) the stage runs as in a pipeline, each on its own
            lease (``stages/actors/instance.py``); 1 and no ``key``: one plain stage actor.
        key: a record field's name or a function of the record: the stage is keyed, its
            state per key group (records routed by a stable hash of the key, even at
            parallelism 1, so a run can be resumed at another parallelism). ``None``:
            keyless; parallel instances then take records round robin, state per instance.
        max_parallelism: key groups of a keyed stage (fixed for the life of a run; a
            restore with another is refused with ``MaxParallelismChanged``).
        inputs: the stages (ids) this one reads in a pipeline, ``"source"`` for the source;
            ``None``: the stage listed before it (the first: the source) - a chain
            (``stages/pipeline/graph.py``).
        index: set by :meth:`instances` only: this spec is instance ``index`` of the stage.
    """

    stage_id: str
    factory: Callable[[], Stage]
    store_url: str
    priority: int = 0
    resources: Mapping[str, float] = field(default_factory=_default_resources)
    retention: int = 2
    codec: str = "pickle"
    compression: str = "auto"
    block_size: int | None = None
    lease_ttl: float = 10.0
    registrar: StageRegistrar | None = None
    allow_unauthenticated: bool = False
    async_checkpoints: bool = False
    incremental: bool = False
    full_every: int = DEFAULT_FULL_EVERY
    max_state_bytes: int | None = None  # the restore's bound (CheckpointTooLarge; FORMAT.md 2.7)
    parallelism: int = 1
    key: KeySpec | None = None
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    index: int | None = None
    inputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # A URL carrying a secret is refused here, with the secret masked
        # (``blockstore/redact.py``), before a spec holding it is shown or persisted.
        if isinstance(self.store_url, (str, os.PathLike)):  # an open store (tests) is taken as is
            parse_store_url(self.store_url)
        # The stage id names its lease: refused here, when the spec is made, not in Ray.
        from blockstore.checks import check_id

        check_id(self.stage_id, "stage id")
        check_parallel(self)
        if self.inputs is not None:
            # An ordered sequence only: a fan-in's union follows the order (a set's order
            # would change with the hash seed, from one driver restart to the next).
            if not isinstance(self.inputs, (list, tuple)) or \
                    not all(isinstance(i, str) for i in self.inputs):
                raise TypeError(f"stage {self.stage_id!r}: inputs is a list or tuple of stage "
                                f"ids (in the order a fan-in reads them), got {self.inputs!r}")
            object.__setattr__(self, "inputs", tuple(self.inputs))

    @property
    def parallel(self) -> bool:
        """True if the stage runs as instances (``parallelism > 1`` or keyed)."""
        return self.parallelism > 1 or self.key is not None

    @property
    def base_id(self) -> str:
        """The stage's own id (an instance spec's ``stage_id`` is ``<base_id>@<i>of<N>``)."""
        return self.stage_id.rsplit("@", 1)[0] if self.index is not None else self.stage_id

    def instances(self) -> list[StageSpec]:
        """The specs of the stage's instances: itself when it is not parallel, else one per
        index with ``stage_id`` ``<stage_id>@<i>of<parallelism>`` (its lease's name)."""
        if not self.parallel or self.index is not None:
            return [self]
        return [replace(self, stage_id=f"{self.stage_id}@{i}of{self.parallelism}", index=i)
                for i in range(self.parallelism)]

    def state_options(self) -> dict[str, Any]:
        """Keyword options for ``CheckpointedStageState`` (constructor and ``restore``) and
        the restore's ``max_state_bytes`` (``incarnation.restore_or_initial``)."""
        return {"retention": self.retention, "codec": self.codec,
                "compression": self.compression,
                "allow_unauthenticated": self.allow_unauthenticated,
                "incremental": self.incremental, "full_every": self.full_every,
                "max_state_bytes": self.max_state_bytes}

    def open_store(self) -> BlockStore:
        """Open the spec's store (created with ``block_size`` if it does not exist)."""
        return open_store_for(self.store_url, self.block_size)

    def ray_options(self) -> dict[str, Any]:
        """The resource keywords for Ray's ``.options``: ``num_cpus``, ``num_gpus``,
        ``memory`` as given, and ``resources`` (every custom resource, as floats)."""
        return resource_keywords(self.resources)

    def ray_resources(self) -> dict[str, float]:
        """The amounts the stage's actor takes on a node, keyed as Ray's node resource view
        (``CPU``, ``GPU``, ``memory``, custom names); what a placer compares with a node's
        free resources.

        ``CPU`` is 1.0 when ``num_cpus`` is not given (what Ray reserves to schedule such
        an actor); zero amounts are left out (they never constrain a node).
        """
        return resource_amounts(self.resources, scheduling=True)

    def launch(self, node_id: str, *, namespace: str | None,
               observer: CheckpointFlushObserver | None) -> ActorHandle:
        """Start a detached incarnation pinned to ``node_id`` (hard affinity) in
        ``namespace``, reporting its flushes to ``observer``; returns its handle at once.

        What a manager relaunches a stage with (:class:`~stages.actors.hooks.Relaunchable`).
        """
        opts = actor_options(self, node_id=node_id, soft=False)
        opts["lifetime"] = "detached"
        opts["namespace"] = namespace
        return remote_stage_class().options(**opts).remote(self, observer)


class StageStopped(StageError, RuntimeError):
    """The incarnation was shut down (preempted, drained, stopped); use a new one.

    Attributes:
        stage_id: the stage.
    """

    def __init__(self, message: str, *, stage_id: str | None = None) -> None:
        super().__init__(message)
        self.stage_id = stage_id


def restore_state(lease: Lease, spec: StageSpec, *, observer: CheckpointFlushObserver | None,
                  max_step: int | None = None) -> CheckpointedStageState[Any]:
    """Bind the stage's state to ``lease``: restored if a checkpoint exists, else the
    factory's initial state; ``max_step`` as in :func:`stages.actors.incarnation.restore_or_initial`
    (whose guarantees hold: ``RollbackUnavailable``, never unverified state)."""
    return restore_or_initial(lease, lambda: spec.factory().initial_state(), observer=observer,
                              max_step=max_step, name=spec.stage_id, **spec.state_options())


class StageActor(StageView, Pushed):
    """One incarnation of a stage: its lease, its state, its counters.

    A plain class (``launch_stage`` applies ``ray.remote``), so it also runs in-process for
    tests. Construction acquires the lease by force (epoch bump, fencing every earlier
    incarnation) and restores; see the module docstring.

    Args:
        spec: the stage.
        observer: flush observer handed to ``CheckpointedStageState`` (the scheduler's).
        restore_step: restore the newest generation at or before this step instead of the
            newest (pipeline rollback). ``None``: newest.
    """

    def __init__(self, spec: StageSpec, observer: CheckpointFlushObserver | None = None,
                 restore_step: int | None = None) -> None:
        self.spec = spec
        self._stage = spec.factory()
        warm_up(self._stage)
        self._node_id, self._handle = ray_context()
        self._pid = os.getpid()
        # An instance of a parallel stage: its share of the records, its key groups.
        self._work = InstanceWork(spec) if spec.index is not None else None
        if self._work is not None:
            self._work.check(self._stage)
        opts = {"node_id": self._node_id, "lease_ttl": spec.lease_ttl, "observer": observer,
                "max_step": restore_step, **spec.state_options()}
        self._inc = (self._work.incarnation(spec.open_store(), spec, **opts)
                     if self._work is not None else
                     Incarnation(spec.open_store(), spec.stage_id,
                                 lambda: spec.factory().initial_state(), **opts))
        self._lease = self._inc.lease
        # A setting every checkpoint would refuse (no key on a shared store) is raised by the
        # first call the driver makes, ``info``, before any record: not by the first barrier,
        # where a failed checkpoint reads as a lost stage and is replayed.
        self._refused: CheckpointKeyRequired | None = None
        try:
            self._css.check_authenticated()
        except CheckpointKeyRequired as exc:
            self._refused = exc
        self._lock = threading.Lock()
        self._stopped = False
        self._records_total = 0
        self._records_since = 0
        self._aligned = restore_step is not None
        self._pending: PendingCheckpoint | None = None  # the last async barrier checkpoint
        self._registration_ref: Any = None
        if spec.registrar is not None:
            self._registration_ref = register_quietly(spec.registrar, self.registration(),
                                                      f"stage {spec.stage_id}")

    @property
    def _css(self) -> CheckpointedStageState[Any]:
        return self._inc.css

    def _check_running(self) -> None:
        if self._stopped:
            raise StageStopped(f"stage {self.spec.stage_id!r} was stopped",
                               stage_id=self.spec.stage_id)

    # -- data path (default concurrency group: one at a time, in submission order) --------
    def process_batch(self, records: Any, *parts: Any, encode: Any = None,
                      split: Splitting | None = None) -> Any:
        """Feed ``records`` in order; return every output, in order (``encode``: a sink's
        batch encoder - the output returned encoded, ``EncodedBatch``, for the pipeline's
        sink writer; ``stages/pipeline/sink_writer.py``; ``split``: the output returned as
        one :class:`~stages.actors.routing.Share` per instance of the keyed stage that
        reads it - called with ``num_returns`` = its parallelism).

        ``records`` is a batch (a list of records or a ``pyarrow.Table``); a record stage
        returns a list, a batch stage (``process_batch``) a table
        (``stages/actors/batches.py``). After a parallel stage, the arguments are the
        :class:`~stages.actors.routing.Part`\\ s of one batch, merged in input order first.
        An instance of a parallel stage returns its own ``Part``
        (``stages/actors/instance.py``).

        If ``process`` raises, the exception propagates and the in-memory state may hold
        part of the batch: the caller must roll back (``rollback``) or relaunch before
        trusting this incarnation again.
        """
        with self._lock:
            out = self._process_locked(records, parts)
        return self._shaped(out, encode, split)

    def _process_locked(self, records: Any, parts: tuple[Any, ...]) -> Any:
        """:meth:`process_batch`'s work on the state (the caller holds the lock)."""
        self._check_running()
        try:
            if self._work is not None:
                out, n = self._work.process(self._stage, self._inc, (records, *parts))
            else:
                if parts or isinstance(records, Part):
                    records = merge_parts((records, *parts))
                out = run_stage(self._stage, self._css.state, records)
                n = num_rows(records)
        except Exception as exc:  # named for the driver, however many calls it crosses
            mark_raised(exc, self.spec.stage_id)
            raise
        self._records_total += n
        self._records_since += n
        return out

    def _shaped(self, out: Any, encode: Any, split: Splitting | None) -> Any:
        """An output as the next hop takes it (:func:`~stages.actors.routing.shaped`)."""
        return shaped(out, encode, split, parallel=self._work is not None)

    def checkpoint(self, step: int = 0, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write a checkpoint generation; return ``CheckpointInfo.to_dict()``.

        Fail-closed: any error while writing (fenced by a newer incarnation, I/O) raises
        ``CheckpointFailed`` and the counters do not move.

        Aligned stages (see :attr:`aligned`): a request with ``step < 1`` - an out-of-band
        checkpoint, e.g. the scheduler's before a preemption - writes nothing and returns the
        last barrier checkpoint's info with ``"skipped": True`` (``{}`` if there is none).
        Such a stage's state is consistent only at pipeline barriers, and the pipeline
        replays from its last committed barrier whatever was saved in between; writing it
        would only evict a barrier generation the rollback may need.
        """
        with self._lock:
            return self._checkpoint_locked(step, meta)

    def _checkpoint_locked(self, step: int, meta: dict[str, Any] | None) -> dict[str, Any]:
        """:meth:`checkpoint`'s work (the caller holds the lock)."""
        self._check_running()
        if step >= 1:
            self._aligned = True
        elif self._aligned:
            return self._skipped()
        if step >= 1 and self.spec.async_checkpoints:
            pending = self._inc.checkpoint_async(step=step, meta=meta)
            self._pending = pending
            self._records_since = 0
            return {"stage_id": self.spec.stage_id, "lease_id": self._lease.lease_id,
                    "step": step, "pending": True, "stall_s": pending.stall_s}
        info = self._inc.checkpoint(step=step, meta=meta)
        self._records_since = 0
        return info.to_dict()

    def flushed(self, step: int) -> dict[str, Any]:
        """Wait until the checkpoint of barrier ``step`` is durable; its ``CheckpointInfo``.

        For ``async_checkpoints`` stages, after ``checkpoint(step)`` returned ``pending``.
        Raises ``CheckpointFailed`` when that flush failed (the step is NOT saved) or when
        this incarnation has no checkpoint of ``step`` in flight or written (it was rolled
        back, or never asked): fail-closed, the caller must not commit the step.
        """
        pending = self._pending
        if pending is not None and pending.step == step:
            return pending.wait().to_dict()
        last = self._css.last_checkpoint
        if last is not None and last.step == step:
            return last.to_dict()
        raise CheckpointFailed(f"stage {self.spec.stage_id!r} has no checkpoint of step {step} "
                               "in flight or written by this incarnation",
                               lease_id=self._lease.lease_id)

    @property
    def aligned(self) -> bool:
        """True once this stage belongs to a pipeline: it was launched or rolled back to a
        step, or checkpointed with ``step >= 1`` (a barrier)."""
        return self._aligned

    def _skipped(self) -> dict[str, Any]:
        last = self._css.last_checkpoint
        return {} if last is None else {**last.to_dict(), "skipped": True}

    def rollback(self, step: int | None = None,
                 sources: list[str] | None = None) -> dict[str, Any]:
        """Reload the state from this stage's lease, as of the newest generation ``<= step``.

        Used by a pipeline to bring a live stage back to the last committed step. Keeps the
        lease and epoch. Returns ``info()``. A keyed instance restores from the leases
        ``sources`` (those that held its key groups at ``step``; ``None``: empty state).
        """
        with self._lock:
            self._check_running()
            self._unwire()  # a push attempt ends here (``stages/actors/pushing.py``)
            if self._work is not None and self.spec.key is not None:
                self._inc.bind(step, sources)  # type: ignore[call-arg]
            else:
                self._inc.bind(step)  # waits for a background flush of the old state first
            self._pending = None
            self._records_since = 0
            if step is not None:
                self._aligned = True
        return self.info()

    def get_state(self) -> Any:
        """The in-memory state (for tests and inspection)."""
        with self._lock:
            return self._inc.state

    def stop(self, checkpoint: bool = False, step: int = 0,
             meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Optionally checkpoint, release the lease, then exit the actor.

        Inside Ray the caller observes the actor's exit (``RayActorError``), not a return
        value (``ray.actor.exit_actor`` semantics); call :meth:`shutdown` first to get the
        checkpoint info back. Used in-process (no actor), it returns that info.
        """
        info = self.shutdown(checkpoint=checkpoint, step=step, meta=meta)
        if self._handle is not None:
            ray.actor.exit_actor()
        return info

    def shutdown(self, checkpoint: bool = False, step: int = 0,
                 meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Everything ``stop`` does except exiting: optional checkpoint, release the lease.

        The checkpoint follows the rules of :meth:`checkpoint` (skipped for an aligned stage
        unless ``step >= 1``).

        Afterwards data-path calls raise ``StageStopped``. Calling it twice is harmless.
        """
        with self._lock:
            if self._stopped:
                return None
            info = None
            if checkpoint and step < 1 and self._aligned:
                info = self._skipped() or None
            elif checkpoint:
                info = self._inc.checkpoint(step=step, meta=meta).to_dict()
                self._records_since = 0
            self._stopped = True
            self._unwire()
            self._inc.release()
            return info


def actor_options(spec: StageSpec, *, node_id: str | None = None, soft: bool = False,
                  name: str | None = None, spill: bool = False) -> dict[str, Any]:
    """The ``.options(...)`` used by :func:`launch_stage` (exposed for the scheduler).

    Apply them to :func:`remote_stage_class` (which carries the concurrency groups; Ray
    accepts those only in ``ray.remote``, not in ``.options``).
    """
    opts: dict[str, Any] = {
        "max_restarts": 0,
        "max_task_retries": 0,
        **spec.ray_options(),
    }
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id, soft=soft, _spill_on_unavailable=soft and spill)
    if name is not None:
        opts["name"] = name
    return opts


class ControlledStageActor(PushGroupMethods, StageActor):
    """:class:`StageActor` with ``info``/``ping``/``registration`` in the control group
    and ``flushed`` in the flush group.

    The push data path's messages run in the ``push`` group (``PushGroupMethods``).
    A separate class so that a plain ``ray.remote(StageActor)`` still works (every method in
    the default group; ``info`` then waits behind a running checkpoint), while
    :func:`remote_stage_class` - what :func:`launch_stage` uses - answers during flushes.
    """

    @ray.method(concurrency_group=CONTROL_GROUP)
    def info(self) -> dict[str, Any]:
        return StageActor.info(self)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def ping(self) -> str:
        return StageActor.ping(self)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def registration(self) -> StageRegistration:
        return StageActor.registration(self)

    @ray.method(concurrency_group=FLUSH_GROUP)
    def flushed(self, step: int) -> dict[str, Any]:
        return StageActor.flushed(self, step)


_remote_cls: Any = None


def remote_stage_class() -> Any:
    """``ray.remote`` of :class:`ControlledStageActor` with the control concurrency group
    declared (created once per process). Use it with :func:`actor_options`."""
    global _remote_cls
    if _remote_cls is None:
        _remote_cls = ray.remote(concurrency_groups={CONTROL_GROUP: CONTROL_CONCURRENCY,
                                                     FLUSH_GROUP: FLUSH_CONCURRENCY,
                                                     PUSH_GROUP: PUSH_CONCURRENCY})(
            ControlledStageActor)
    return _remote_cls


def launch_stage(spec: StageSpec, *, node_id: str | None = None, soft: bool = False,
                 name: str | None = None, observer: CheckpointFlushObserver | None = None,
                 restore_step: int | None = None, spill: bool = False) -> ActorHandle:
    """Start an incarnation of ``spec`` as a Ray actor and return its handle at once.

    ``node_id`` pins it to a node (``soft``: elsewhere if that node is gone or infeasible;
    ``soft`` and ``spill``: also elsewhere if that node has no free resources now).
    ``restore_step``: restore the newest generation at or before that step (see
    :func:`restore_state`).
    Ray never restarts it (``max_restarts=0``): restarting is the scheduler's or the
    pipeline's decision, made from the spec. Construction errors (corrupt lease, unreachable
    store) surface on the first call to the handle.
    """
    opts = actor_options(spec, node_id=node_id, soft=soft, name=name, spill=spill)
    return remote_stage_class().options(**opts).remote(spec, observer, restore_step)
