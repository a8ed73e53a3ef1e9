"""The scheduler's side of the hooks that ``stages`` calls (``stages/actors/hooks.py``).

``stages`` may not name the scheduler actor's methods (it sits below ``scheduler`` in the
import order), so it calls two small protocols and this module implements them on top of
the :class:`~scheduler.actor.Scheduler` actor's remote methods:

* :class:`SchedulerRegistrar` - a :class:`~stages.actors.hooks.StageRegistrar`: put it in
  ``StageSpec(registrar=...)`` and every incarnation of the stage registers with the named
  scheduler actor from its ``__init__``; a pipeline unregisters its stages when it stops
  them on purpose.
* :class:`SchedulerRestore` - a :data:`~stages.actors.hooks.StageLostHook`: give it to
  ``Pipeline(on_stage_lost=...)`` and the scheduler relaunches a lost stage from the spec it
  registered.

Both hold the actor's *name*, not its handle: they are pickled into specs (and the
scheduler's persisted registry) and must still work after the scheduler actor restarted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from stages.actors.actor import StageRegistration, StageSpec

__all__ = ["SchedulerRegistrar", "SchedulerRestore"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerRegistrar:
    """A :class:`~stages.actors.hooks.StageRegistrar` backed by the named scheduler actor.

    Attributes:
        name: the scheduler actor's name.
        namespace: its Ray namespace (``None``: the caller's own, which for a stage the
            scheduler launched is the scheduler's).
    """

    name: str
    namespace: str | None = None

    def register(self, registration: StageRegistration) -> Any:
        """Send ``registration`` to the scheduler; returns the reply's reference at once.

        Raises ``ValueError`` (from ``ray.get_actor``) when no such actor runs.
        """
        sched = ray.get_actor(self.name, namespace=self.namespace)
        return sched.register.remote(registration)

    def unregister(self, stage_id: str, *, timeout: float = 10.0) -> None:
        """Have the scheduler forget ``stage_id``; waits for its answer up to ``timeout``."""
        sched = ray.get_actor(self.name, namespace=self.namespace)
        ray.get(sched.unregister.remote(stage_id), timeout=timeout)


@dataclass(frozen=True, slots=True)
class SchedulerRestore:
    """A :data:`~stages.actors.hooks.StageLostHook` that has the scheduler actor restore a stage.

    Calls ``restore(stage_id, exclude_nodes, reason)`` on the named scheduler actor (which
    relaunches the stage from the spec it registered, on a live node not excluded) and
    returns ``handle_of(stage_id)``. If the scheduler is already restoring the stage on its
    own (its watcher saw the death first), waits until that restore finished instead of
    starting a second one. If no node outside ``exclude`` can take it (e.g. one node, and only
    the actor died), any node is allowed. The pipeline then rolls the new incarnation back to
    the committed step itself, whatever generation the scheduler restored.

    Attributes:
        name: the scheduler actor's name.
        namespace: its Ray namespace (``None``: the caller's).
        timeout: seconds to wait for each scheduler call (and for a restore in progress).
    """

    name: str
    namespace: str | None = None
    timeout: float = 120.0

    def __call__(self, spec: StageSpec, exclude: Sequence[str], step: int) -> Any:
        sched = ray.get_actor(self.name, namespace=self.namespace)
        sid = spec.stage_id
        reason = f"pipeline rollback to step {step}"
        deadline = time.monotonic() + self.timeout
        attempts = [list(exclude), []] if exclude else [[]]
        for i, excl in enumerate(attempts):
            try:
                ray.get(sched.restore.remote(sid, excl, reason), timeout=self.timeout)
                break
            except GetTimeoutError:
                raise
            except Exception as exc:  # noqa: BLE001 - the scheduler's errors cross as RayError
                if "already" in str(exc):  # its own watcher is restoring it: wait for that
                    while ray.get(sched.stage.remote(sid), timeout=self.timeout)["status"] \
                            != "running":
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                    break
                if i == len(attempts) - 1:
                    raise
                log.info("scheduler could not restore %s avoiding %s (%s); trying any node",
                         sid, excl, exc)
        return ray.get(sched.handle_of.remote(sid), timeout=self.timeout)
