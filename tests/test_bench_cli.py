"""`blockpoint bench --quick` runs every benchmark as installed and reports its rows.

Only that the benchmarks run and report well-formed figures is checked: speed is measured by
the benchmarks themselves (BENCHMARKS.md), never asserted in tests. The benches that a test
of their own runs (:data:`RUN_ELSEWHERE`) are left out of the run of all the others, so no
bench runs twice in ``make test``; a test checks that together they are every bench.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

#: Bench -> the test that runs its ``--quick`` form through the CLI.
RUN_ELSEWHERE = {
    "keyed": "tests/test_bench_keyed.py::test_bench_keyed_quick_reports_every_row",
    "objstore": "tests/test_bench_cli.py::"
                "test_bench_objstore_quick_runs_keyed_against_loopback_s3",
    "scheduler": "tests/test_bench_scheduler.py::"
                 "test_bench_scheduler_quick_reports_ack_and_noop",
}
#: Every other bench, run together by test_bench_quick_runs_every_benchmark.
RUN_HERE = ("store", "checkpoint", "incremental", "manager", "peers", "actor", "async",
            "pipeline", "engine", "parallel", "batch", "langgraph")


def test_every_bench_is_run_by_one_test() -> None:
    """A new bench joins RUN_HERE (or gets a test of its own, listed in RUN_ELSEWHERE)."""
    from blockpoint.cli_bench import BENCHES

    assert set(RUN_HERE) | set(RUN_ELSEWHERE) == set(BENCHES)
    assert not set(RUN_HERE) & set(RUN_ELSEWHERE)
    root = Path(__file__).resolve().parent.parent
    for bench, nodeid in RUN_ELSEWHERE.items():
        path, name = nodeid.split("::")
        text = (root / path).read_text()
        assert f"def {name}(" in text, nodeid
        # Through the CLI (`"--only", "<bench>"`) or tests/benchcli.py's helper.
        assert (f'"--only", "{bench}"' in text
                or f'run_bench_quick(tmp_path, "{bench}"' in text), (bench, nodeid)


def test_bench_quick_runs_every_benchmark(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("blockpoint")
    only = [arg for name in RUN_HERE for arg in ("--only", name)]
    proc = subprocess.run([str(exe), "bench", "--quick", "--json", *only],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert set(report) == set(RUN_HERE)
    batch = {r["case"]: r for r in report["batch"]}
    assert set(batch) == {"demo work: record", "demo work: batch", "demo work: ray_data",
                          "parquet: pipeline", "parquet: pyarrow"}
    assert all(batch[c]["records_per_s"] > 0 for c in batch if c.startswith("demo"))
    assert all(batch[c]["mb_per_s"] > 0 for c in batch if c.startswith("parquet"))
    assert {r["op"] for r in report["async"]} >= {"sync checkpoint", "async stall, no copy"}
    assert [r["mode"] for r in report["pipeline"]] == ["off", "sync", "async"]
    engine = {r["case"]: r for r in report["engine"]}
    assert list(engine) == ["loop", "hand-rolled chain", "hand-rolled chain, JSONL",
                            "pipeline off", "pipeline on", "push off", "push on",
                            "push off, reader"]
    assert all(r["records_per_s"] > 0 for r in engine.values())
    assert engine["pipeline off"]["vs chain"] > 0 and engine["pipeline on"]["vs off"] > 0
    assert engine["push off"]["vs pipeline off"] > 0 and engine["push on"]["vs off"] > 0
    par = {r["case"]: r for r in report["parallel"]}
    assert list(par) == ["keyed parallelism 1", "keyed parallelism 2", "keyed parallelism 4",
                         "rescale 2 -> 4"]
    assert all(par[f"keyed parallelism {p}"]["records_per_s"] > 0 for p in (1, 2, 4))
    assert par["rescale 2 -> 4"]["seconds"] > 0 and par["rescale 2 -> 4"]["keys"] == 1024
    assert all(r["records_per_s"] > 0 and min(r["steps"]) >= 1 for r in report["pipeline"])
    assert {r["actor"] for r in report["actor"]} >= {"plain", "checkpointed"}
    store_cases = {(r["case"], r["backend"]) for r in report["store"]}
    assert ("vectorised write+flush", "FileStore") in store_cases
    assert ("write+fsync", "plain file") in store_cases
    ops = {r["op"] for r in report["checkpoint"]}
    limits = {"raw new file + fsync", "raw overwrite in place + fsync",
              "load: raw read into np.empty"}
    assert limits | {"blockpoint checkpoint", "load: blockpoint restore (verified)",
                     "blockpoint async: stall"} <= ops
    ckpt = next(r for r in report["checkpoint"] if r["op"] == "blockpoint checkpoint")
    assert ckpt["note"] == "2 fsyncs"  # the commit protocol: data, then header
    assert ckpt["/ raw overwrite"] > 0 and ckpt["/ raw new file"] > 0
    for rows in report.values():
        for row in rows:
            for key in ("best_s", "seconds", "median_ms"):
                if key in row and row[key] is not None:
                    assert row[key] > 0, row
    assert all(r["n_stages"] > 0 for r in report["manager"])
    peers = {r["op"] for r in report["peers"]}
    assert {"blockpoint checkpoint", "blockpoint async: stall", "pickle",
            "raw new file + fsync"} <= peers
    # A peer that is not installed is a row saying so, never a crash.
    assert all(r.get("seconds") is not None or r.get("note") for r in report["peers"])
    assert {r["saver"] for r in report["langgraph"]} >= {"BlockpointSaver (file)"}
    inc = {r["op"]: r for r in report["incremental"]}
    assert inc["full sync checkpoint"]["bytes"] > inc[
        "incremental checkpoint (1% of blocks changed)"]["bytes"] > 0
    assert "bench store: done" in proc.stderr


def test_bench_objstore_quick_runs_keyed_against_loopback_s3(tmp_path: Path) -> None:
    """``blockpoint bench --only objstore --quick`` starts its own moto server, checkpoints
    and restores with a key (an object store is shared: unkeyed pickle is refused), and
    reports both ratios and the request counts; it no longer fails without a key set."""
    import os

    exe = Path(sys.executable).with_name("blockpoint")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKPOINT_CHECKPOINT")}
    proc = subprocess.run([str(exe), "bench", "--quick", "--json", "--only", "objstore"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["what"]: r for r in json.loads(proc.stdout)["objstore"]}
    assert set(rows) == {"plain parallel put", "checkpoint() with a key", "plain parallel get",
                         "restore() verified, with a key"}, rows
    for row in rows.values():
        assert row["seconds"] > 0 and row["mib"] == 16
    for what in ("checkpoint() with a key", "restore() verified, with a key"):
        assert rows[what]["ratio"] > 0
    assert "PUT=" in rows["checkpoint() with a key"]["requests"]
    assert "GET=" in rows["restore() verified, with a key"]["requests"]
    assert "block objects" in rows["restore() verified, with a key"]["note"]
    # Issue 23: the record is read once per restore phase, not once per read call.
    note = rows["restore() verified, with a key"]["note"]
    m = re.search(r"(\d+) GETs for (\d+) block objects", note)
    assert m is not None and int(m.group(2)) <= int(m.group(1)) <= int(m.group(2)) + 8, m
