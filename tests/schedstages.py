"""The stages and helpers of the scheduler tests on one local Ray node.

Stages are real ``stages.actors.actor.StageActor`` incarnations whose checkpoint flush a test
can hold open: their state contains a :class:`~gates.Gate`, whose pickling (inside the flush)
blocks while a file exists, or a :class:`Bomb`, whose pickling raises while a file exists.
:func:`local_scheduler` is the ``sched`` fixture of ``conftest.py``: a fresh scheduler actor
(its own name and store, so tests do not see each other's stages).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gates
import ray
import ray.cloudpickle
from gates import Gate
from polling import wait_for

from blockstore import open_store
from scheduler import (
    NonPreemptibleReason,
    PreemptionCheckpointObserver,
    get_or_create,
)
from scheduler.hooks import SchedulerRegistrar
from stages.actors.actor import StageSpec, launch_stage
from stages.checkpoint.observer import flush_guard

__all__ = ["CIP", "Bomb", "Counter", "FlushProbe", "counter_factory", "hold_flush",
           "local_scheduler", "make_spec", "stage_status", "start_stage", "status",
           "waiting_for_flush"]

# Workers cannot import this module: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(gates)

CIP = NonPreemptibleReason.CHECKPOINT_IN_PROGRESS.value


# Checkpoints pickle by reference and workers cannot import this module, so Gate and Bomb
# pickle as their path string (restored state holds a str, which is all tests need).


class Bomb:
    """Pickling raises while ``path`` exists: makes a checkpoint fail."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        if os.path.exists(self.path):
            raise RuntimeError("checkpoint sabotaged by the test")
        return (str, (self.path,))


class Counter:
    """A stateful stage: sums records. Its state may hold a Gate or a Bomb, built in the
    worker from a path (so that shipping the spec does not turn them into strings)."""

    def __init__(self, gate: str | None = None, bomb: str | None = None) -> None:
        self.gate = gate
        self.bomb = bomb

    def initial_state(self) -> dict[str, Any]:
        extra = Gate(self.gate) if self.gate else Bomb(self.bomb) if self.bomb else None
        return {"total": 0, "n": 0, "extra": extra}

    def process(self, state: dict[str, Any], record: int) -> list[int]:
        state["total"] += record
        state["n"] += 1
        return [state["total"]]


def counter_factory(gate: str | None = None, bomb: str | None = None) -> Callable[[], Counter]:
    def make() -> Counter:
        return Counter(gate, bomb)
    return make


@ray.remote(num_cpus=0)
class FlushProbe:
    """A minimal stage stand-in: opens and closes flush guards on demand."""

    def __init__(self, observer: PreemptionCheckpointObserver) -> None:
        self.observer = observer
        self.guard: Any = None

    def start(self, lease_id: str) -> None:
        self.guard = flush_guard(self.observer, lease_id)
        self.guard.__enter__()

    def complete(self) -> None:
        self.guard.__exit__(None, None, None)

    def round_trips(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            self.observer.on_flush_start("probe-lease")
            out.append(time.perf_counter() - t)
            self.observer.on_flush_complete("probe-lease", True)
        return out

    def counters(self) -> tuple[int, int]:
        return self.observer.acked, self.observer.missed


@contextmanager
def local_scheduler(tmp_path: Path) -> Iterator[tuple[Any, str, str]]:
    """A fresh scheduler actor (unique name) and its store; killed, with its stages, on exit."""
    name = f"sched-{uuid.uuid4().hex[:8]}"
    store = str(tmp_path / "store")
    open_store(store, block_size=64 * 1024).close()
    handle = get_or_create(name, store_url=store, poll_interval=0.2, retry_interval=0.5)
    try:
        yield handle, name, store
    finally:
        for st in ray.get(handle.status.remote())["stages"]:
            h = ray.get(handle.handle_of.remote(st["stage_id"]))
            if h is not None:
                ray.kill(h)
        ray.kill(handle)


def make_spec(name: str, store: str, sid: str, *, priority: int = 0, gate: Path | None = None,
              bomb: Path | None = None, cpus: float = 0.25) -> StageSpec:
    factory = counter_factory(str(gate) if gate else None, str(bomb) if bomb else None)
    return StageSpec(stage_id=sid, factory=factory, store_url=store,
                     priority=priority, resources={"num_cpus": cpus},
                     registrar=SchedulerRegistrar(name))


def start_stage(sched: Any, name: str, spec: StageSpec) -> Any:
    """Launch a stage from the driver with the scheduler's observer; wait until registered."""
    obs = PreemptionCheckpointObserver(spec.stage_id, name)
    handle = launch_stage(spec, observer=obs)
    ray.get(handle.info.remote())
    wait_for(lambda: spec.stage_id in {s["stage_id"] for s in status(sched)["stages"]},
             what=f"{spec.stage_id} registered")
    ray.get(sched.register_spec.remote(spec))
    return handle


def status(sched: Any) -> dict[str, Any]:
    return ray.get(sched.status.remote())


def stage_status(sched: Any, sid: str) -> dict[str, Any]:
    return ray.get(sched.stage.remote(sid))


def hold_flush(sched: Any, stage: Any, sid: str, gate: Path) -> Any:
    """Start a checkpoint of ``stage`` held open at ``gate``; return its ref once the
    scheduler has marked that flush.

    A previous flush's completion report is fire-and-forget: its mark is awaited away first,
    or it would pass for the mark of the held flush.
    """
    wait_for(lambda: ray.get(sched.reasons.remote(sid)) == [], what=f"{sid}: old mark cleared")
    gates.hold(gate)
    flushing = stage.checkpoint.remote()
    wait_for(lambda: gates.entered(gate), what=f"{sid}'s flush held at the gate")
    wait_for(lambda: ray.get(sched.reasons.remote(sid)) == [CIP], what=f"{sid} flushing")
    return flushing


def waiting_for_flush(sched: Any, reason: str, sid: str) -> bool:
    """The scheduler's handshake: it logged a plan for ``reason`` that waits for ``sid``."""
    return any(d["kind"] == "select" and d["reason"] == reason and d["outcome"] == "wait"
               and sid in ((d["plan"] or {}).get("wait_for") or ())
               for d in ray.get(sched.decisions.remote(50)))
