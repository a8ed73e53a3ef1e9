"""The ``@checkpointed`` counter the actor tests decorate: a dict state, one mutating
method, readonly inspection; :func:`counter` decorates it (a Ray actor class with
``ray_opts``). Shipped to Ray workers by value (they cannot import tests/)."""

from __future__ import annotations

import os
import sys
from typing import Any

import ray
import ray.cloudpickle

from stages import (
    checkpointed,
)

__all__ = ["RESTART", "CounterBase", "counter"]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CounterBase:
    """The user's class: a dict state, one mutating method, readonly inspection."""

    def __init__(self, start: int = 0) -> None:
        self.state = {"n": start}
        self.restores: list[int] = []

    def add(self, k: int = 1) -> int:
        self.state["n"] += k
        return self.state["n"]

    def add_twice(self, k: int) -> int:
        self.add(k)  # a nested call: counted (and deduplicated) once, as the outer call
        return self.add(k)

    @checkpointed.readonly
    def get(self) -> int:
        return self.state["n"]

    @checkpointed.readonly
    def where(self) -> tuple[str, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid()

    @checkpointed.readonly
    @ray.method(max_task_retries=0)
    def crash(self) -> None:
        os._exit(1)

    def on_restore(self, report: Any) -> None:
        self.restores.append(report.generation)

    @checkpointed.readonly
    def restore_calls(self) -> list[int]:
        return list(self.restores)


def counter(store: str, *, ray_opts: dict[str, Any] | None = None, **kw: Any) -> Any:
    """A decorated counter class; a Ray actor class if ``ray_opts`` is given."""
    cls = checkpointed(store=store, **kw)(CounterBase)
    if ray_opts is None:
        return cls
    return ray.remote(concurrency_groups=checkpointed.GROUPS, **ray_opts)(cls)


RESTART = {"max_restarts": -1, "max_task_retries": -1}
