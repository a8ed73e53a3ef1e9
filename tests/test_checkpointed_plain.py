"""``@checkpointed`` without Ray: the decorated class is a plain class (``key=`` given).

Argument checks at decoration, specific errors at start and at the first checkpoint,
restore, policies, nested calls and fencing, the registrar and the stage control calls, the
relaunch recipe. On a real Ray: ``test_checkpointed_actor.py``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle
from counters import CounterBase, counter

from stages import (
    ActorFenced,
    ActorRecipe,
    CheckpointedConfigError,
    CheckpointFailed,
    Relaunchable,
    StageStopped,
    StateAttributeError,
    StoreUnavailable,
    checkpointed,
)
from stages.actors.actor import resource_amounts, resources_held

# As on Ray: the classes defined here pickle by value (a recipe carries its class).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_decoration_errors(store_dir: str) -> None:
    with pytest.raises(CheckpointedConfigError, match="names a method"):
        checkpointed(store=store_dir, state="add")(CounterBase)
    with pytest.raises(CheckpointedConfigError, match="attribute name"):
        checkpointed(store=store_dir, state=("state", "not an identifier"))(CounterBase)
    with pytest.raises(CheckpointedConfigError, match="every_calls"):
        checkpointed(store=store_dir, every_calls=0)(CounterBase)
    with pytest.raises(CheckpointedConfigError, match="retention"):
        checkpointed(store=store_dir, retention=1)(CounterBase)
    with pytest.raises(CheckpointedConfigError, match="under"):
        checkpointed(store=store_dir)(ray.remote(CounterBase))

    class Clash(CounterBase):
        def checkpoint(self) -> None: ...
    with pytest.raises(CheckpointedConfigError, match="checkpoint"):
        checkpointed(store=store_dir)(Clash)


def test_errors_at_start_and_first_checkpoint(store_dir: str, tmp_path: Path) -> None:
    with pytest.raises(StateAttributeError) as e:
        counter(store_dir, state="stat", key="a")()
    assert e.value.attribute == "stat"
    with pytest.raises(CheckpointedConfigError, match="no lease key"):
        counter(store_dir)()  # neither key= nor an actor name
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable) as u:
        counter(str(blocker / "store"), key="a")()
    assert u.value.key == "a"

    c = counter(store_dir, key="lock", every_calls=2)()
    c.state["lock"] = threading.Lock()  # unpicklable: the checkpoint that is due fails loudly
    c.add()
    with pytest.raises(CheckpointFailed):
        c.add()
    assert c.checkpoint_info()["failed_checkpoints"] == 1


def test_restore_policy_nested_and_fencing(store_dir: str) -> None:
    cls = counter(store_dir, key="plain", every_calls=3)
    a = cls(10)
    assert a.restored_from() is None and a.get() == 10  # no checkpoint: __init__'s state
    for _ in range(4):
        a.add()
    assert a.checkpoint_info()["generation"] == 1  # after the 3rd call
    assert a.add_twice(5) == 24 and a.checkpoint_info()["calls_total"] == 5  # nested once
    b = cls(0)  # a new incarnation: steals the lease, restores generation 1 (n=13)
    assert b.get() == 13 and b.restore_calls() == [1] and b.restored_from() == 1
    assert b.checkpoint_info()["epoch"] == a.checkpoint_info()["epoch"] + 1
    with pytest.raises(CheckpointFailed):
        a.checkpoint()  # the zombie's write is refused by the store
    with pytest.raises(ActorFenced):
        a.add()
    assert cls(0).get() == 13

    multi = checkpointed(store=store_dir, key="multi", state=("state", "restores"))(CounterBase)
    m = multi(1)
    m.add()
    m.checkpoint()
    back = multi(0)
    assert back.state == {"n": 2} and back.restores == [1]  # on_restore ran after the restore


class ListRegistrar:
    """A registrar that keeps what it is told (in-process: the decorator holds this object)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.gone: list[str] = []

    def register(self, registration: Any) -> None:
        self.seen.append(registration)

    def unregister(self, stage_id: str, *, timeout: float = 10.0) -> None:
        self.gone.append(stage_id)


