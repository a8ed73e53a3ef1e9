"""One reading of a stage's or actor's Ray resources (``docs/ARCHITECTURE.md``).

A stage's resources are given as Ray's ``.options`` keywords (``num_cpus``, ``num_gpus``,
``memory``; any other key is a custom resource). Three views of them are needed - the
keywords Ray's ``.options`` takes, the amounts keyed like a node's resource view (what a
placer compares with free resources, what a preemption frees), and the way back from what a
running actor holds to keywords (a relaunch) - and all three come from the one parse here,
so the actor Ray starts and the node a placer chose for it can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["resource_amounts", "resource_keywords", "resources_held"]

#: Resource keywords of Ray's ``.options`` -> the name of the resource in a node's view.
_RESOURCE_OPTIONS = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
#: CPUs Ray reserves to schedule an actor that does not say (``num_cpus`` absent).
_DEFAULT_ACTOR_CPU = 1.0


def _default_resources() -> dict[str, float]:
    return {"num_cpus": 1}


def _resource_items(resources: Mapping[str, Any]) -> Iterator[tuple[str | None, str, Any]]:
    """Each resource of a spec as ``(option keyword or None if custom, node-view name, value)``.

    ``num_cpus``/``num_gpus``/``memory`` are Ray's own keywords; a nested ``resources``
    mapping and any other key are custom resources.
    """
    for key, value in resources.items():
        if key in _RESOURCE_OPTIONS:
            yield key, _RESOURCE_OPTIONS[key], value
        elif key == "resources" and isinstance(value, Mapping):
            for name, amount in value.items():
                yield None, str(name), amount
        else:
            yield None, str(key), value


def resource_keywords(resources: Mapping[str, Any]) -> dict[str, Any]:
    """Stage resource options as Ray's ``.options`` keywords: ``num_cpus``, ``num_gpus``,
    ``memory`` as given, and ``resources`` (every custom resource, as floats)."""
    opts: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for option, name, value in _resource_items(resources):
        if option is not None:
            opts[option] = value
        else:
            custom[name] = float(value)
    if custom:
        opts["resources"] = custom
    return opts


def resources_held(amounts: Mapping[str, float]) -> dict[str, Any]:
    """What a running actor holds (Ray's ``get_assigned_resources()``, keyed as a node's
    view) as stage resource options (``num_cpus``...; custom names under ``resources``):
    the inverse of :func:`resource_amounts`, so that both readings agree.

    An actor that holds no CPU gets no ``num_cpus`` (Ray's default for actors: 1 CPU to
    schedule, none held), so a relaunch from these options asks Ray for the same thing.
    """
    names = {v: k for k, v in _RESOURCE_OPTIONS.items()}
    opts: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for name, amount in amounts.items():
        if not amount or amount <= 0:
            continue
        if name in names:
            opts[names[name]] = int(amount) if name == "memory" else float(amount)
        else:
            custom[str(name)] = float(amount)
    if custom:
        opts["resources"] = custom
    return opts


def resource_amounts(resources: Mapping[str, Any], *, scheduling: bool) -> dict[str, float]:
    """Stage resource options (``num_cpus``...) as amounts keyed like Ray's node view.

    The one reading of a stage's resources. ``scheduling=True``: what placing the actor
    needs (``CPU`` 1.0 when ``num_cpus`` is absent, as Ray reserves for scheduling);
    ``False``: what the running actor holds, and a preemption frees (Ray holds no CPU for
    an actor that did not ask for one). Non-numeric values and zero amounts are left out.
    """
    out: dict[str, float] = {}
    for _, name, value in _resource_items(resources):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    if scheduling and "num_cpus" not in resources:
        out.setdefault("CPU", _DEFAULT_ACTOR_CPU)
    return {k: v for k, v in out.items() if v > 0}
