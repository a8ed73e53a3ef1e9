"""What a pipeline run reports to :mod:`blockstore.metrics` (``docs/OPERATIONS.md``, Metrics).

Figures are tagged by run id: a resumed run continues its series. Counted from the driver's
own events (:class:`~stages.pipeline.events.PipelineEvent`), so the figures and the events a
caller sees through ``on_event`` cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blockstore.metrics import record

__all__ = ["note_event", "note_recovery", "note_replayed"]


def note_event(run_id: str, kind: str, detail: Mapping[str, Any]) -> None:
    """Count one driver event: a committed step with its records, or a stage failure."""
    if kind == "commit":
        record("pipeline_steps_committed_total", 1, run=run_id)
        record("pipeline_records_in_total", int(detail.get("records_in") or 0), run=run_id)
        record("pipeline_records_out_total", int(detail.get("records_out") or 0), run=run_id)
    elif kind == "failure":
        record("pipeline_failures_total", 1, run=run_id)


def note_replayed(run_id: str, records: int) -> None:
    """``records`` source records will be read again (a rollback)."""
    if records > 0:
        record("pipeline_records_replayed_total", records, run=run_id)


def note_recovery(run_id: str, seconds: float) -> None:
    """One recovery took ``seconds``, from noticing the failure to every stage rolled back."""
    record("pipeline_recovery_seconds", seconds, run=run_id)