def test_registrar_and_stage_control_calls(store_dir: str) -> None:
    reg = ListRegistrar()
    cls = checkpointed(store=store_dir, key="reg", registrar=reg, priority=3)(CounterBase)
    a = cls()
    a.add()
    a.checkpoint()
    b = cls()  # every incarnation registers, the newer epoch with its restored generation
    assert [(r.epoch, r.generation, r.priority) for r in reg.seen] == [(1, None, 3), (2, 1, 3)]
    assert b.ping() == "reg" and b.registration().epoch == 2
    info = b.info()
    assert info["stage_id"] == "reg" and info["records_total"] == 0 and not info["flushing"]
    b.add()
    assert b.shutdown(checkpoint=True)["generation"] == 2  # what the scheduler's stop does
    with pytest.raises(StageStopped):
        b.add()
    b.__ray_shutdown__()
    assert reg.gone == []  # stopped by the scheduler: it stays registered (restorable)
    c = cls()
    assert c.get() == 2
    c.__ray_shutdown__()  # a graceful exit: ended on purpose, so not to be re-created
    assert reg.gone == ["reg"]

    class HasInfo(CounterBase):
        def info(self) -> None: ...
    with pytest.raises(CheckpointedConfigError, match="info"):
        checkpointed(store=store_dir, registrar=reg)(HasInfo)


def test_relaunch_recipe_pieces(store_dir: str) -> None:
    """What a re-created actor is started with (the relaunch itself runs on the Cluster:
    tests/test_checkpointed_cluster.py)."""
    held = {"CPU": 0.5, "GPU": 1.0, "memory": 2.0 ** 20, "disk": 3.0, "zero": 0.0}
    opts = resources_held(held)
    assert opts == {"num_cpus": 0.5, "num_gpus": 1.0, "memory": 2 ** 20,
                    "resources": {"disk": 3.0}}
    # One reading: what the scheduler counts is what the actor held, and what Ray is asked.
    assert resource_amounts(opts, scheduling=False) == {k: v for k, v in held.items() if v}
    assert resources_held({}) == {} and resource_amounts({}, scheduling=True) == {"CPU": 1.0}
    cls = checkpointed(store=store_dir, key="r", concurrency_groups={"io": 3})(CounterBase)
    recipe = ActorRecipe.build("r", cls, (1,), {"k": 2}, store_url=store_dir,
                               resources=opts, name="r", namespace="ns", max_restarts=0,
                               concurrency_groups={"io": 3, **checkpointed.GROUPS})
    assert recipe.unpack() == (cls, (1,), {"k": 2}) and recipe.actor_class == "CounterBase"
    with pytest.raises(TypeError):  # what recipe_for turns into "no recipe" and a warning
        ActorRecipe.build("r", cls, (threading.Lock(),), {}, store_url=store_dir)
    got = recipe.ray_options(None, namespace="other")
    assert got["name"] == "r" and got["namespace"] == "ns" and got["lifetime"] == "detached"
    assert got["max_restarts"] == 0 and got["resources"] == {"disk": 3.0}
    assert isinstance(recipe, Relaunchable) and recipe.ray_resources()["CPU"] == 0.5
    assert cls.__bp_config__.concurrency_groups == {"io": 3}

    class Grouped(CounterBase):
        @ray.method(concurrency_group="io")
        def read(self) -> int:
            return 0
    reg = ListRegistrar()
    with pytest.raises(CheckpointedConfigError, match="'io'"):
        checkpointed(store=store_dir, registrar=reg)(Grouped)  # a re-created one lacks it
    checkpointed(store=store_dir, registrar=reg, concurrency_groups={"io": 2})(Grouped)
    with pytest.raises(CheckpointedConfigError, match="decorator's own"):
        checkpointed(store=store_dir, concurrency_groups={"control": 1})(CounterBase)
    with pytest.raises(CheckpointedConfigError, match="ints >= 1"):
        checkpointed(store=store_dir, concurrency_groups={"io": 0})(CounterBase)


def test_max_state_bytes_bounds_the_restore(store_dir: str) -> None:
    """``@checkpointed(max_state_bytes=N)`` reaches the restore of every incarnation: a
    generation declaring more is refused with ``CheckpointTooLarge`` at start, nothing
    allocated (the decorator had no way to set the bound); a bad bound is refused at
    decoration."""
    from stages import CheckpointTooLarge

    a = counter(store_dir, key="bounded")(1)
    a.state["pad"] = "x" * 5000
    a.add()
    size = a.checkpoint()["data_length"]
    with pytest.raises(CheckpointTooLarge) as e:
        counter(store_dir, key="bounded", max_state_bytes=size - 1)(0)
    assert e.value.limit == size - 1 and e.value.data_length == size
    back = counter(store_dir, key="bounded", max_state_bytes=size)(0)
    assert back.get() == 2 and back.restored_from() == 1
    with pytest.raises(ValueError, match="max_state_bytes"):
        counter(store_dir, key="bounded", max_state_bytes=-1)
