"""``blockpoint bench --only scheduler --quick``: the flush-start acknowledgement under load
and the no-op Ray call it is measured against, in the same run (issue 20 item 7).

Only that the bench runs and reports well-formed rows is checked; the figures are the
bench's (BENCHMARKS.md), never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchcli import run_bench_quick

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]  # the bench gets 600 s of its own


def test_bench_scheduler_quick_reports_ack_and_noop(tmp_path: Path) -> None:
    # Ray may print a notice of its own on stdout before the report.
    report = run_bench_quick(tmp_path, "scheduler", timeout=600, after_notices=True)
    rows = {r["call"]: r for r in report["scheduler"]}
    assert set(rows) == {"flush-start ack", "no-op call (plain actor)"}, rows
    for row in rows.values():
        assert row["stages"] == 4 and row["kills"] == 1 and row["checkpoints"] >= 4 * 3 - 1
        assert row["samples"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    ack = rows["flush-start ack"]
    assert ack["/ no-op p50"] > 0 and ack["/ no-op p99"] > 0
