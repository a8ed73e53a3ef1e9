"""The README's LangGraph example runs as written (with the README tests' own helpers)."""

from __future__ import annotations

from pathlib import Path

from test_readme import _block, _run


def test_langgraph_example_runs(tmp_path: Path) -> None:
    proc = _run(_block("## A LangGraph checkpointer in 10 lines"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state, step = proc.stdout.strip().splitlines()[-2:]
    assert state == "{'steps': ['plan', 'act']}" and step == "2"
