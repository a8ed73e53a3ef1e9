"""The description of a stage: everything needed to (re)create it anywhere (:class:`StageSpec`).

Kept apart from the actor (``stages/actors/actor.py``) that runs it: a spec is made, checked,
pickled and stored by the driver, the scheduler and the CLI, none of which runs a stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from blockstore import BlockStore, parse_store_url

from ..checkpoint.incremental import DEFAULT_FULL_EVERY
from ..checkpoint.keygroups import DEFAULT_MAX_PARALLELISM
from ..checkpoint.observer import CheckpointFlushObserver
from .hooks import StageRegistrar
from .incarnation import open_store_for
from .resources import _default_resources, resource_amounts, resource_keywords
from .routing import KeySpec
from .stage import check_parallel

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from .stage import Stage

__all__ = ["StageSpec"]


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
        from .actor import actor_options, remote_stage_class

        opts = actor_options(self, node_id=node_id, soft=False)
        opts["lifetime"] = "detached"
        opts["namespace"] = namespace
        return remote_stage_class().options(**opts).remote(self, observer)
