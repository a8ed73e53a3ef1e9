"""The scheduler and the instances of a parallel stage (issue 20 item 4), on a real local Ray.

Each instance of a parallel stage registers with the scheduler under its own id
(``<stage>@<i>of<N>``, also its lease), so the scheduler sees it as a stage of its own:

* a lost instance is restored alone - the scheduler's restore decision names that one
  instance, and the other instances roll back to the committed step as every stage does;
* a preemption for one slot picks one instance of the low-priority parallel stage (not the
  whole stage, not the higher-priority one); the pipeline restores it through the scheduler
  and the committed output stays the reference.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from scheduler.actor import get_or_create
from scheduler.hooks import SchedulerRegistrar, SchedulerRestore
from scheduler.observer import PreemptionCheckpointObserver
from scheduler.plans import PreemptionRequest
from stages.actors.actor import StageSpec
from stages.checkpoint.policy import CheckpointPolicy
from stages.pipeline.pipeline import Pipeline, PipelineEvent, run_reference
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

SMALL = {"num_cpus": 0.25}
INSTANCES = {"agg@0of2", "agg@1of2"}


def _specs(store: str, sched: str) -> list[StageSpec]:
    reg = SchedulerRegistrar(sched)
    return [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=30.0,
                      parallelism=2, key="key", max_parallelism=16, resources=SMALL,
                      priority=0, registrar=reg),
            StageSpec("seq", Enrich, store, block_size=64 * 1024, lease_ttl=30.0,
                      resources=SMALL, priority=5, registrar=reg)]


def _pipeline(tmp_path: Path, sched: str, n: int, on_event: Any) -> tuple[Pipeline, FileSink,
                                                                       GeneratedSource]:
    store = str(tmp_path / "store")
    src = GeneratedSource(seed=4, n=n, keys=30)
    sink = FileSink(tmp_path / "out", fsync=False)
    pipe = Pipeline(src, _specs(store, sched), sink, batch_size=50, max_in_flight=4,
                    policy=CheckpointPolicy(every_records=300), on_event=on_event,
                    on_stage_lost=SchedulerRestore(sched, timeout=120),
                    ping_timeout=30.0,  # a slow probe of a survivor is not a second loss
                    observer_for=lambda spec: PreemptionCheckpointObserver(spec.stage_id,
                                                                           sched))
    return pipe, sink, src


def _done_restores(sched: Any) -> list[list[str]]:
    return [d["victims"] for d in ray.get(sched.decisions.remote())
            if d["kind"] == "restore" and d["outcome"] == "done"]


def test_the_scheduler_restores_one_lost_instance_alone(ray_local: None,
                                                        tmp_path: Path) -> None:
    sched = get_or_create("ps-lost", store_url=str(tmp_path / "store"), auto_restore=False)
    try:
        killed: list[str] = []

        registered: set[str] = set()

        def on_event(ev: PipelineEvent) -> None:
            if ev.kind == "commit" and ev.step == 1:  # each instance under its own id
                registered.update(s["stage_id"]
                                  for s in ray.get(sched.status.remote())["stages"])
            if ev.kind == "commit" and ev.step == 2 and not killed:
                killed.append("agg@1of2")
                ray.kill(pipe.handles["agg@1of2"], no_restart=True)

        pipe, sink, src = _pipeline(tmp_path, "ps-lost", 2400, on_event)
        res = pipe.run()
        assert registered == INSTANCES | {"seq"}
        assert killed and res.relaunches == 1
        assert {e.stage_id for e in res.events if e.kind == "relaunched"} == {"agg@1of2"}
        assert _done_restores(sched) == [["agg@1of2"]]  # that instance, alone
        assert sink.read_all() == run_reference(src, pipe.specs)
    finally:
        ray.kill(sched, no_restart=True)


def test_a_preemption_for_one_slot_picks_one_instance(ray_local: None,
                                                      tmp_path: Path) -> None:
    sched = get_or_create("ps-pre", store_url=str(tmp_path / "store"), auto_restore=False)
    try:
        results: list[Any] = []

        def on_event(ev: PipelineEvent) -> None:
            if ev.kind == "commit" and ev.step == 2 and not results:
                # In the driver's thread: the victim is stopped before the run goes on, so
                # the pipeline meets the loss (the stages' queued calls need no driver).
                req = PreemptionRequest(reason="test: a higher-priority job needs a slot",
                                        deadline=time.time() + 60, count=1)
                results.append(ray.get(sched.preempt.remote(req), timeout=120))

        pipe, sink, src = _pipeline(tmp_path, "ps-pre", 3000, on_event)
        res = pipe.run()
        assert results, "no preemption was asked"
        (victim,) = results[0].victims
        assert victim in INSTANCES  # one instance of the priority-0 stage, not seq
        # an aligned stage saves at barriers only: stopped, resumed from its last barrier
        assert results[0].outcome_of(victim).action == "stopped"
        assert sink.read_all() == run_reference(src, pipe.specs)
        assert res.records_in == 3000 and res.recoveries >= 1
        assert {e.stage_id for e in res.events if e.kind == "relaunched"} == {victim}
        plans = [d for d in ray.get(sched.decisions.remote()) if d["kind"] == "preempt"]
        assert plans and plans[-1]["victims"] == [victim]
    finally:
        ray.kill(sched, no_restart=True)
