"""The figures of a known pipeline run, scraped from Ray's metrics agent (issue 22, item 6).

A local Ray with a metrics export port; a two-stage pipeline under the scheduler (flush
observer, registrar, restore hook) whose ``agg`` stage is killed after step 2 and restored by
the scheduler. Ray's agent exports ``ray_blockpoint_*`` from the driver and the stage workers;
the test waits until the scraped values equal what the run reports of itself.
"""

from __future__ import annotations

import functools
import re
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from polling import wait_for
from s3server import free_port
from stages.actors.actor import StageSpec
from stages.checkpoint.policy import CheckpointPolicy
from stages.pipeline.pipeline import Pipeline, PipelineEvent, run_reference
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

SAMPLE = re.compile(r'^(ray_blockpoint_\w+)\{([^}]*)\} ([0-9.eE+-]+|NaN)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
def metrics_port() -> Iterator[int]:
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 1024 * 1024, _metrics_export_port=port)
    try:
        yield port
    finally:
        ray.shutdown()


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``name -> {blockpoint's own labels -> value summed over workers}``; empty when the
    exporter did not answer (a poll asks again: one slow scrape is not a failure)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
    except OSError:
        return defaultdict(lambda: defaultdict(float))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(
        lambda: defaultdict(float))
    for line in body.decode().splitlines():
        m = SAMPLE.match(line)
        if m is None:
            continue
        labels = {k: v for k, v in LABEL.findall(m.group(2))
                  if k not in {"Component", "NodeAddress", "SessionName", "Version", "WorkerId",
                               "JobId"} and not k.startswith("otel_")}
        out[m.group(1)][tuple(sorted(labels.items()))] += float(m.group(3))
    return out


def value(scraped: dict[str, Any], name: str, **labels: str) -> float:
    return scraped.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.fixture
def own_run_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    """This driver's run tags start empty: earlier tests of this process (a pytest worker
    runs many) used up the per-process cap on run ids with their own series, after which
    every run is tagged ``run="other"`` (stages/pipeline/metering.py)."""
    from stages.pipeline import metering
    monkeypatch.setattr(metering, "RUN_TAGS", metering.RunTags())


def test_a_known_run_is_scraped_from_rays_exporter(metrics_port: int, tmp_path: Path,
                                                   own_run_tags: None) -> None:
    from scheduler.actor import get_or_create
    from scheduler.hooks import SchedulerRegistrar, SchedulerRestore
    from scheduler.observer import PreemptionCheckpointObserver

    store = str(tmp_path / "store")
    sched = get_or_create("m-sched", store_url=store, auto_restore=False)
    try:
        specs = [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=30.0,
                           registrar=SchedulerRegistrar("m-sched")),
                 StageSpec("seq", functools.partial(Enrich, True, "sum"), store,
                           block_size=64 * 1024, lease_ttl=30.0,
                           registrar=SchedulerRegistrar("m-sched"))]
        seq_checkpoints: list[int] = []

        def on_event(ev: PipelineEvent) -> None:
            if ev.kind == "commit":
                seq_checkpoints.append(ev.detail["generations"]["seq"])
                if ev.step == 2 and not killed:
                    killed.append(True)
                    ray.kill(p.handles["agg"], no_restart=True)

        killed: list[bool] = []
        src = GeneratedSource(seed=11, n=2400, keys=7)
        sink = FileSink(tmp_path / "out", fsync=False)
        p = Pipeline(src, specs, sink, batch_size=50, max_in_flight=4, run_id="metrics-run",
                     policy=CheckpointPolicy(every_records=400), on_event=on_event,
                     on_stage_lost=SchedulerRestore("m-sched", timeout=60),
                     ping_timeout=30.0,  # a slow probe of a survivor is not a second loss
                     # Every ack is counted below, none may be missed: a bound a loaded
                     # machine never hits (the default 1 s is not that).
                     observer_for=lambda spec: PreemptionCheckpointObserver(
                         spec.stage_id, "m-sched", ack_timeout=60.0))
        res = p.run()
        assert killed and res.relaunches == 1 and res.recoveries == 1
        assert sink.read_all() == run_reference(src, specs)

        run = {"run": "metrics-run"}
        expected = {
            ("ray_blockpoint_pipeline_steps_committed_total", ()): res.committed_step,
            ("ray_blockpoint_pipeline_records_in_total", ()): res.records_in,
            ("ray_blockpoint_pipeline_records_out_total", ()): res.records_out,
            ("ray_blockpoint_pipeline_failures_total", ()): 1,
            ("ray_blockpoint_pipeline_recovery_seconds_count", ()): 1,
        }

        def settled() -> dict[str, Any] | None:
            s = scrape(metrics_port)
            for (name, _), want in expected.items():
                if value(s, name, **run) != want:
                    return None
            if value(s, "ray_blockpoint_scheduler_decisions_total", kind="restore",
                     outcome="done", reason="") != 1:
                return None
            # The stage that was never killed: every checkpoint it made was counted once,
            # and each waited for the scheduler's acknowledgement.
            made = value(s, "ray_blockpoint_checkpoints_total", stage="seq")
            if made < max(seq_checkpoints) or value(
                    s, "ray_blockpoint_flush_ack_seconds_count", stage="seq") != made:
                return None
            return s

        s = wait_for(settled, timeout=90, what="the run's figures in Ray's metrics export")
        assert value(s, "ray_blockpoint_checkpoint_seconds_count", stage="seq") == \
            value(s, "ray_blockpoint_checkpoints_total", stage="seq")
        assert value(s, "ray_blockpoint_flush_mark_seconds_count", stage="seq") == \
            value(s, "ray_blockpoint_checkpoints_total", stage="seq")
        assert value(s, "ray_blockpoint_flush_ack_missed_total", stage="seq") == 0
        # The restored agg read its committed generation back.
        assert value(s, "ray_blockpoint_restores_total", stage="agg") >= 1
        assert value(s, "ray_blockpoint_checkpoint_generations", stage="seq") >= 1
        assert value(s, "ray_blockpoint_lease_bytes", stage="seq") > 0
        assert value(s, "ray_blockpoint_pipeline_records_replayed_total", **run) == \
            res.replayed_records
    finally:
        ray.kill(sched, no_restart=True)


