"""What a pipeline run reports to :mod:`blockstore.metrics` (``docs/OPERATIONS.md``, Metrics).

Figures are tagged by run id: a resumed run continues its series. Counted from the driver's
own events (:class:`~stages.pipeline.events.PipelineEvent`), so the figures and the events a
caller sees through ``on_event`` cannot disagree.

**The ``run`` tag is bounded per process** (:class:`RunTags`). Every distinct tag value is a
series of every figure, and a series, once recorded, lives in the process's exporter (Ray's
metrics agent, a ``prometheus_client`` registry) until the process exits: a long-lived
driver starting a run per job (run ids default to random hex) grew one series per run per
figure forever. So the first ``BLOCKPOINT_METRICS_MAX_RUNS`` (default 16) distinct run ids
a process records keep their own ``run`` value, and every later run is tagged
``run="other"`` (logged once, naming the limit). Not an LRU of live runs: evicting a run
from a table would not remove its series from the exporter (neither Ray's metrics API nor
Prometheus's client can), so only a cap on distinct values bounds them. A driver that runs
one pipeline (the usual case) is never affected; per-run figures of a busy driver's later
runs are in the run records (``RunStore``) and the structured log events.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from blockstore.metrics import record

__all__ = ["DEFAULT_MAX_RUNS", "MAX_RUNS_ENV", "OTHER_RUN", "RUN_TAGS", "RunTags", "note_event",
           "note_recovery", "note_replayed"]

log = logging.getLogger(__name__)

#: Environment variable: distinct run ids a process tags figures with.
MAX_RUNS_ENV = "BLOCKPOINT_METRICS_MAX_RUNS"
#: Its default.
DEFAULT_MAX_RUNS = 16
#: The ``run`` value of every run past the limit.
OTHER_RUN = "other"


class RunTags:
    """The ``run`` tag values of one process: the first ``limit`` run ids, then ``other``.

    Thread-safe. A run id that got its own value keeps it for the life of the process.

    Args:
        limit: Distinct run ids with their own value (``None``: ``$BLOCKPOINT_METRICS_MAX_RUNS``,
            else :data:`DEFAULT_MAX_RUNS`; ``0``: every run is ``other``).
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = _limit_from_env() if limit is None else int(limit)
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        self._lock = threading.Lock()
        self._own: set[str] = set()
        self._warned = False

    def tag(self, run_id: str) -> str:
        """The ``run`` value for ``run_id``."""
        with self._lock:
            if run_id in self._own:
                return run_id
            if len(self._own) < self.limit:
                self._own.add(run_id)
                return run_id
            warn = not self._warned
            self._warned = True
        if warn:
            log.warning("metrics: run %r and every later run of this process are tagged "
                        "run=%r: %d run ids already have their own series (%s; each distinct "
                        "value is a series for the life of the process)", run_id, OTHER_RUN,
                        self.limit, MAX_RUNS_ENV)
        return OTHER_RUN


def _limit_from_env() -> int:
    raw = os.environ.get(MAX_RUNS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_RUNS
    try:
        value = int(raw)
        if value < 0:
            raise ValueError(raw)
    except ValueError:
        log.warning("$%s=%r is not an int >= 0; using %d", MAX_RUNS_ENV, raw, DEFAULT_MAX_RUNS)
        return DEFAULT_MAX_RUNS
    return value


#: This process's run tags (module level: one cap per process, as the exporter's series are).
RUN_TAGS = RunTags()


def note_event(run_id: str, kind: str, detail: Mapping[str, Any]) -> None:
    """Count one driver event: a committed step with its records, or a stage failure."""
    if kind == "commit":
        run = RUN_TAGS.tag(run_id)
        record("pipeline_steps_committed_total", 1, run=run)
        record("pipeline_records_in_total", int(detail.get("records_in") or 0), run=run)
        record("pipeline_records_out_total", int(detail.get("records_out") or 0), run=run)
    elif kind == "failure":
        record("pipeline_failures_total", 1, run=RUN_TAGS.tag(run_id))


def note_replayed(run_id: str, records: int) -> None:
    """``records`` source records will be read again (a rollback)."""
    if records > 0:
        record("pipeline_records_replayed_total", records, run=RUN_TAGS.tag(run_id))


def note_recovery(run_id: str, seconds: float) -> None:
    """One recovery took ``seconds``, from noticing the failure to every stage rolled back."""
    record("pipeline_recovery_seconds", seconds, run=RUN_TAGS.tag(run_id))
