"""Metrics: every figure declared once, recorded where it happens, exported to listeners and
Prometheus (plain library use), documented, and graphed by the Grafana dashboard.

The Ray export (``ray_blockpoint_*`` scraped from the metrics agent during a real pipeline run)
is in ``tests/test_metrics_ray.py``.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from blockstore import open_store
from blockstore.metrics import (
    METRICS,
    export_to_prometheus,
    flush_listeners,
    listen,
    record,
)
from stages import CheckpointedStageState
from stages.errors import CheckpointFailed

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "blockpoint.json"


class Seen:
    """What listeners heard: sums of counters, last gauges, histogram observations.

    Listeners run on their own threads: reading waits until what was recorded so far has
    been delivered (``flush_listeners``)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = \
            defaultdict(list)

    def __call__(self, name: str, value: float, tags: Mapping[str, str]) -> None:
        self._values[(name, tuple(sorted(tags.items())))].append(value)

    @property
    def values(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]:
        assert flush_listeners(60), "listeners did not take their figures"
        return self._values

    def of(self, name: str, **tags: str) -> list[float]:
        return self.values.get((name, tuple(sorted(tags.items()))), [])


@pytest.fixture
def seen() -> Iterator[Seen]:
    s = Seen()
    with listen(s):
        yield s


def test_the_lease_size_reported_is_the_one_compaction_left(store_dir: str,
                                                           seen: Seen) -> None:
    """A state that shrinks: compaction gives the lease's tail back after the commit, and
    the lease_bytes gauge reports the size the lease has then (it reported the size before
    compaction: review of issue 23)."""
    with open_store(store_dir, block_size=4096) as st, st.acquire("agg", holder="me", ttl=60) as lease:
        css = CheckpointedStageState(b"x" * (60 * 4096), lease, compression="none",
                                     allow_unauthenticated=True)
        css.checkpoint(step=1)
        big = lease.num_blocks
        for step in range(2, 6):
            css.state = b"y"
            css.checkpoint(step=step)
            assert seen.of("lease_bytes", stage="agg")[-1] == lease.num_blocks * 4096, step
        assert lease.num_blocks < big  # it did shrink


def test_checkpoints_and_restores_report_their_figures(store_dir: str, seen: Seen) -> None:
    with open_store(store_dir, block_size=4096) as st, st.acquire("agg", holder="me", ttl=60) as lease:
        css = CheckpointedStageState({"n": 0, "pad": b"x" * 20000}, lease, retention=2,
                                     compression="zstd", allow_unauthenticated=True)
        infos = []
        for i in range(3):
            css.state["n"] = i
            infos.append(css.checkpoint(step=i + 1))
        assert seen.of("checkpoints_total", stage="agg") == [1.0, 1.0, 1.0]
        assert len(seen.of("checkpoint_seconds", stage="agg")) == 3
        assert seen.of("checkpoint_payload_bytes", stage="agg")[-1] == infos[-1].data_length
        assert seen.of("checkpoint_stored_bytes", stage="agg")[-1] == infos[-1].stored_bytes
        ratio = seen.of("checkpoint_compression_ratio", stage="agg")[-1]
        assert ratio == pytest.approx(infos[-1].data_length / infos[-1].stored_bytes) and ratio > 5
        assert sum(seen.of("checkpoint_written_bytes_total", stage="agg")) == \
            sum(i.bytes_written for i in infos)
        assert seen.of("checkpoint_generations", stage="agg") == [1.0, 2.0, 2.0]
        assert seen.of("lease_bytes", stage="agg")[-1] == lease.num_blocks * 4096

        # The newest generation's first data block flipped: the restore falls back one.
        newest = max(css._slots, key=lambda s: s.header.generation if s.header else -1)
        block = min(newest.blocks - {0, 1})
        buf = bytearray(lease.read_block(block))
        buf[100] ^= 0xFF
        lease.write_block(block, bytes(buf))
        lease.flush()
        back = CheckpointedStageState.restore(lease, allow_unauthenticated=True)
        assert back.state["n"] == 1
        assert seen.of("restores_total", stage="agg") == [1.0]
        assert seen.of("restore_fallbacks_total", stage="agg") == [1.0]
        assert len(seen.of("restore_seconds", stage="agg")) == 1

        # A failure is counted by the type of what went wrong.
        css.state["bad"] = lambda: None  # pickle cannot serialise a lambda
        with pytest.raises(CheckpointFailed):
            css.checkpoint(step=9)
        causes = {dict(tags)["cause"] for (name, tags) in seen.values
                  if name == "checkpoint_failures_total"}
        assert causes and causes <= {"PicklingError", "AttributeError", "TypeError"}