def test_one_failure_of_the_ray_export_does_not_switch_it_off(
        metrics_port: int, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """One error while recording through Ray switched Ray export off for the whole process:
    every later figure, of every name, was lost. Now the failing figure is skipped for a
    back-off and retried; the others go on; the failure is logged once, the recovery once.

    The failure is injected in blockpoint's own instrument factory (Ray itself untouched):
    its first call raises, as Ray's recorder does before a worker is connected."""
    import logging

    from blockstore import metrics

    real = metrics._ray_instrument
    calls: list[str] = []

    def failing_once(spec: Any) -> Any:
        calls.append(spec.name)
        if len(calls) == 1:
            raise RuntimeError("core worker not ready")
        return real(spec)

    monkeypatch.setattr(metrics, "_ray_instrument", failing_once)
    with metrics._lock:  # a name not recorded yet in this process: built afresh, so it fails
        metrics._ray_instruments.pop("checkpoint_stored_bytes", None)
        metrics._ray_instruments.pop("checkpoint_payload_bytes", None)
    with caplog.at_level(logging.INFO, logger="blockstore.metrics"):
        metrics.record("checkpoint_stored_bytes", 1.0, stage="retry")  # fails
        metrics.record("checkpoint_stored_bytes", 2.0, stage="retry")  # in the back-off
        metrics.record("checkpoint_payload_bytes", 7.0, stage="retry")  # another figure

        def exported() -> dict[str, Any] | None:
            metrics.record("checkpoint_stored_bytes", 3.0, stage="retry")
            s = scrape(metrics_port)
            ok = value(s, "ray_blockpoint_checkpoint_stored_bytes", stage="retry") == 3.0 \
                and value(s, "ray_blockpoint_checkpoint_payload_bytes", stage="retry") == 7.0
            return s if ok else None

        wait_for(exported, timeout=90, what="both figures in Ray's export after one failure")
    failed = [r for r in caplog.records if "through Ray failed" in r.getMessage()]
    back = [r for r in caplog.records if "works again (" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert len(back) == 1 and "checkpoint_stored_bytes" in back[0].getMessage()
