"""What a user writes - a :class:`Stage` - and what a spec may ask of it.

The :class:`Stage` protocol, the checks of a ``StageSpec``'s parallel options
(:func:`check_parallel`, run when the spec is made, so a misconfiguration is an error at
build time and never a stage that fails in Ray), and :func:`ray_context`, where the calling
code runs. ``stages/actors/actor.py`` holds the spec and the actor that run a stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import ray

from ..checkpoint.keygroups import key_group_range

__all__ = ["Stage", "check_parallel", "ray_context"]


@runtime_checkable
class Stage(Protocol):
    """What a user writes: a plain, picklable class.

    ``process`` may mutate ``state`` in place (or replace parts of it) and yields the outputs
    for one record. It must be deterministic given ``(state, record)`` for exactly-once
    pipelines: replay after a failure feeds the same records to the restored state.

    A batch stage defines ``process_batch(state, batch) -> batch`` (and ``batch_format``:
    ``"numpy"``, ``"pyarrow"`` or ``"pandas"``) instead of ``process``; see
    ``stages/actors/batches.py``.

    A keyed stage (``StageSpec(key=...)``) gets, as ``state``, the dict of the record's key
    group (empty at first; ``initial_state`` is not called) and must change only the
    entries of the record's key: the dict holds other keys of the same group, and which
    keys share a group depends on ``max_parallelism``.
    """

    def initial_state(self) -> Any: ...

    def process(self, state: Any, record: Any) -> Iterable[Any]: ...


def check_parallel(spec: Any) -> None:
    """Refuse parallel options a stage could never run with (``ValueError``, or
    ``KeyGroupError`` for a parallelism outside ``1..max_parallelism``)."""
    p = spec.parallelism
    if type(p) is not int or p < 1:
        raise ValueError(f"stage {spec.stage_id!r}: parallelism must be an int >= 1, got {p!r}")
    if spec.key is not None:
        if not (isinstance(spec.key, str) or callable(spec.key)):
            raise ValueError(f"stage {spec.stage_id!r}: key must be a record field's name or "
                             f"a function of the record, got {spec.key!r}")
        key_group_range(0, p, spec.max_parallelism)  # parallelism <= max_parallelism
        if spec.async_checkpoints:
            raise ValueError(f"stage {spec.stage_id!r}: a keyed stage checkpoints its key "
                             "groups synchronously (async_checkpoints=False)")
        if spec.codec != "pickle":
            raise ValueError(f"stage {spec.stage_id!r}: a keyed stage's key groups are "
                             f"pickled (codec='pickle'), got codec={spec.codec!r}")
    if spec.index is not None and not (type(spec.index) is int and 0 <= spec.index < p):
        raise ValueError(f"stage {spec.stage_id!r}: instance index {spec.index!r} is outside "
                         f"0..{p - 1}")


def ray_context() -> tuple[str | None, Any]:
    """(node id, own actor handle) when running inside a Ray actor, else (None, None)."""
    if not ray.is_initialized():
        return None, None
    ctx = ray.get_runtime_context()
    try:
        node_id = ctx.get_node_id()
    except Exception:  # noqa: BLE001 - outside a worker there is no node
        node_id = None
    try:
        handle = ctx.current_actor
    except Exception:  # noqa: BLE001 - not inside an actor (plain use, tests)
        handle = None
    return node_id, handle
