"""The one node picker (``stages/actors/placement.py``) and the one reading of a stage's resources
(``StageSpec.ray_options`` / ``StageSpec.ray_resources``); pure, no Ray."""

from __future__ import annotations

from typing import Any

import pytest

from stages.actors.actor import StageSpec, actor_options
from stages.actors.placement import NodeCapacity, pick_node
from stages.pipeline.source import RunningAggregate


def _spec(resources: dict[str, Any]) -> StageSpec:
    return StageSpec("s", RunningAggregate, "/nowhere", resources=resources)


def test_most_free_cpu_wins_ties_by_greater_node_id() -> None:
    nodes = [NodeCapacity("a", {"CPU": 2}), NodeCapacity("b", {"CPU": 3}),
             NodeCapacity("c", {"CPU": 3})]
    assert pick_node(nodes, {"CPU": 1}) == "c"
    assert pick_node(nodes, {"CPU": 1}, exclude={"c"}) == "b"


def test_dead_draining_excluded_and_too_small_nodes_never_qualify() -> None:
    nodes = [NodeCapacity("a", {"CPU": 8}, alive=False), NodeCapacity("b", {"CPU": 8},
                                                                       draining=True),
             NodeCapacity("c", {"CPU": 8}), NodeCapacity("d", {"CPU": 0.5})]
    assert pick_node(nodes, {"CPU": 1}, exclude={"c"}) is None
    assert pick_node(nodes, {"CPU": 1}) == "c"
    assert pick_node(nodes, {"CPU": 1, "GPU": 1}) is None  # every amount must fit


def test_avoided_node_only_when_nothing_else_fits() -> None:
    nodes = [NodeCapacity("a", {"CPU": 8}), NodeCapacity("b", {"CPU": 1})]
    assert pick_node(nodes, {"CPU": 1}, avoid={"a"}) == "b"
    assert pick_node(nodes, {"CPU": 2}, avoid={"a"}) == "a"


def test_reservations_count_as_used() -> None:
    nodes = [NodeCapacity("a", {"CPU": 4}), NodeCapacity("b", {"CPU": 3})]
    assert pick_node(nodes, {"CPU": 1}, reserved={"a": {"CPU": 2}}) == "b"
    assert pick_node(nodes, {"CPU": 3}, reserved={"a": {"CPU": 2}, "b": {"CPU": 1}}) is None
    # rounding: 0.1 * 3 of free 0.3 still fits
    assert pick_node([NodeCapacity("z", {"CPU": 0.3})], {"CPU": 0.1 + 0.1 + 0.1}) == "z"


@pytest.mark.parametrize("resources, need, options", [
    ({"num_cpus": 1}, {"CPU": 1.0}, {"num_cpus": 1}),
    ({}, {"CPU": 1.0}, {}),                                     # Ray's default for an actor
    ({"num_cpus": 0}, {}, {"num_cpus": 0}),                     # zero never constrains
    ({"num_cpus": 0.5, "num_gpus": 1, "memory": 2**20},
     {"CPU": 0.5, "GPU": 1.0, "memory": float(2**20)},
     {"num_cpus": 0.5, "num_gpus": 1, "memory": 2**20}),
    ({"resources": {"ssd": 1}, "spot": 2}, {"CPU": 1.0, "ssd": 1.0, "spot": 2.0},
     {"resources": {"ssd": 1.0, "spot": 2.0}}),
])
def test_one_reading_of_resources(resources: dict[str, Any], need: dict[str, float],
                                  options: dict[str, Any]) -> None:
    spec = _spec(resources)
    assert spec.ray_resources() == need
    assert spec.ray_options() == options
    opts = actor_options(spec)
    assert {k: opts[k] for k in options} == options


def test_held_resources_are_the_same_reading_without_the_scheduling_cpu() -> None:
    """One reading of a stage's resources: what placing it needs (CPU 1 by default, as Ray
    reserves) and what the running actor holds (what a preemption frees) differ only there."""
    from stages.actors.actor import resource_amounts

    for resources in ({}, {"num_cpus": 2}, {"num_cpus": 0, "num_gpus": 0.5},
                      {"memory": 10, "resources": {"x": 1, "y": 0}, "z": 3}):
        need = _spec(resources).ray_resources()
        held = resource_amounts(resources, scheduling=False)
        if "num_cpus" in resources:
            assert held == need
        else:
            assert need == {**held, "CPU": 1.0} and "CPU" not in held
    import scheduler.placement as sp
    assert not hasattr(sp, "resource_need"), "the scheduler must not read resources itself"
