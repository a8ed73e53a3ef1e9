"""``bench/bench_langgraph.py`` runs and returns one row per contender (tiny n)."""

from __future__ import annotations

from bench.bench_langgraph import CONTENDERS, run


def test_bench_rows() -> None:
    rows = run(n=3)
    assert [r["saver"] for r in rows] == CONTENDERS
    for row in rows:
        if "skipped" not in row:
            assert row["put_ms_p50"] > 0 and row["get_tuple_ms_p50"] > 0, row
    assert "skipped" not in rows[-1]  # ours is always there
