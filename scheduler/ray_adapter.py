"""The one place that touches Ray internals: drains, draining nodes, node and actor liveness.

The scheduler needs a few things Ray has no public, stable API for: asking the GCS to drain
a node (``GcsClient.drain_node``), reading which nodes are draining and until when
(``ray._private.state.state.get_draining_nodes``), per-node free resources, and an actor's
state (alive, restarting, dead) and node without the dashboard (``ray.util.state`` needs
the dashboard's API server, which small test clusters and many deployments run without).
These are internal, so they are wrapped here, once, behind plain functions returning frozen
values, with a version check:

* Ray 2.60 is the known-good version (every function here is exercised against it by
  ``tests/test_scheduler_cluster.py``).
* On another version, :func:`check_ray_version` verifies that every internal used here still
  exists and raises :class:`~scheduler.errors.RayUnsupportedError` naming the missing one
  if not; if they all exist it logs one warning and proceeds. ``strict=True`` refuses any
  version not known to be good.

What Ray 2.60 does with a drain (seen on this machine, and why the scheduler moves stages
itself): a ``PREEMPTION`` drain with a deadline is accepted; the node stays up and its
actors keep running past the deadline (Ray kills nothing); no new actor is placed on it.
An ``IDLE_TERMINATION`` drain of a busy node is rejected.

All functions must be called from a process connected to Ray (a driver after ``ray.init``,
or inside an actor/task).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import ray

from scheduler.errors import DrainRejectedError, RayUnsupportedError

__all__ = [
    "KNOWN_GOOD_RAY",
    "ActorView",
    "DrainReason",
    "NodeView",
    "actor_id_of",
    "actor_view",
    "check_ray_version",
    "current_node_id",
    "drain_node",
    "draining_nodes",
    "head_node_id",
    "list_nodes",
    "node_affinity",
    "ray_version",
]

log = logging.getLogger(__name__)

#: (major, minor) Ray versions every function here was tested against.
KNOWN_GOOD_RAY: frozenset[tuple[int, int]] = frozenset({(2, 60)})

#: ``"preemption"`` (spot notice, maintenance: accepted even for busy nodes) or
#: ``"idle_termination"`` (autoscaler scale-down: rejected for a busy node).
DrainReason = Literal["preemption", "idle_termination"]

_DRAIN_REASONS = {
    "preemption": "DRAIN_NODE_REASON_PREEMPTION",
    "idle_termination": "DRAIN_NODE_REASON_IDLE_TERMINATION",
}
_HEAD_RESOURCE = "node:__internal_head__"

_checked: str | None = None
_check_lock = threading.Lock()
_gcs_clients: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class NodeView:
    """One Ray node as the scheduler sees it.

    Attributes:
        node_id: Hex node id.
        alive: Whether the GCS considers the node alive.
        address: The node manager's IP address.
        is_head: Whether this is the head node.
        total: Total resources (name -> amount), without Ray's per-node marker resources.
        free: Currently unreserved resources (empty for a dead node).
        draining_deadline: Wall-clock deadline (seconds) of a drain in progress; ``0.0``
            for a drain without a deadline; ``None`` when the node is not draining.
    """

    node_id: str
    alive: bool
    address: str
    is_head: bool
    total: Mapping[str, float] = field(default_factory=dict)
    free: Mapping[str, float] = field(default_factory=dict)
    draining_deadline: float | None = None

    @property
    def draining(self) -> bool:
        """``True`` while a drain of this node is in progress."""
        return self.draining_deadline is not None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "node_id": self.node_id,
            "alive": self.alive,
            "address": self.address,
            "is_head": self.is_head,
            "total": dict(self.total),
            "free": dict(self.free),
            "draining_deadline": self.draining_deadline,
        }


@dataclass(frozen=True, slots=True)
class ActorView:
    """The GCS's record of one actor.

    Attributes:
        actor_id: Hex actor id.
        state: ``"DEPENDENCIES_UNREADY"``, ``"PENDING_CREATION"``, ``"ALIVE"``,
            ``"RESTARTING"`` or ``"DEAD"``.
        node_id: Hex id of the node it runs (or last ran) on; empty if never placed.
        pid: Its worker process id (0 if none).
        num_restarts: How many times Ray restarted it.
        max_restarts: Its ``max_restarts`` (-1: unlimited).
        death_reason: Why a dead actor died: ``"NODE_DIED"``, ``"WORKER_DIED"``,
            ``"OUT_OF_MEMORY"`` (failures), ``"RAY_KILL"``, ``"OWNER_DIED"``,
            ``"OUT_OF_SCOPE"``, ``"REF_DELETED"``, ``"CREATION_FAILED"``,
            ``"UNSCHEDULABLE"``, ``"RUNTIME_ENV_FAILED"`` or ``"UNSPECIFIED"``; ``""`` while
            it is not dead.
    """

    actor_id: str
    state: str
    node_id: str
    pid: int
    num_restarts: int
    max_restarts: int = 0
    death_reason: str = ""

    @property
    def dead(self) -> bool:
        """``True`` once the actor is permanently dead."""
        return self.state == "DEAD"

    @property
    def failed(self) -> bool:
        """Dead from a failure (its node, worker process or memory), not on purpose."""
        return self.dead and self.death_reason in _FAILURE_REASONS


#: Death reasons that are failures (a lost node, a crashed or OOM-killed worker).
_FAILURE_REASONS = frozenset({"NODE_DIED", "WORKER_DIED", "OUT_OF_MEMORY"})


# --------------------------------------------------------------------------- version


def ray_version() -> tuple[int, int, int]:
    """The running Ray's version as ``(major, minor, patch)`` (non-numeric parts as 0)."""
    parts = (ray.__version__.split(".") + ["0", "0", "0"])[:3]
    out = []
    for p in parts:
        digits = "".join(ch for ch in p if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return out[0], out[1], out[2]


def _missing_apis() -> list[str]:
    missing = []
    try:
        import ray._private.state as state_mod
        st = state_mod.state
        for name in ("get_draining_nodes", "available_resources_per_node", "actor_table",
                     "_connect_and_get_accessor"):
            if not callable(getattr(st, name, None)):
                missing.append(f"ray._private.state.state.{name}")
    except ImportError:
        missing.append("ray._private.state")
    try:
        import ray._raylet as raylet
        if not hasattr(raylet, "GcsClient"):
            missing.append("ray._raylet.GcsClient")
    except ImportError:
        missing.append("ray._raylet")
    try:
        from ray.core.generated import autoscaler_pb2
        for value in _DRAIN_REASONS.values():
            try:
                autoscaler_pb2.DrainNodeReason.Value(value)
            except ValueError:
                missing.append(f"autoscaler_pb2.DrainNodeReason.{value}")
    except ImportError:
        missing.append("ray.core.generated.autoscaler_pb2")
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: F401
    except ImportError:
        missing.append("ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy")
    return missing


def check_ray_version(*, strict: bool = False) -> str:
    """Check that the running Ray has every internal API this module uses.

    Args:
        strict: Refuse any version other than :data:`KNOWN_GOOD_RAY`, even if the APIs
            seem present.

    Returns:
        The Ray version string.

    Raises:
        RayUnsupportedError: an API is missing (named in the error), or ``strict`` and the
            version is not known to be good.
    """
    global _checked
    version = ray.__version__
    if _checked == version and not strict:
        return version
    major, minor, _ = ray_version()
    known = (major, minor) in KNOWN_GOOD_RAY
    if strict and not known:
        raise RayUnsupportedError(version, "version check",
                                  f"strict mode accepts only {sorted(KNOWN_GOOD_RAY)}")
    missing = _missing_apis()
    if missing:
        raise RayUnsupportedError(version, missing[0],
                                  f"{len(missing)} internal API(s) missing: {', '.join(missing)}")
    with _check_lock:
        if _checked != version:
            if not known:
                log.warning("Ray %s is not a known-good version for blockpoint's scheduler "
                            "(tested: %s); the internal APIs it uses are present, proceeding",
                            version, sorted(KNOWN_GOOD_RAY))
            _checked = version
    return version


# --------------------------------------------------------------------------- nodes


def _state() -> Any:
    check_ray_version()
    import ray._private.state as state_mod
    return state_mod.state


def draining_nodes() -> dict[str, float]:
    """Nodes being drained: hex node id -> wall-clock deadline in seconds (0.0: none).

    Reads the GCS's drain table (``get_draining_nodes``, whose values are milliseconds).
    """
    raw = _state().get_draining_nodes()
    return {str(node): float(ms) / 1000.0 for node, ms in dict(raw).items()}


def list_nodes(*, include_dead: bool = False) -> list[NodeView]:
    """Every node known to the GCS (alive ones only unless ``include_dead``), by node id.

    Free resources and drain deadlines are read in the same call, so a caller placing a
    stage can skip draining nodes and pick the one with the most free CPU.
    """
    st = _state()
    draining = draining_nodes()
    try:
        free_all = st.available_resources_per_node()
    except Exception:  # a node dying between the two GCS reads; free is then unknown
        free_all = {}
    out = []
    for raw in ray.nodes():
        node_id = str(raw.get("NodeID", ""))
        alive = bool(raw.get("Alive", False))
        if not alive and not include_dead:
            continue
        resources = dict(raw.get("Resources") or {})
        is_head = _HEAD_RESOURCE in resources
        total = {k: float(v) for k, v in resources.items() if not k.startswith("node:")}
        free = {k: float(v) for k, v in dict(free_all.get(node_id) or {}).items()
                if not k.startswith("node:")} if alive else {}
        out.append(NodeView(
            node_id=node_id,
            alive=alive,
            address=str(raw.get("NodeManagerAddress", "")),
            is_head=is_head,
            total=total,
            free=free,
            draining_deadline=draining.get(node_id),
        ))
    out.sort(key=lambda n: n.node_id)
    return out


def current_node_id() -> str:
    """Hex id of the node this process runs on."""
    return ray.get_runtime_context().get_node_id()


def head_node_id() -> str | None:
    """Hex id of the live head node, or ``None`` if it is not alive."""
    for node in list_nodes():
        if node.is_head:
            return node.node_id
    return None


def node_affinity(node_id: str, *, soft: bool = False) -> Any:
    """A Ray scheduling strategy placing a task/actor on ``node_id``.

    With ``soft=False`` the actor stays pending if the node cannot take it (and fails if
    the node dies), never lands elsewhere; the scheduler always asks for a node it has
    checked has room.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft)


# --------------------------------------------------------------------------- drains


def _gcs_client() -> Any:
    check_ray_version()
    import ray._raylet as raylet

    address = ray.get_runtime_context().gcs_address
    with _check_lock:
        client = _gcs_clients.get(address)
        if client is None:
            client = raylet.GcsClient(address=address)
            _gcs_clients[address] = client
        return client


def drain_node(node_id: str, *, deadline: float | None, reason: DrainReason = "preemption",
               message: str = "") -> None:
    """Ask Ray's GCS to drain ``node_id`` (``GcsClient.drain_node``).

    Ray then places nothing new on the node; it does **not** stop what runs there, even at
    the deadline (Ray 2.60) - the scheduler moves the stages itself.

    Args:
        node_id: Hex node id.
        deadline: Wall-clock time (seconds) when the node is expected to go away; ``None``
            for no deadline.
        reason: ``"preemption"`` (accepted for busy nodes) or ``"idle_termination"``
            (rejected if the node runs anything).
        message: Free text recorded by Ray.

    Raises:
        DrainRejectedError: the GCS refused (Ray's message in ``.reason``).
        ValueError: unknown ``reason`` or a bad node id.
    """
    if reason not in _DRAIN_REASONS:
        raise ValueError(f"drain reason must be one of {sorted(_DRAIN_REASONS)}, got {reason!r}")
    try:
        if ray.NodeID.from_hex(node_id) == ray.NodeID.nil():
            raise ValueError(f"nil node id {node_id!r}")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad node id {node_id!r}: {exc}") from exc
    from ray.core.generated import autoscaler_pb2

    deadline_ms = 0 if deadline is None else max(int(deadline * 1000), 1)
    accepted, rejection = _gcs_client().drain_node(
        node_id,
        autoscaler_pb2.DrainNodeReason.Value(_DRAIN_REASONS[reason]),
        message,
        deadline_ms,
    )
    if not accepted:
        raise DrainRejectedError(node_id, str(rejection))


# --------------------------------------------------------------------------- actors


def actor_id_of(handle: Any) -> str:
    """Hex id of the actor behind ``handle``."""
    return handle._actor_id.hex()


def actor_view(actor_id: str) -> ActorView | None:
    """The GCS's record of an actor, or ``None`` if the GCS does not know it.

    Works without the dashboard (reads the GCS actor table directly: the record itself,
    since the parsed form Ray offers leaves out ``max_restarts``).
    """
    from ray.core.generated import gcs_pb2

    st = _state()
    raw = st._connect_and_get_accessor().get_actor_info(ray.ActorID(bytes.fromhex(actor_id)))
    if raw is None:
        return None
    rec = gcs_pb2.ActorTableData.FromString(raw)
    state = gcs_pb2.ActorTableData.ActorState.Name(rec.state)
    return ActorView(
        actor_id=rec.actor_id.hex() or actor_id,
        state=state,
        node_id=rec.address.node_id.hex(),
        pid=int(rec.pid or 0),
        num_restarts=int(rec.num_restarts or 0),
        max_restarts=int(rec.max_restarts),
        death_reason=_death_reason(rec.death_cause) if state == "DEAD" else "",
    )


def _death_reason(cause: Any) -> str:
    """The reason name of an ``ActorDeathCause`` (see :class:`ActorView`)."""
    which = cause.WhichOneof("context")
    if which == "actor_died_error_context":
        from ray.core.generated import common_pb2
        return common_pb2.ActorDiedErrorContext.Reason.Name(
            cause.actor_died_error_context.reason)
    return {"creation_task_failure_context": "CREATION_FAILED",
            "runtime_env_failed_context": "RUNTIME_ENV_FAILED",
            "actor_unschedulable_context": "UNSCHEDULABLE",
            "oom_context": "OUT_OF_MEMORY"}.get(str(which), "UNSPECIFIED")



def kill_actor(handle: Any) -> None:
    """Kill the actor behind ``handle`` for good (no Ray restart); already dead is fine."""
    try:
        ray.kill(handle, no_restart=True)
    except Exception as exc:  # noqa: BLE001 - already dead
        log.debug("kill: %s", exc)
