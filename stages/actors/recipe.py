"""The relaunch recipe of a ``@checkpointed`` actor: how a manager re-creates it elsewhere.

A pipeline stage is relaunched from its :class:`~stages.actors.actor.StageSpec`. A decorated actor
has no spec - the user created it with ``Cls.options(...).remote(*args)`` - so every
incarnation that registers (``registrar=``) builds an :class:`ActorRecipe` in its
``__init__`` and sends it as the registration's ``spec``. Both satisfy
:class:`~stages.actors.hooks.Relaunchable`, so the scheduler places and launches either through
its one placement path, and the new incarnation restores through the one mechanism every
stateful actor shares (:class:`~stages.actors.incarnation.Incarnation`: lease by force, epoch
bump, newest generation that verifies).

What the recipe holds, and where each part comes from (read inside the actor, so it is what
Ray actually created, not what a caller meant to pass):

* ``constructor`` - the decorated class and the constructor's arguments as ``__init__``
  received them, pickled together by Ray's cloudpickle (by value when the class is not
  importable by name, as Ray did to create the actor) *inside the actor*, and unpickled
  only when a relaunch needs them. So a registration never fails to reach the scheduler
  because the scheduler's process cannot import what the class uses: only that relaunch
  fails, with the import error (``RestoreError``, in the decision log). Arguments that do
  not pickle make the incarnation register without a recipe (logged): it is then never
  re-created, as before.
* ``resources`` - what the actor holds (``get_assigned_resources()``), read back into
  stage resource options by :func:`stages.actors.actor.resources_held`: the scheduler's placement
  and preemption-by-resources see the same amounts as for a stage.
* ``name``/``namespace`` - the actor's; the new incarnation keeps the name (the old one is
  dead), so ``ray.get_actor(name)`` returns it.
* ``max_concurrency`` - the running actor's (threaded actors stay threaded);
  ``concurrency_groups`` - the control group plus the decorator's ``concurrency_groups=``
  (Ray does not tell an actor its own groups, so the user's are declared to the decorator).
* ``max_restarts`` - Ray's record of the actor, filled in by the scheduler when it
  registers the incarnation (an actor cannot read it); ``None`` until then.

No key, in any form, goes into a recipe: the recipe is persisted in the scheduler's
registry, in the store, where anyone who can read the store could take a MAC key from it
and forge checkpoints. The constructor is pickled by :class:`_KeylessPickler`, which writes
every :class:`~stages.actors.config.CheckpointedConfig` it meets (the decorated class
carries one, and by value when the class is defined in a script) with ``mac_key=None``; a
relaunched incarnation resolves its key where it uses it, from its environment
(``$BLOCKPOINT_CHECKPOINT_KEY_FILE``, ``blockstore/keys.py``: a key file on every node). A class importable by name is pickled by reference and decorated again,
``mac_key=`` included, where it is imported.

What a relaunched incarnation does *not* keep: it is **detached** (owned by no driver and
not by the scheduler actor, whose own restart would otherwise kill it; end it with
``ray.kill`` or the scheduler's ``unregister(kill=True)``), its ``runtime_env`` is the
scheduler job's (the original's is not carried, on purpose: the recipe is persisted in the
scheduler's registry, in the store, and a runtime env carries ``env_vars`` - the checkpoint
key among them (``docs/OPERATIONS.md``) - which must never be written there; put what the
class needs in the cluster's or the scheduler job's environment), and ``max_task_retries`` is Ray's default (retries matter only for an actor
Ray restarts, which the scheduler does not re-create).
Callers holding the old handle get ``RayActorError`` for good; they look the actor up
again (by name) or ask the scheduler (``handle_of``).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
import ray.cloudpickle as cloudpickle

from .actor import CONTROL_CONCURRENCY, CONTROL_GROUP, resource_amounts, resource_keywords
from .actor import resources_held
from .config import CheckpointedConfig

if TYPE_CHECKING:
    from ..checkpoint.observer import CheckpointFlushObserver

__all__ = ["ActorRecipe", "recipe_for"]

log = logging.getLogger(__name__)

#: Seconds a relaunch waits for the dead incarnation's name to be released by the GCS.
_NAME_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class ActorRecipe:
    """Everything needed to re-create a ``@checkpointed`` actor anywhere; picklable.

    Attributes:
        stage_id: the actor's lease key (its id in the scheduler).
        actor_class: the class's qualified name (for messages; the class is in
            ``constructor``).
        constructor: cloudpickle of ``(decorated class, args, kwargs)``; see
            :meth:`build`.
        store_url: the store its checkpoints live in.
        priority: as registered with the scheduler.
        resources: stage resource options (``num_cpus``, ``num_gpus``, ``memory``,
            ``resources``) - what the actor held.
        name, namespace: the actor's name and namespace (``None``: anonymous).
        max_concurrency: the actor's (``None``: Ray's default).
        concurrency_groups: declared again at a relaunch.
        max_restarts: Ray's ``max_restarts`` of the actor, once the scheduler read it.
    """

    stage_id: str
    actor_class: str
    constructor: bytes
    store_url: str
    priority: int = 0
    resources: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    namespace: str | None = None
    max_concurrency: int | None = None
    concurrency_groups: Mapping[str, int] = field(
        default_factory=lambda: {CONTROL_GROUP: CONTROL_CONCURRENCY})
    max_restarts: int | None = None

    @classmethod
    def build(cls, stage_id: str, actor_cls: type, args: tuple[Any, ...],
              kwargs: Mapping[str, Any], **fields: Any) -> ActorRecipe:
        """A recipe for ``actor_cls(*args, **kwargs)``; pickling errors propagate. No MAC
        key is pickled (:class:`_KeylessPickler`)."""
        out = io.BytesIO()
        _KeylessPickler(out).dump((actor_cls, tuple(args), dict(kwargs)))
        blob = out.getvalue()
        return cls(stage_id=stage_id, actor_class=actor_cls.__qualname__, constructor=blob,
                   **fields)

    def unpack(self) -> tuple[type, tuple[Any, ...], dict[str, Any]]:
        """``(decorated class, args, kwargs)``; raises what unpickling raises (an import
        missing in this process)."""
        actor_cls, args, kwargs = cloudpickle.loads(self.constructor)
        return actor_cls, args, kwargs

    def ray_resources(self) -> dict[str, float]:
        """The amounts placing it needs, keyed as a node's view (as for a stage)."""
        return resource_amounts(self.resources, scheduling=True)

    def ray_options(self, node_id: str | None, *, namespace: str | None) -> dict[str, Any]:
        """The ``.options(...)`` of a relaunch: resources, name, restarts, detached, and a
        hard affinity to ``node_id``; ``namespace`` is used for an anonymous actor."""
        opts: dict[str, Any] = {**resource_keywords(self.resources), "lifetime": "detached",
                                "max_restarts": int(self.max_restarts or 0),
                                "namespace": self.namespace if self.name else namespace}
        if self.name:
            opts["name"] = self.name
        if node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return opts

    def launch(self, node_id: str, *, namespace: str | None,
               observer: CheckpointFlushObserver | None = None) -> Any:
        """Start a new incarnation on ``node_id``; returns its handle at once.

        It reports flushes to the observer it was decorated with (``observer`` is not
        used: the class carries its own, see :func:`~stages.actors.checkpointed.checkpointed`).
        A named actor waits up to ~10 s for the GCS to release the dead incarnation's name.
        """
        user_cls, args, kwargs = self.unpack()
        remote_opts: dict[str, Any] = {"concurrency_groups": dict(self.concurrency_groups)}
        if self.max_concurrency is not None:
            remote_opts["max_concurrency"] = int(self.max_concurrency)
        actor_cls = ray.remote(**remote_opts)(user_cls)
        opts = self.ray_options(node_id, namespace=namespace)
        give_up = time.monotonic() + _NAME_WAIT_S
        while True:
            try:
                return actor_cls.options(**opts).remote(*args, **kwargs)
            except ValueError as exc:  # "The name ... is already taken": not released yet
                if "already taken" not in str(exc) or time.monotonic() > give_up:
                    raise
                time.sleep(0.2)


