"""Running ``blockpoint bench --quick --json --only NAME`` as installed, for the bench tests.

The bench tests check only that a bench runs and reports well-formed rows (the figures are
the bench's, BENCHMARKS.md, never asserted); how the command is started and its report read
is written here once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["run_bench_quick"]


def run_bench_quick(cwd: Path, only: str, *, timeout: float,
                    after_notices: bool = False) -> dict[str, Any]:
    """The JSON report of ``blockpoint bench --quick --json --only ONLY`` run in ``cwd``.

    Fails the test (with the tail of stderr) unless the command exits 0. With
    ``after_notices`` the report is the JSON document that starts on a line of its own (Ray
    may print a notice of its own on stdout before it); without, stdout must be the report.
    """
    exe = Path(sys.executable).with_name("blockpoint")
    proc = subprocess.run([str(exe), "bench", "--quick", "--json", "--only", only],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = proc.stdout.index("{\n") if after_notices else 0
    return json.loads(proc.stdout[start:])
