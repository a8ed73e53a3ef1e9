"""The hooks through which stages reach whatever manages them (a scheduler, or nothing).

``stages`` sits below ``scheduler`` in the import order (``tests/test_public_api.py``
checks it), yet a stage must tell a scheduler that it started and a pipeline must have a
lost stage restored. So ``stages`` defines what it calls, here, and the layer above
implements it (``scheduler/hooks.py``: ``SchedulerRegistrar``, ``SchedulerRestore``).
The other way round, :class:`Relaunchable` is what the manager calls: the recipe a
registration carries (a pipeline stage's ``StageSpec``, a ``@checkpointed`` actor's
``ActorRecipe``), so one placement path relaunches both kinds of actor. No
module of ``stages`` names a method of the scheduler actor; swapping the scheduler for
another manager means writing these two small objects, nothing in ``stages`` changes.

Both hooks cross process boundaries: a registrar travels inside a pickled
:class:`~stages.actors.actor.StageSpec` to every incarnation of the stage (and into the scheduler's
persisted registry), so it must be picklable and small - a name to look an actor up by, not
an actor handle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..checkpoint.observer import CheckpointFlushObserver

__all__ = ["Relaunchable", "StageLostHook", "StageRegistrar", "StageRegistration"]


@runtime_checkable
class Relaunchable(Protocol):
    """What a registration's ``spec`` is: everything a manager needs to start a new
    incarnation of a lost or preempted actor anywhere (picklable, persisted with the
    manager's registry).

    Guarantees asked of an implementation: :meth:`launch` returns at once (construction
    errors surface on the first call to the handle); the incarnation it starts takes the
    lease named ``stage_id`` by force (fencing every earlier one), restores its newest
    generation that verifies, registers itself, and answers ``info()`` in a control
    concurrency group.
    """

    @property
    def stage_id(self) -> str: ...

    @property
    def store_url(self) -> str: ...

    @property
    def priority(self) -> int: ...

    @property
    def resources(self) -> Mapping[str, Any]: ...

    def ray_resources(self) -> dict[str, float]:
        """The amounts placing it needs, keyed as a node's resource view."""
        ...

    def launch(self, node_id: str, *, namespace: str | None,
               observer: CheckpointFlushObserver | None) -> Any:
        """Start an incarnation pinned to ``node_id``; return its handle at once."""
        ...


@dataclass(frozen=True, slots=True)
class StageRegistration:
    """What a stage tells the scheduler when an incarnation starts.

    Handed to ``spec.registrar.register(registration)``; ``spec`` lets the scheduler
    recreate the stage elsewhere.
    """

    stage_id: str
    actor: Any  # ActorHandle of this incarnation
    node_id: str | None
    priority: int
    lease_id: str
    epoch: int
    resources: Mapping[str, float]
    generation: int | None
    step: int | None
    pid: int
    spec: Relaunchable | None = None


@runtime_checkable
class StageRegistrar(Protocol):
    """Where a stage incarnation announces itself; carried by ``StageSpec.registrar``.

    Call order: :meth:`register` from the incarnation's ``__init__`` (every incarnation, so
    a newer epoch replaces an older one); :meth:`unregister` from the pipeline when it stops
    its stages on purpose (so that their end does not look like a loss to be restored).

    Guarantees asked of an implementation: ``register`` does not wait for the other side
    (the manager may call back into the stage, which cannot answer before ``__init__``
    returns) and ``unregister`` waits at most ``timeout`` seconds. Either may raise when the
    other side is unreachable; callers log that and go on - a missing manager never stops a
    stage or a pipeline.
    """

    def register(self, registration: StageRegistration) -> Any:
        """Announce an incarnation, fire-and-forget; may return a reference to the reply."""
        ...

    def unregister(self, stage_id: str, *, timeout: float = 10.0) -> None:
        """Forget ``stage_id`` (stopped on purpose, not lost)."""
        ...


#: ``(spec, exclude_node_ids, restore_step) -> ActorHandle``: bring up a new incarnation of a
#: lost stage, preferably on a node not in ``exclude_node_ids``. The pipeline rolls the
#: returned incarnation back to the committed step itself, whichever generation it restored.
StageLostHook = Callable[[Relaunchable, Sequence[str], int], Any]
