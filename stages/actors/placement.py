"""Choosing a node for a stage: one pure function, used by every placer.

The pipeline (relaunching a lost stage itself, ``stages/pipeline/pipeline.py``) and the scheduler
(launch, restore, drains) both have to answer "which node takes this stage now?". They
answer it with :func:`pick_node`, so the rule is written once and tested without Ray:

1. a node qualifies if it is alive, not draining, not in ``exclude``, and its free
   resources minus what is ``reserved`` on it (launches still in flight, which Ray's
   free-resource view does not show yet) cover every amount of the stage's need
   (:meth:`stages.actors.actor.StageSpec.ray_resources`), within a rounding tolerance;
2. among those, a node not in ``avoid`` wins over one in it (``avoid`` is softer than
   ``exclude``: the node an actor just died on may be dying too, but it is better than
   nothing);
3. then the most free CPU (after reservations), then the greater node id, so that the same
   inputs always give the same node.

The caller supplies the node views (any object with ``node_id``, ``alive``, ``draining`` and
``free``, e.g. ``scheduler.NodeView``, or :class:`NodeCapacity`), so the function holds no
Ray call and no clock; "no node" is ``None``, the caller decides whether to wait or fail.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["NodeCapacity", "NodeLike", "pick_node"]

#: Slack when comparing a free amount with a need (resource amounts are floats).
_TOLERANCE = 1e-9


class NodeLike(Protocol):
    """What :func:`pick_node` reads of a node."""

    @property
    def node_id(self) -> str: ...

    @property
    def alive(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    @property
    def free(self) -> Mapping[str, float]: ...


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """A node as a placer sees it.

    Attributes:
        node_id: Ray's hex node id.
        free: resources not in use, keyed as Ray's node resource view (``CPU``, ...).
        alive: the node is up.
        draining: a drain of the node is in progress (nothing new goes there).
    """

    node_id: str
    free: Mapping[str, float] = field(default_factory=dict)
    alive: bool = True
    draining: bool = False


def pick_node(nodes: Iterable[NodeLike], need: Mapping[str, float], *,
              exclude: Collection[str] = (), avoid: Collection[str] = (),
              reserved: Mapping[str, Mapping[str, float]] | None = None) -> str | None:
    """The node id that should take a stage needing ``need``, or ``None`` if none can.

    Args:
        nodes: the candidate nodes.
        need: resource amounts keyed as the nodes' ``free`` (``StageSpec.ray_resources()``).
        exclude: node ids never chosen.
        avoid: node ids chosen only when no other node qualifies.
        reserved: per node id, amounts already promised to launches in flight; subtracted
            from that node's ``free`` before anything is compared.

    Returns:
        The qualifying node that is not avoided, has the most free CPU after reservations,
        and the greatest node id among equals (the order of the module docstring).
    """
    best: tuple[bool, float, str] | None = None
    for node in nodes:
        if not node.alive or node.draining or node.node_id in exclude:
            continue
        free = dict(node.free)
        for name, amount in (reserved or {}).get(node.node_id, {}).items():
            free[name] = free.get(name, 0.0) - amount
        if any(free.get(name, 0.0) + _TOLERANCE < amount for name, amount in need.items()):
            continue
        key = (node.node_id not in avoid, free.get("CPU", 0.0), node.node_id)
        if best is None or key > best:
            best = key
    return None if best is None else best[2]
