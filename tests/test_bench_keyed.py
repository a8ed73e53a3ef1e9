"""``blockpoint bench --only keyed --quick``: keyed checkpoints after a few groups changed,
against the full keyed and plain checkpoints of the same state, in the same run (issue 20
item 2). Only that the bench runs and reports well-formed rows is checked; the figures are
the bench's (BENCHMARKS.md), never asserted."""

from __future__ import annotations

from pathlib import Path

from benchcli import run_bench_quick


def test_bench_keyed_quick_reports_every_row(tmp_path: Path) -> None:
    rows = run_bench_quick(tmp_path, "keyed", timeout=300)["keyed"]
    cases = {r["case"] for r in rows}
    assert cases == {"arrays 16 MiB, 128 groups", "arrays 16 MiB, 1024 groups",
                     "small keys 100,000, 128 groups", "small keys 100,000, 1024 groups"}, cases
    for case in cases:
        ops = {r["op"]: r for r in rows if r["case"] == case}
        assert {"full keyed checkpoint", "full plain checkpoint (one dict)"} <= set(ops)
        inc = next(r for op, r in ops.items() if op.startswith("keyed checkpoint"))
        assert inc["seconds"] > 0 and 0 < inc["bytes"] < ops["full keyed checkpoint"]["bytes"]
        assert "groups serialised" in inc["note"]
    assert any(r["op"].startswith("pickle.dumps") for r in rows)