class _KeylessPickler(cloudpickle.Pickler):
    """Ray's cloudpickle, writing every ``CheckpointedConfig`` without its ``mac_key``."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, CheckpointedConfig) and obj.mac_key is not None:
            return _as_is, (obj.without_key(),)
        return super().reducer_override(obj)


def _as_is(obj: Any) -> Any:
    """The reconstructor of a keyless config (it is its own value)."""
    return obj


def decorated_class(obj: Any) -> type:
    """The ``@checkpointed`` class of ``obj`` (Ray runs a subclass of it)."""
    for klass in type(obj).__mro__:
        if "__bp_config__" in klass.__dict__:
            return klass
    raise TypeError(f"{type(obj).__name__} is not a @checkpointed class")


def recipe_for(obj: Any, config: CheckpointedConfig, key: str, args: tuple[Any, ...],
               kwargs: Mapping[str, Any]) -> ActorRecipe | None:
    """The recipe of the running incarnation ``obj`` (read inside the actor); ``None``, and
    a warning, if its constructor's arguments do not pickle."""
    ctx = ray.get_runtime_context()
    name = ctx.get_actor_name() or None
    try:
        held = dict(ctx.get_assigned_resources())
    except Exception:  # noqa: BLE001 - outside a worker nothing is held
        held = {}
    try:
        return ActorRecipe.build(
            key, decorated_class(obj), args, kwargs, store_url=config.store,
            priority=config.priority, resources=resources_held(held), name=name,
            namespace=ctx.namespace if name else None, max_concurrency=_max_concurrency(),
            concurrency_groups={**config.concurrency_groups,
                                CONTROL_GROUP: CONTROL_CONCURRENCY})
    except Exception as exc:  # noqa: BLE001 - unpicklable arguments: no recipe, still served
        log.warning("%s %r registers without a relaunch recipe (the scheduler will not "
                    "re-create it): its constructor arguments do not pickle: %s: %s",
                    config.actor, key, type(exc).__name__, exc)
        return None


def _max_concurrency() -> int | None:
    """The running actor's ``max_concurrency``; ``None`` when Ray does not say."""
    try:
        worker = ray._private.worker.global_worker  # no public API reads it
        return int(worker.core_worker.current_actor_max_concurrency())
    except Exception:  # noqa: BLE001 - an internal that moved: fall back to Ray's default
        return None
