"""The hooks through which stages reach whatever manages them (a scheduler, or nothing).

``stages`` sits below ``scheduler`` in the import order (``tests/test_public_api.py``
checks it), yet a stage must tell a scheduler that it started and a pipeline must have a
lost stage restored. So ``stages`` defines what it calls, here, and the layer above
implements it (``scheduler/hooks.py``: ``SchedulerRegistrar``, ``SchedulerRestore``). No
module of ``stages`` names a method of the scheduler actor; swapping the scheduler for
another manager means writing these two small objects, nothing in ``stages`` changes.

Both hooks cross process boundaries: a registrar travels inside a pickled
:class:`~stages.actor.StageSpec` to every incarnation of the stage (and into the scheduler's
persisted registry), so it must be picklable and small - a name to look an actor up by, not
an actor handle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .actor import StageRegistration, StageSpec

__all__ = ["StageLostHook", "StageRegistrar"]


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
StageLostHook = Callable[["StageSpec", Sequence[str], int], Any]