def test_async_checkpoint_reports_its_stall(store_dir: str, seen: Seen) -> None:
    with open_store(store_dir, block_size=4096) as st, st.acquire("s", holder="me", ttl=60) as lease:
        css = CheckpointedStageState({"n": 1}, lease, allow_unauthenticated=True)
        css.checkpoint_async(step=1).wait(60)
        assert len(seen.of("checkpoint_stall_seconds", stage="s")) == 1
        assert seen.of("checkpoints_total", stage="s") == [1.0]


def test_a_wrong_name_or_tag_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        record("checkpoints", 1, stage="x")
    with pytest.raises(ValueError, match="takes tags"):
        record("checkpoints_total", 1, lease="x")


def test_a_failing_listener_is_dropped_and_never_breaks_the_caller(seen: Seen) -> None:
    calls: list[str] = []

    def broken(name: str, value: float, tags: Mapping[str, str]) -> None:
        calls.append(name)
        raise RuntimeError("exporter down")

    with listen(broken):
        record("checkpoints_total", 1, stage="x")
        record("checkpoints_total", 1, stage="x")
    assert calls == ["checkpoints_total"]
    assert seen.of("checkpoints_total", stage="x") == [1.0, 1.0]


def test_prometheus_registry_outside_ray() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    export_to_prometheus(registry)
    record("checkpoints_total", 2, stage="p")
    record("checkpoint_seconds", 0.2, stage="p")
    record("checkpoint_generations", 3, stage="p")
    text = prometheus_client.generate_latest(registry).decode()
    assert 'blockpoint_checkpoints_total{stage="p"} 2.0' in text
    assert 'blockpoint_checkpoint_seconds_count{stage="p"} 1.0' in text
    assert 'blockpoint_checkpoint_generations{stage="p"} 3.0' in text


def _exported_names(name: str) -> set[str]:
    return {"ray_blockpoint_" + name} | ({"ray_blockpoint_" + name + s
                                          for s in ("_bucket", "_count", "_sum")}
                                         if METRICS[name].kind == "histogram" else set())


def test_operations_md_documents_every_metric() -> None:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    rows = set(re.findall(r"^\| `ray_blockpoint_(\w+)` \|", text, re.MULTILINE))
    assert rows == set(METRICS), (sorted(set(METRICS) - rows), sorted(rows - set(METRICS)))
    for name, spec in METRICS.items():
        row = re.search(rf"^\| `ray_blockpoint_{name}` \| (\w+) \| ([^|]*) \|", text,
                        re.MULTILINE)
        assert row is not None and row.group(1) == spec.kind, name
        assert {t.strip(" `") for t in row.group(2).split(",") if t.strip()} == set(spec.tags)


def test_grafana_dashboard_names_only_metrics_that_exist() -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(board["panels"]) >= 8 and exprs
    known = set().union(*(_exported_names(n) for n in METRICS))
    named = {m for e in exprs for m in re.findall(r"\bray_blockpoint_\w+", e)}
    assert named and named <= known, sorted(named - known)
    # Every figure is on the dashboard, so an operator never has to hunt for one.
    shown = {n for n in METRICS if _exported_names(n) & named}
    assert shown == set(METRICS), sorted(set(METRICS) - shown)
    assert board["title"] and board.get("uid")


def test_restore_fallbacks_count_only_newer_generations_that_fail(tmp_path: Path,
                                                                   seen: Seen) -> None:
    """A header a crash cut short (never committed) and a damaged *older* generation are
    listed in ``restored.skipped`` but are no fallback: the restore returned the newest
    committed generation it could."""
    from blockstore import FileStore
    from stages.checkpoint.reader import scan_slots

    bs = 4096
    with FileStore(tmp_path / "s", bs) as st, st.acquire("agg", holder="me", ttl=60) as lease:
        css = CheckpointedStageState({"n": 0}, lease, retention=3, allow_unauthenticated=True)
        for step in (1, 2, 3, 4):
            css.state["n"] = step
            css.checkpoint(step=step, meta={"note": "m" * 1500})  # a header of 4 sectors
        _, scans = scan_slots(lease)
        by_gen = {s.header.generation: s.slot for s in scans if s.header}
        assert sorted(by_gen) == [2, 3, 4]
        dat = tmp_path / "s" / "leases" / f"{lease.lease_id}.dat"
        raw = bytearray(dat.read_bytes())
        torn, old = by_gen[4] * bs, by_gen[2] * bs
        raw[torn + 512:torn + bs] = bytes(bs - 512)  # generation 4's header write cut short
        raw[old + 60] ^= 0x01  # generation 2's header damaged (its generation field intact)
        dat.write_bytes(bytes(raw))

        back = CheckpointedStageState.restore(lease, allow_unauthenticated=True)
        assert back.restored.generation == 3
        assert sorted(g for g, _ in back.restored.skipped) == [2, 4]
        assert seen.of("restores_total", stage="agg") == [1.0]
        assert seen.of("restore_fallbacks_total", stage="agg") == []


