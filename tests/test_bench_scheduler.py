"""``blockpoint bench --only scheduler --quick``: the flush-start acknowledgement under load
and the no-op Ray call it is measured against, in the same run (issue 20 item 7).

Only that the bench runs and reports well-formed rows is checked; the figures are the
bench's (BENCHMARKS.md), never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def test_bench_scheduler_quick_reports_ack_and_noop(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("blockpoint")
    proc = subprocess.run([str(exe), "bench", "--quick", "--json", "--only", "scheduler"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Ray may print a notice of its own on stdout before the report: the report is the
    # JSON document that starts on a line of its own.
    start = proc.stdout.index("{\n")
    rows = {r["call"]: r for r in json.loads(proc.stdout[start:])["scheduler"]}
    assert set(rows) == {"flush-start ack", "no-op call (plain actor)"}, rows
    for row in rows.values():
        assert row["stages"] == 4 and row["kills"] == 1 and row["checkpoints"] >= 4 * 3 - 1
        assert row["samples"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    ack = rows["flush-start ack"]
    assert ack["/ no-op p50"] > 0 and ack["/ no-op p99"] > 0