def test_preemption_reasons_tag_by_their_first_word_not_a_series_per_request(
        seen: Seen) -> None:
    """A request's reason is free text (``"spot notice node-3"``): whole, as a tag value, it
    made a Prometheus series per node or request."""
    from scheduler.decisions import DecisionLog

    log = DecisionLog()
    for i in range(50):
        log.record("preempt", "ready", reason=f"spot notice node-{i}", victims=["s"])
        log.record("preempt", "ready", reason=f"job-{i:08x} needs 4 GPUs", victims=["s"])
        log.record("preempt", "ready", reason=f"{i} urgent", victims=["s"])
    log.record("restore", "done", reason="node 3f2a lost", victims=["s"])
    reasons = {dict(tags)["reason"] for (name, tags) in seen.values
               if name == "scheduler_decisions_total"}
    assert reasons == {"spot", "job", "other", ""}
    assert sum(seen.of("scheduler_decisions_total", kind="preempt", outcome="ready",
                       reason="spot")) == 50


def test_preemption_wait_is_measured_on_a_monotonic_clock(seen: Seen,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall clock steps back 1000 s (NTP, a resumed VM) while a preemption runs: the wait
    it reports stays a small non-negative duration (it was -1000 s: measured with
    ``time.time``). Deadlines stay on the wall clock; only the duration changes clocks."""
    import threading
    import time as real_time
    import types

    from scheduler import stopping
    from scheduler.registry import RegistryStore
    from scheduler.table import StageTable

    class SteppingClock:
        """``time`` for scheduler.stopping: the wall clock steps back after its first read."""

        def __init__(self) -> None:
            self.reads = 0

        def time(self) -> float:
            self.reads += 1
            return real_time.time() - (1000.0 if self.reads > 1 else 0.0)

    clock = SteppingClock()
    monkeypatch.setattr(stopping, "time", types.SimpleNamespace(
        time=clock.time, monotonic=real_time.monotonic, sleep=real_time.sleep))
    marks_known = threading.Event()
    marks_known.set()
    with RegistryStore(f"memory://wait-{id(clock)}", "_reg") as reg:
        table = StageTable(reg, name="s", namespace=None)
        result = stopping.Stopper(table, marks_known).preempt(
            {"reason": "spot notice node-1", "deadline": real_time.time() + 60, "count": 1})
    assert clock.reads > 1  # the step happened inside the preemption
    waits = seen.of("preemption_wait_seconds", reason="spot")
    assert len(waits) == 1 and 0 <= waits[0] < 60, waits
    assert 0 <= result.waited_s < 60


def test_the_run_tag_is_bounded_per_process(seen: Seen, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A driver starting a run per job made a series per run id per figure, for the life of
    the process. The first N run ids keep their own ``run`` value; later runs share
    ``other`` (logged once); a run that got its own value keeps it."""
    import logging

    from stages.pipeline import metering

    # A fresh cap for this test (the process's own, RUN_TAGS, is shared by other tests).
    monkeypatch.setattr(metering, "RUN_TAGS", metering.RunTags(3), raising=False)
    with caplog.at_level(logging.WARNING, logger="stages.pipeline.metering"):
        for i in range(50):
            metering.note_event(f"job-{i:04x}", "commit", {"records_in": 2, "records_out": 1})
        metering.note_event("job-0001", "failure", {})
        metering.note_replayed("job-0031", 5)
        metering.note_recovery("job-0000", 0.5)
    runs = {dict(tags)["run"] for (name, tags) in seen.values if name.startswith("pipeline_")}
    assert runs == {"job-0000", "job-0001", "job-0002", "other"}
    assert sum(seen.of("pipeline_steps_committed_total", run="other")) == 47
    assert sum(seen.of("pipeline_records_in_total", run="other")) == 94
    assert seen.of("pipeline_failures_total", run="job-0001") == [1.0]
    assert seen.of("pipeline_records_replayed_total", run="other") == [5.0]
    assert len(seen.of("pipeline_recovery_seconds", run="job-0000")) == 1
    warned = [r for r in caplog.records if "run='other'" in r.getMessage()]
    assert len(warned) == 1 and "job-0003" in warned[0].getMessage()


def test_the_run_tag_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.pipeline.metering import DEFAULT_MAX_RUNS, MAX_RUNS_ENV, RunTags

    monkeypatch.setenv(MAX_RUNS_ENV, "1")
    tags = RunTags()
    assert (tags.tag("a"), tags.tag("b"), tags.tag("a")) == ("a", "other", "a")
    monkeypatch.setenv(MAX_RUNS_ENV, "0")
    assert RunTags().tag("a") == "other"
    monkeypatch.setenv(MAX_RUNS_ENV, "many")
    assert RunTags().limit == DEFAULT_MAX_RUNS
    monkeypatch.delenv(MAX_RUNS_ENV)
    assert RunTags().limit == DEFAULT_MAX_RUNS


class NotingObserver:
    """A flush observer that notes its calls (in-process, no scheduler)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool | None]] = []

    def on_flush_start(self, lease_id: str) -> None:
        self.calls.append(("start", None))

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        self.calls.append(("complete", ok))


def test_a_blocking_listener_never_holds_the_flush_mark(store_dir: str, seen: Seen) -> None:
    """A listener that blocks (an exporter's network call) ran inline inside the flush
    mark: the checkpoint, and the scheduler's protection, waited for it. The checkpoint
    returns and the mark is released while the listener is still blocked; the figures
    reach it once it unblocks."""
    from polling import wait_for

    gate = threading.Event()
    inside = threading.Event()

    def blocking(name: str, value: float, tags: Mapping[str, str]) -> None:
        inside.set()
        gate.wait(120)

    obs = NotingObserver()
    done: list[object] = []
    try:
        with open_store(store_dir, block_size=4096) as st, \
                st.acquire("slow", holder="me", ttl=60) as lease, listen(blocking):
            css = CheckpointedStageState.with_observer({"n": 1}, lease, lease.lease_id, obs,
                                                       allow_unauthenticated=True)
            t = threading.Thread(target=lambda: done.append(css.checkpoint(step=1)),
                                 daemon=True)
            t.start()
            wait_for(lambda: done, timeout=60, what="the checkpoint to return while a "
                     "listener blocks")
            # The listener is called (on its own thread) and is blocked right now.
            assert inside.wait(60), "the listener was never called"
            assert obs.calls == [("start", None), ("complete", True)]
            gate.set()
        assert seen.of("checkpoints_total", stage="slow") == [1.0]
    finally:
        gate.set()


class ListenerAbort(BaseException):
    """What a listener might raise that is not an Exception (SystemExit-like)."""


def test_a_listener_raising_a_base_exception_never_changes_the_outcome(
        store_dir: str, seen: Seen, caplog: pytest.LogCaptureFixture) -> None:
    """A listener's ``BaseException`` escaped ``checkpoint()`` after the commit: the caller
    took a committed generation for a failed one, and the observer heard ``ok=False``. It is
    logged and the listener removed; the checkpoint's outcome is its own."""
    import logging

    calls: list[str] = []

    def aborting(name: str, value: float, tags: Mapping[str, str]) -> None:
        calls.append(name)
        raise ListenerAbort("exporter gave up")

    obs = NotingObserver()
    with caplog.at_level(logging.ERROR, logger="blockstore.metrics"), \
            open_store(store_dir, block_size=4096) as st, \
            st.acquire("b", holder="me", ttl=60) as lease:
        css = CheckpointedStageState.with_observer({"n": 1}, lease, lease.lease_id, obs,
                                                   allow_unauthenticated=True)
        with listen(aborting):
            info = css.checkpoint(step=1)
            css.state["n"] = 2
            css.checkpoint(step=2)
        assert info.generation == 1
        assert obs.calls == [("start", None), ("complete", True)] * 2
        assert CheckpointedStageState.restore(lease, allow_unauthenticated=True).state == \
            {"n": 2}
    assert len(calls) == 1  # removed after its first failure
    assert seen.of("checkpoints_total", stage="b") == [1.0, 1.0]
    failed = [r for r in caplog.records if "metrics listener" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info and \
        failed[0].exc_info[0] is ListenerAbort


def test_a_listener_far_behind_loses_new_figures_never_blocks_the_caller(
        seen: Seen, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from blockstore.metrics import LISTENER_QUEUE

    gate = threading.Event()
    got: list[float] = []

    def stuck(name: str, value: float, tags: Mapping[str, str]) -> None:
        gate.wait(120)
        got.append(value)

    try:
        with caplog.at_level(logging.WARNING, logger="blockstore.metrics"), listen(stuck):
            for i in range(LISTENER_QUEUE + 50):
                record("checkpoints_total", 1, stage="q")
            gate.set()
    finally:
        gate.set()
    assert LISTENER_QUEUE <= len(got) < LISTENER_QUEUE + 50
    assert sum(seen.of("checkpoints_total", stage="q")) == LISTENER_QUEUE + 50
    behind = [r for r in caplog.records if "figures behind" in r.getMessage()]
    assert len(behind) == 1
